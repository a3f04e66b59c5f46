"""Pretrained weights as users get them (timm files, Hugging Face folders and ids, torchaudio
bundles), the offline error, and config-free save_pretrained / from_pretrained. No network:
every weight file is written here, and "offline" is forced."""

from __future__ import annotations

import functools
import json
import pickle
import urllib.error

import pytest
import torch

from fusion import (
    AudioEncoder,
    ConcatFusion,
    FusionClassifier,
    ImageEncoder,
    LeNetImageEncoder,
    MelCNNAudioEncoder,
    PretrainedAudioEncoder,
    RNNEncoder,
    SpecAugment,
    TextEncoder,
    UnimodalClassifier,
    Wav2Vec2AudioEncoder,
)
from fusion.pretrained import WeightsUnavailableError, from_pretrained, save_pretrained

TEXT = {"input_ids": torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and empty caches: HF offline mode, HF and torch.hub caches in tmp, and
    torch.hub's downloader raising as it does without a connection."""
    import huggingface_hub.constants

    hf_cache, torch_home = tmp_path / "hf-cache", tmp_path / "torch-home"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return {"hf": str(hf_cache), "torch": str(torch_home)}


def assert_offline_error(err: pytest.ExceptionInfo, model_id: str, caches: dict, local_fix: str) -> None:
    text = str(err.value)
    assert isinstance(err.value, WeightsUnavailableError)
    assert repr(model_id) in text
    assert caches["hf"] in text and caches["torch"] in text and "HF_HOME" in text and "TORCH_HOME" in text
    assert "run once with network access" in text and local_fix in text
    assert len(text.splitlines()) <= 8  # one screen


@pytest.fixture
def black_hole(tmp_path, monkeypatch):
    """A network that swallows connections (the machine is offline, HF_HUB_OFFLINE unset): every
    connect waits out its timeout (at most 30 s) and fails, as with an unroutable host; caches are empty."""
    import socket
    import time

    import huggingface_hub.constants

    import fusion.pretrained

    hf_cache, torch_home = tmp_path / "hf-cache", tmp_path / "torch-home"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(fusion.pretrained, "_PROBED", {})

    def create_connection(address, timeout=None, *args, **kwargs):
        time.sleep(min(timeout or 30, 30))
        raise TimeoutError(f"connecting to {address} timed out")

    def connect(self, address):
        time.sleep(min(self.gettimeout() or 30, 30))
        raise TimeoutError(f"connecting to {address} timed out")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return {"hf": str(hf_cache), "torch": str(torch_home)}


@pytest.mark.parametrize("loader", ["timm", "transformers", "torchaudio"])
def test_no_network_and_nothing_cached_fails_fast(loader, black_hole):
    import time

    build, model_id, fix = {
        "timm": (lambda: ImageEncoder("resnet18", in_chans=1, pretrained=True), "resnet18", "pretrained_file="),
        "transformers": (lambda: TextEncoder("bert-base-uncased"), "bert-base-uncased",
                         "pretrained='path/to/folder'"),
        "torchaudio": (lambda: PretrainedAudioEncoder("WAV2VEC2_BASE"), "WAV2VEC2_BASE", "download.pytorch.org"),
    }[loader]
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        build()
    assert time.monotonic() - start < 10  # one 3-s probe, not the libraries' minute of retries
    assert_offline_error(err, model_id, black_hole, fix)
    assert "did not answer within 3 s" in str(err.value)


# ----------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------

def test_imagenet_resnet18_file_loads_into_a_one_channel_encoder(tmp_path):
    timm = pytest.importorskip("timm")
    imagenet = timm.create_model("resnet18", num_classes=1000, in_chans=3)
    weights = {k: v.clone() for k, v in imagenet.state_dict().items()}
    torch.save(weights, tmp_path / "resnet18.pth")
    enc = ImageEncoder("resnet18", in_chans=1, out_dim=None, pretrained_file=str(tmp_path / "resnet18.pth"))
    got = enc.backbone.state_dict()
    assert "fc.weight" not in got  # the ImageNet classifier is dropped
    # timm adapts the first conv to one channel by summing the RGB filters
    torch.testing.assert_close(got["conv1.weight"], weights["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        assert torch.equal(got[key], weights[key]), key
    assert enc(torch.randn(2, 1, 64, 64)).shape == (2, 4, 512)
    with pytest.raises(RuntimeError, match=r"(?s)not a state dict of this backbone.*fc.weight.*use pretrained_file"):
        ImageEncoder("resnet18", in_chans=1, checkpoint_path=str(tmp_path / "resnet18.pth"))
    torch.save(enc.backbone.state_dict(), tmp_path / "backbone.pth")  # checkpoint_path: this backbone exactly
    again = ImageEncoder("resnet18", in_chans=1, checkpoint_path=str(tmp_path / "backbone.pth"))
    assert torch.equal(again.backbone.conv1.weight, got["conv1.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ImageEncoder("resnet18", pretrained_file=str(tmp_path / "missing.pth"))


def test_timm_pretrained_offline_reads_the_hugging_face_cache(offline):
    # What `pretrained: true` finds offline after one online run: timm's Hub weights in HF's cache layout.
    from pathlib import Path

    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    published = timm.create_model("resnet18", num_classes=1000)
    repo = Path(offline["hf"]) / ("models--" + published.pretrained_cfg["hf_hub_id"].replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(published.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    enc = ImageEncoder("resnet18", in_chans=3, pretrained=True)
    for key in ("conv1.weight", "layer3.1.conv2.weight"):
        assert torch.equal(enc.backbone.state_dict()[key], published.state_dict()[key])


def test_timm_pretrained_offline_names_model_caches_and_fixes(offline):
    with pytest.raises(WeightsUnavailableError) as err:
        ImageEncoder("resnet18", in_chans=1, pretrained=True)
    assert_offline_error(err, "resnet18", offline, "pretrained_file=")


# ----------------------------------------------------------------------------------------------
# transformers: text
# ----------------------------------------------------------------------------------------------

def tiny_bert_folder(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config)
    model.save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "digit", "two", "one", "blue", "green",
             "three", "four", "five", "six"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder, model


def test_text_encoder_loads_a_local_folder_with_its_tokenizer(tmp_path):
    folder, saved = tiny_bert_folder(tmp_path)
    enc = TextEncoder(str(folder))
    for key, value in saved.state_dict().items():
        if not key.startswith("pooler"):  # the pooler is dropped: only token states are used
            assert torch.equal(enc.model.state_dict()[key], value), key
    assert enc.out_dim == 16
    ids = enc.tokenizer()(["a red digit"], return_tensors="pt")
    assert ids["input_ids"].tolist() == [[2, 5, 6, 7, 3]]
    assert enc(dict(ids)).shape == (1, 5, 16)


def test_text_encoder_hub_id_offline_names_model_caches_and_fixes(offline):
    with pytest.raises(WeightsUnavailableError) as err:
        TextEncoder("bert-base-uncased")
    assert_offline_error(err, "bert-base-uncased", offline, "TransformerTextEncoder(pretrained='path/to/folder')")


def test_hub_code_is_not_run_unless_trust_remote_code_is_set(tmp_path):
    folder = tmp_path / "remote-code-model"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "fusegen-remote", "auto_map": {"AutoConfig": "modeling.RemoteConfig",
                                                     "AutoModel": "modeling.RemoteModel"}}))
    (folder / "modeling.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        TextEncoder(str(folder))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# audio: Hugging Face models, torchaudio bundles, torchaudio state dicts
# ----------------------------------------------------------------------------------------------

def tiny_wav2vec2_folder(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), conv_bias=False,
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm="group")
    torch.manual_seed(0)
    model = Wav2Vec2Model(config)
    folder = tmp_path / "tiny-wav2vec2"
    model.save_pretrained(folder)
    return folder, model


def test_hf_audio_model_from_a_local_folder_as_a_token_encoder(tmp_path):
    folder, saved = tiny_wav2vec2_folder(tmp_path)
    enc = PretrainedAudioEncoder(str(folder), input_sample_rate=8000, out_dim=12)
    for key, value in saved.state_dict().items():
        assert torch.equal(enc.model.state_dict()[key], value), key
    assert enc.sample_rate == 16000  # no feature-extractor file: the wav2vec2 default
    enc.eval()
    wave = torch.randn(2, 800)  # 0.1 s at 8 kHz -> 1600 samples at 16 kHz -> (1600-10)//5+1=319 -> 159 frames
    out = enc(wave)
    assert out.shape == (2, 159, 12)
    # the same as running the saved model on the resampled waveform, then the projection
    import torchaudio

    expected = saved.eval()(torchaudio.functional.resample(wave, 8000, 16000)).last_hidden_state
    torch.testing.assert_close(out, enc.proj(expected))
    middle = PretrainedAudioEncoder(str(folder), layer=1).eval()
    assert middle(torch.randn(1, 1600)).shape == (1, 159, 16)
    # the feature extractor saved alongside sets the model's rate and waveform normalisation
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(sampling_rate=22050, do_normalize=True).save_pretrained(folder)
    normalised = PretrainedAudioEncoder(str(folder)).eval()
    assert normalised.sample_rate == 22050 and normalised.normalize
    wave = 3.0 + 2.0 * torch.randn(1, 1600)
    unit = (wave - wave.mean()) / wave.std(unbiased=False)
    torch.testing.assert_close(normalised(wave), saved(unit).last_hidden_state, atol=1e-4, rtol=1e-4)


def test_hf_audio_hub_id_offline_names_model_caches_and_fixes(offline):
    with pytest.raises(WeightsUnavailableError) as err:
        PretrainedAudioEncoder("facebook/wav2vec2-base")
    assert_offline_error(err, "facebook/wav2vec2-base", offline, "PretrainedAudioEncoder(model='path/to/folder')")


def test_torchaudio_bundle_offline_names_model_caches_and_fixes(offline):
    with pytest.raises(WeightsUnavailableError) as err:
        PretrainedAudioEncoder("WAV2VEC2_BASE")
    assert_offline_error(err, "WAV2VEC2_BASE", offline, "wav2vec2_fairseq_base_ls960.pth")
    assert "download.pytorch.org" in str(err.value)


def test_torchaudio_bundle_architecture_round_trip(tmp_path):
    # A bundle's architecture with small sizes stands in for the 95M-parameter download.
    small = dict(Wav2Vec2AudioEncoder.SMALL)
    enc = PretrainedAudioEncoder("HUBERT_BASE", config={"model_type": "Wav2Vec2", "params": small},
                                 input_sample_rate=8000, out_dim=8).eval()
    assert enc.sample_rate == 16000 and enc.kind == "torchaudio"
    wave = torch.randn(2, 2000)
    again = PretrainedAudioEncoder.from_pretrained(enc.save_pretrained(tmp_path / "hubert"))
    torch.testing.assert_close(again(wave), enc(wave))


def test_wav2vec2_state_dict_is_loaded_as_data_only(tmp_path):
    source = Wav2Vec2AudioEncoder()
    torch.save(source.model.state_dict(), tmp_path / "w2v.pt")
    loaded = Wav2Vec2AudioEncoder(checkpoint_path=str(tmp_path / "w2v.pt"))
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt is not a plain state dict.*weights_only=True"):
        Wav2Vec2AudioEncoder(checkpoint_path=str(tmp_path / "evil.pt"))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ----------------------------------------------------------------------------------------------

ENCODERS = {
    "audio-cnn": (lambda: AudioEncoder(width=4, blocks=2, out_dim=8, freq_bins=2,
                                       spec_augment=SpecAugment(freq_mask=4, time_mask=4, freq_warp=0.1)),
                  lambda: torch.randn(2, 2000)),
    "melcnn": (lambda: MelCNNAudioEncoder(width=4, out_dim=8), lambda: torch.randn(2, 2000)),
    "lenet": (lambda: LeNetImageEncoder(out_dim=8), lambda: torch.randn(2, 1, 28, 28)),
    "timm": (lambda: ImageEncoder("test_resnet", in_chans=1, out_dim=8), lambda: torch.randn(2, 1, 32, 32)),
    "wav2vec2": (lambda: Wav2Vec2AudioEncoder(out_dim=8), lambda: torch.randn(2, 2000)),
    "text": (lambda: TextEncoder(config={"vocab_size": 16, "hidden_size": 16, "num_attention_heads": 2}, out_dim=8),
             lambda: TEXT),
    "rnn-tokens": (lambda: RNNEncoder(vocab_size=16, embed_dim=8, hidden_size=8, bidirectional=True), lambda: TEXT),
    "rnn-wave": (lambda: RNNEncoder(cell="gru", hidden_size=8, num_layers=2, out_dim=4), lambda: torch.randn(2, 2000)),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_save_pretrained_round_trip_gives_the_same_outputs(name, tmp_path):
    build, data = ENCODERS[name]
    torch.manual_seed(0)
    enc = build()
    with torch.no_grad():  # move BatchNorm statistics off their initial values
        enc.train()(data())
    enc.eval()
    folder = enc.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class_path"] == f"{type(enc).__module__}.{type(enc).__name__}"
    torch.manual_seed(1)  # a rebuild draws other random weights; the file must replace all of them
    again = type(enc).from_pretrained(folder)
    assert type(again) is type(enc) and not again.training
    x = data()
    torch.testing.assert_close(again(x), enc(x))


def test_saved_config_is_plain_json_with_the_spec_augment_fields(tmp_path):
    enc = AudioEncoder(width=4, blocks=2, out_dim=8, spec_augment=SpecAugment(freq_mask=8, time_warp=0.2))
    config = json.loads((enc.save_pretrained(tmp_path) / "config.json").read_text())
    assert config["init_args"]["spec_augment"] == {"freq_mask": 8, "time_mask": 0, "num_masks": 2,
                                                   "freq_warp": 0.0, "time_warp": 0.2}
    again = from_pretrained(tmp_path)
    assert again.augment == SpecAugment(freq_mask=8, time_warp=0.2) and repr(again) == repr(enc)


def test_pretrained_sources_are_saved_as_their_architecture(tmp_path):
    # A reloaded encoder must not go back to the Hub or the original folder.
    folder, _ = tiny_bert_folder(tmp_path)
    enc = TextEncoder(str(folder)).eval()
    saved = enc.save_pretrained(tmp_path / "saved")
    init_args = json.loads((saved / "config.json").read_text())["init_args"]
    assert init_args["pretrained"] is None and init_args["config"]["hidden_size"] == 16
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    torch.testing.assert_close(TextEncoder.from_pretrained(saved)(TEXT), enc(TEXT))


def fusion_model(**kwargs) -> FusionClassifier:
    torch.manual_seed(0)
    return FusionClassifier(
        encoders={"image": LeNetImageEncoder(out_dim=8),
                  "audio": AudioEncoder(width=4, blocks=2, out_dim=8, spec_augment=SpecAugment(freq_mask=4)),
                  "text": RNNEncoder(vocab_size=16, embed_dim=8, hidden_size=8)},
        num_classes=3, hidden_dims=[16], **kwargs)


def fusion_batch() -> dict:
    return {"image": torch.randn(2, 1, 28, 28), "audio": torch.randn(2, 2000), "text": TEXT,
            "label": torch.tensor([0, 2])}


@pytest.mark.parametrize("fusion", [ConcatFusion, functools.partial(ConcatFusion, out_dim=12),
                                    ConcatFusion({"image": 8, "audio": 8, "text": 8}, out_dim=12)],
                         ids=["class", "partial", "built-head"])
def test_fusion_classifier_built_in_python_round_trip(fusion, tmp_path):
    model = fusion_model(fusion=fusion, optimizer=functools.partial(torch.optim.SGD, lr=0.5)).eval()
    folder = save_pretrained(model, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["init_args"]["encoders"]["audio"]["init_args"]["spec_augment"]["freq_mask"] == 4
    again = FusionClassifier.from_pretrained(folder)
    batch = fusion_batch()
    torch.testing.assert_close(again(batch), model(batch))
    optimizer = again.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5


def test_unimodal_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    model = UnimodalClassifier("audio", AudioEncoder(width=4, blocks=2, out_dim=8), num_classes=3).eval()
    again = from_pretrained(save_pretrained(model, tmp_path / "uni"))
    batch = {"audio": torch.randn(2, 2000), "label": torch.tensor([0, 1])}
    torch.testing.assert_close(again(batch), model(batch))


def test_fusion_classifier_built_by_the_cli_round_trip(tmp_path):
    from experiments.cli import FusegenCLI

    model = {"class_path": "fusion.FusionClassifier", "init_args": {
        "num_classes": 3,
        "encoders": {"image": {"class_path": "fusion.LeNetImageEncoder", "init_args": {"out_dim": 8}},
                     "audio": {"class_path": "fusion.AudioEncoder", "init_args": {
                         "width": 4, "blocks": 2, "out_dim": 8, "spec_augment": {"freq_mask": 4, "time_warp": 0.1}}}},
        "fusion": {"class_path": "fusion.AttentionFusion", "init_args": {"d_model": 16, "num_heads": 2}},
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.25}}}}
    cli = FusegenCLI(args=["--model", json.dumps(model), "--trainer.logger", "false",
                           "--trainer.default_root_dir", str(tmp_path / "runs")], run=False)
    built = cli.model.eval()
    folder = built.save_pretrained(tmp_path / "model")
    init_args = json.loads((folder / "config.json").read_text())["init_args"]
    assert init_args["fusion"]["class_path"].endswith(".AttentionFusion")
    assert init_args["fusion"]["init_args"]["d_model"] == 16
    again = FusionClassifier.from_pretrained(folder)
    batch = {"image": torch.randn(2, 1, 28, 28), "audio": torch.randn(2, 2000), "label": torch.tensor([0, 1])}
    torch.testing.assert_close(again(batch), built(batch))
    assert again.configure_optimizers().defaults["lr"] == 0.25


def test_from_pretrained_reads_safetensors_without_unpickling(tmp_path, monkeypatch):
    model = fusion_model(fusion=ConcatFusion).eval()
    folder = save_pretrained(model, tmp_path / "model")

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    again = from_pretrained(folder)
    batch = fusion_batch()
    torch.testing.assert_close(again(batch), model(batch))


def test_arguments_that_cannot_be_recorded_are_named_before_anything_is_written(tmp_path):
    model = fusion_model(fusion=ConcatFusion, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    with pytest.raises(TypeError, match=r"model\.init_args\.optimizer.*lambda"):
        save_pretrained(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_from_pretrained_errors_name_the_folder_and_the_class(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here.*config.json"):
        from_pretrained(tmp_path / "nothing-here")
    folder = LeNetImageEncoder().save_pretrained(tmp_path / "lenet")
    with pytest.raises(TypeError, match=r"LeNetImageEncoder, not a fusion.encoders.AudioEncoder"):
        AudioEncoder.from_pretrained(folder)
    torch.save({}, folder / "model.safetensors")  # a pickle, not safetensors
    with pytest.raises(ValueError, match=r"lenet/model.safetensors is not a readable safetensors file"):
        from_pretrained(folder)
    AudioEncoder(width=4, blocks=2).save_pretrained(tmp_path / "audio")
    (folder / "model.safetensors").write_bytes((tmp_path / "audio" / "model.safetensors").read_bytes())
    with pytest.raises(RuntimeError, match=r"model.safetensors does not fit the module rebuilt from .*config.json"):
        from_pretrained(folder)
