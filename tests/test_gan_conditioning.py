"""The condition encoder comes from a fusion checkpoint named in the config: loaded as data only,
a missing file names the command that makes it, and a checkpoint carrying code is refused."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch
from torch import nn

from generative import GAN, Discriminator, Generator
from generative.conditioning import UntrustedCheckpointError, load_condition_encoder


class TinyEncoder(nn.Module):
    out_dim = 8

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).unsqueeze(1)


def _fusion_checkpoint(path: pathlib.Path, encoder: nn.Module, **extra) -> pathlib.Path:
    """What a Lightning checkpoint of an audio-only FusionClassifier holds (the parts that matter)."""
    state = {f"encoders.audio.{k}": v for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 8)
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"num_classes": 10, "dropout": 0.2},
                "pytorch-lightning_version": "2.6.6", **extra}, path)
    return path


def _gan(checkpoint, encoder: nn.Module | None = None) -> GAN:
    return GAN(Generator(ngf=8, cond_dim=8), Discriminator(ndf=8, cond_dim=8), condition="audio",
               condition_encoder=encoder or TinyEncoder(), encoder_checkpoint=checkpoint, metrics=None)


def test_gan_loads_the_encoder_weights_at_construction(tmp_path) -> None:
    torch.manual_seed(0)
    trained = TinyEncoder()
    path = _fusion_checkpoint(tmp_path / "last.ckpt", trained)
    model = _gan(str(path))
    torch.testing.assert_close(model.condition_encoder.module.proj.weight, trained.proj.weight)
    assert not model.condition_encoder.module.proj.weight.requires_grad
    # The function returns the encoder it filled; nothing else is touched.
    fresh = TinyEncoder()
    assert load_condition_encoder(path, fresh, "audio") is fresh
    torch.testing.assert_close(fresh.proj.bias, trained.proj.bias)


def test_missing_checkpoint_names_the_command(tmp_path) -> None:
    command = r"fusegen fit --config experiments/gan/speech-encoder\.yaml"
    with pytest.raises(FileNotFoundError, match=rf"nope\.ckpt.*{command}"):
        _gan(str(tmp_path / "nope.ckpt"))


def test_wrong_checkpoint_or_architecture_is_named(tmp_path) -> None:
    path = _fusion_checkpoint(tmp_path / "last.ckpt", TinyEncoder())
    with pytest.raises(ValueError, match="does not match model.init_args.condition_encoder"):
        _gan(str(path), encoder=TinyEncoder(width=6))
    other = tmp_path / "image.ckpt"
    torch.save({"state_dict": {"encoders.image.proj.weight": torch.zeros(8, 4)}}, other)
    with pytest.raises(KeyError, match=r"no encoders\.audio\.\* weights.*'encoders'"):
        _gan(str(other))


def test_null_checkpoint_keeps_a_random_encoder_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="generative.conditioning"):
        model = _gan(None)
    assert "encoder_checkpoint is null" in caplog.text and "speech-encoder.yaml" in caplog.text
    assert model.condition_encoder is not None


class Payload:
    """Unpickling this writes a marker file: stands for any code a hostile checkpoint would run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "marker.txt"
    path = _fusion_checkpoint(tmp_path / "evil.ckpt", TinyEncoder(), callbacks={"x": Payload(marker)})
    with pytest.raises(UntrustedCheckpointError, match=r"refused to load .*evil\.ckpt.*could run code"):
        _gan(str(path))
    assert not marker.exists()
    # The payload is real: a plain unpickling load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_missing_image_encoder_names_its_own_experiment(tmp_path) -> None:
    """image-to-speech's condition encoder is made by image-encoder.yaml, not the speech one."""
    with pytest.raises(FileNotFoundError, match=r"experiments/gan/image-encoder\.yaml.*runs/image-encoder/"):
        load_condition_encoder(tmp_path / "nope.ckpt", TinyEncoder(), "image")
