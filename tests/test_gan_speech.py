"""Speech GANs: log-mel images that invert to sound, a spectrogram GAN trained through the CLI, and
`fusegen predict` writing .wav files a user can play (8 kHz, read back with soundfile)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from generative.audio import MelConfig, denormalise, log_mel, normalise, to_waveform
from generative.speech import frechet_distance, score_clips

SR = 8000


def _chirps(n: int, length: int = 8000) -> torch.Tensor:
    """Clips a spectrogram tells apart: a rising tone from a different start per clip, fading in and out."""
    t = torch.arange(length) / SR
    start = torch.linspace(300, 2000, n).unsqueeze(1)
    phase = 2 * math.pi * (start * t + 600 * t ** 2)
    return torch.sin(phase) * torch.sin(math.pi * t / t[-1]) * 0.5


def test_normalise_round_trips_and_spans_the_tanh_range() -> None:
    cfg = MelConfig(size=32)
    spec = log_mel(_chirps(4), cfg)
    assert spec.shape == (4, 1, 32, 32)
    assert spec.amax() == 1.0 and spec.amin() == -1.0  # peak at 1, the -top_db floor at -1
    torch.testing.assert_close(normalise(denormalise(spec, cfg), cfg), spec, atol=1e-5, rtol=0)


def _spoken(root: Path, names: list[str]) -> torch.Tensor:
    """Real FSDD recordings, zero-padded to one second."""
    from datamodules.sources import fit_length

    clips = [torch.from_numpy(sf.read(root / "fsdd" / "recordings" / f"{n}.wav", dtype="float32")[0]) for n in names]
    return torch.stack([fit_length(c, 8000) for c in clips])


@pytest.mark.parametrize("size", [32, 64])
def test_mel_to_waveform_to_mel_is_close(size: int, data_root: Path) -> None:
    """Griffin-Lim finds a waveform whose log-mel is the one asked for: on real speech the round
    trip error is a fraction of the distance between two different spoken digits."""
    cfg = MelConfig(size=size, n_fft=1024 if size == 32 else 512)
    spec = log_mel(_spoken(data_root, ["0_george_0", "3_jackson_1", "7_theo_2"]), cfg)
    wave = to_waveform(spec, cfg)
    assert wave.shape == (3, 8000) and torch.isfinite(wave).all()
    assert wave.abs().amax(dim=1).allclose(torch.full((3,), cfg.peak))
    again = log_mel(wave, cfg)
    error = (again - spec).abs().mean()
    other = (spec - spec.roll(1, 0)).abs().mean()
    assert error < 0.08 and error < other / 4, (float(error), float(other))
    assert torch.equal(to_waveform(spec, cfg), wave)  # seeded phases: the same clip twice


def test_bad_mel_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"mel\.n_fft.*hop length"):
        MelConfig(size=32, n_fft=128)
    with pytest.raises(ValueError, match=r"must be \[B, 1, 32, 32\].*mel\.size=32"):
        to_waveform(torch.zeros(2, 1, 64, 64), MelConfig(size=32))
    with pytest.raises(ValueError, match="audio_length and the GAN's mel.length"):
        log_mel(torch.zeros(2, 4000), MelConfig(size=32))


def test_frechet_distance_and_agreement() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    assert frechet_distance(a, b) < 0.05
    # Two Gaussians with means 3 apart in one coordinate and equal covariance: 9.
    assert abs(frechet_distance(a, b + torch.tensor([3.0, 0, 0, 0])) - 9.0) < 0.3

    class Probe(torch.nn.Module):  # "classifies" a clip by the sign of its mean
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def embed(self, batch: dict) -> torch.Tensor:
            return torch.stack([batch["audio"].mean(1), batch["audio"].std(1)], 1)

        def forward(self, batch: dict) -> torch.Tensor:
            m = batch["audio"].mean(1, keepdim=True)
            return torch.cat([-m, m], 1)

    real = torch.cat([torch.full((5, 10), -1.0), torch.full((5, 10), 1.0)])
    fake = torch.cat([torch.full((4, 10), 1.0), torch.full((4, 10), -1.0)])
    score = score_clips(Probe(), fake, torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]), real, torch.tensor([0] * 5 + [1] * 5))
    assert score["agreement"] == 7 / 8 and score["real_accuracy"] == 1.0
    assert score["num_fake"] == 8 and score["num_real"] == 10


CONFIG = """
experiment: tiny-speech
trainer:
  max_steps: 6
  limit_val_batches: 0
  enable_progress_bar: false
  accelerator: cpu
model:
  class_path: generative.speech.SpeechGAN
  init_args:
    mel: {length: 4000, size: 16, n_fft: 512, griffin_lim_iters: 8}
    condition: label
    generator: {class_path: generative.Generator, init_args: {ngf: 8, image_size: 16, cond_dim: 10}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8, image_size: 16, cond_dim: 10}}
    metrics: null
    ema_decay: 0.9
    num_predictions: 6
    labels: [3, 7]
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 64, num_val: 16, num_test: 16, batch_size: 8}
"""


def test_spectrogram_gan_trains_and_predict_writes_playable_wavs(in_tmp: Path, cli_exit) -> None:
    """A spectrogram GAN trains through the shared trainer (its D sees log-mel images of the batch's
    waveforms); `fusegen predict` writes each clip as a spectrogram PNG and an 8 kHz WAV beside it."""
    config = in_tmp / "tiny-speech.yaml"
    config.write_text(CONFIG)
    code, _, err = cli_exit("fit", "--config", str(config))
    assert code in (0, None), err[-3000:]
    run = in_tmp / "runs" / "tiny-speech"
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)  # the mel settings are plain data in the checkpoint
    assert state["hyper_parameters"]["mel"]["size"] == 16 and state["gan_iteration"] == 3
    assert (run / "pictures" / "samples" / "epoch_000.png").is_file()

    code, out, err = cli_exit("predict", "--config", str(config), "--ckpt_path", str(ckpt))
    assert code in (0, None), err[-3000:]
    folder = run / "predictions"
    assert "wrote 6 .wav clips (8000 Hz)" in out
    wavs = sorted(folder.glob("*.wav"))
    assert [p.stem for p in wavs] == [p.stem for p in sorted(folder.glob("0*.png"))]
    assert [p.stem.split("_")[1] for p in wavs] == ["3", "7"] * 3
    for p in wavs:
        data, rate = sf.read(p)
        info = sf.info(p)
        assert rate == 8000 and info.channels == 1 and info.subtype == "PCM_16"
        assert data.shape == (4000,) and np.isfinite(data).all() and 0.5 < np.abs(data).max() <= 0.91
    with Image.open(wavs[0].with_suffix(".png")) as im:
        assert im.size == (16, 16)
    assert (folder / "grid.png").is_file()


def test_image_size_must_match_the_mel_bands() -> None:
    from generative import Discriminator, Generator
    from generative.speech import SpeechGAN

    with pytest.raises(ValueError, match=r"generator\.init_args\.image_size is 32 but model\.init_args\.mel\.size"):
        SpeechGAN(mel={"size": 16, "n_fft": 1024}, generator=Generator(ngf=8, image_size=32),
                  discriminator=Discriminator(ndf=8, image_size=32), metrics=None)
