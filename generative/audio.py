"""Log-mel spectrograms as GAN images, and back to sound.

A spectrogram GAN draws a ``[1, size, size]`` "image": ``size`` mel bands by ``size`` frames of a
1-s, 8 kHz clip, in decibels relative to the clip's loudest bin, clipped at ``-top_db`` and mapped
linearly to the generator's tanh range [-1, 1]. The hop is chosen so the clip fills exactly
``size`` frames. Back to a waveform: undo the dB map, ``torchaudio.transforms.InverseMelScale``
(least squares onto the linear-frequency power spectrogram), then ``GriffinLim`` (Griffin & Lim
1984) for the phase. The peak level is lost on the way in, so waveforms come back
peak-normalised to ``peak``.

Pure functions of a ``MelConfig``; the torchaudio transforms hold only their filter banks.
"""

from __future__ import annotations

import dataclasses

import torch
import torchaudio

from datamodules.checks import check_int, check_real, check_value


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The spectrogram a speech GAN draws.

    Args:
        sample_rate: Hz of the waveforms (FSDD: 8000).
        length: samples per clip (8000: one second at 8 kHz).
        size: mel bands = frames = the GAN's ``image_size`` (32 or 64).
        n_fft: STFT window; also the Griffin-Lim window. At least the hop; 4 hops (75% overlap)
            or more: at ``size`` 32, 1024 kept a real-speech classifier at 98% on inverted clips
            (512: 91%).
        top_db: dynamic range kept below each clip's peak.
        griffin_lim_iters: Griffin-Lim iterations of ``to_waveform``.
        peak: the absolute peak of the waveforms ``to_waveform`` returns.
    """

    sample_rate: int = 8000
    length: int = 8000
    size: int = 32
    n_fft: int = 1024
    top_db: float = 80.0
    griffin_lim_iters: int = 64
    peak: float = 0.9

    def __post_init__(self) -> None:
        check_int("mel.sample_rate", self.sample_rate, 1)
        check_int("mel.size", self.size, 2)
        check_int("mel.length", self.length, self.size)
        check_value("mel.n_fft", self.n_fft, isinstance(self.n_fft, int) and self.n_fft >= self.hop_length,
                    f"an integer >= the hop length length // (size - 1) = {self.hop_length}")
        check_real("mel.top_db", self.top_db, 1e-3)
        check_int("mel.griffin_lim_iters", self.griffin_lim_iters, 1)
        check_real("mel.peak", self.peak, 1e-6)

    @property
    def hop_length(self) -> int:
        """A hop that gives at least ``size`` centred frames for ``length`` samples (extra ones are cut)."""
        return self.length // (self.size - 1)

    @property
    def n_stft(self) -> int:
        return self.n_fft // 2 + 1


def _mel(cfg: MelConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                                n_mels=cfg.size, power=2.0)


def mel_power(wave: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Waveforms ``[B, L]`` (or ``[B, 1, L]``) -> mel power spectrograms ``[B, 1, size, size]``."""
    wave = wave.reshape(wave.shape[0], -1).float()
    if wave.shape[-1] != cfg.length:
        raise ValueError(f"waveforms have {wave.shape[-1]} samples but mel.length is {cfg.length}: set the "
                         f"datamodule's audio_length and the GAN's mel.length to the same value")
    return _mel(cfg).to(wave.device)(wave)[..., : cfg.size].unsqueeze(1)


def normalise(power: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Mel power ``[B, 1, F, T]`` -> dB below each clip's peak, clipped at ``-top_db``, mapped to [-1, 1]."""
    db = 10.0 * torch.log10(power.clamp_min(1e-10))
    db = db - db.amax(dim=(-2, -1), keepdim=True)
    return (db.clamp(min=-cfg.top_db) / cfg.top_db) * 2.0 + 1.0


def denormalise(spec: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """The inverse of ``normalise`` (up to the clip's peak level, which is 1): [-1, 1] -> mel power."""
    db = (spec.clamp(-1.0, 1.0) - 1.0) / 2.0 * cfg.top_db
    return torch.pow(10.0, db / 10.0)


def log_mel(wave: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Waveforms -> the GAN's spectrogram images ``[B, 1, size, size]`` in [-1, 1]."""
    return normalise(mel_power(wave, cfg), cfg)


@torch.no_grad()
def to_waveform(spec: torch.Tensor, cfg: MelConfig, seed: int | None = 0) -> torch.Tensor:
    """Spectrogram images ``[B, 1, size, size]`` in [-1, 1] -> waveforms ``[B, length]`` at ``peak``.

    Griffin-Lim starts from random phases; ``seed`` fixes them (``None``: the global generator)."""
    if spec.dim() != 4 or spec.shape[1:] != (1, cfg.size, cfg.size):
        raise ValueError(f"spectrograms must be [B, 1, {cfg.size}, {cfg.size}] (mel.size={cfg.size}), "
                         f"got {list(spec.shape)}")
    power = denormalise(spec.float().cpu(), cfg).squeeze(1)  # [B, F, T]
    inverse = torchaudio.transforms.InverseMelScale(cfg.n_stft, n_mels=cfg.size, sample_rate=cfg.sample_rate)
    linear = inverse(power).clamp_min(0.0)
    griffin_lim = torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0,
                                                   n_iter=cfg.griffin_lim_iters, length=cfg.length, rand_init=True)
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        wave = griffin_lim(linear)
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    return wave / wave.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) * cfg.peak
