"""Audio features shared by the AV-MNIST, FSDD and tri-modal modules.

The AV-MNIST "spectrogram-like" input is a 112x112 log-power spectrogram of a 1-s, 8 kHz clip:
``n_fft=222`` gives 112 frequency bins and ``hop_length=72`` (centred frames) gives
``1 + 8000 // 72 = 112`` frames, so no resize is needed. Each spectrogram is scaled to [0, 1]
(dB relative to its own maximum, 80 dB range), like the 8-bit spectrogram images of the
original benchmark.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

N_FFT, HOP, TOP_DB = 222, 72, 80.0


class SpectrogramFeatures(torch.nn.Module):
    """``[R, L]`` waveforms -> ``[R, 1, 112, 112]`` float32 spectrograms in [0, 1]."""

    def __init__(self, n_fft: int = N_FFT, hop_length: int = HOP, top_db: float = TOP_DB) -> None:
        super().__init__()
        self.spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop_length, power=2.0)
        self.top_db = top_db

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        out = []
        for part in waves.split(chunk):  # bounded memory for thousands of clips
            db = 10.0 * torch.log10(self.spec(part.float()).clamp_min(1e-10))
            peak = db.amax(dim=(-2, -1), keepdim=True)
            out.append(((db - peak + self.top_db) / self.top_db).clamp_(0.0, 1.0))
        return torch.cat(out).unsqueeze(1)


def signal_rms(waves: torch.Tensor) -> torch.Tensor:
    """RMS of each clip over its non-padded samples (padding is exact zeros)."""
    nonzero = (waves != 0).sum(dim=-1).clamp_min(1)
    return (waves.pow(2).sum(dim=-1) / nonzero).sqrt()


def per_sample_noise(seed: int, stream: int, indices: torch.Tensor, length: int) -> torch.Tensor:
    """Unit Gaussian noise ``[B, length]``; row ``b`` depends only on (seed, stream, indices[b]),
    so a sample gets the same noise whatever batch or worker it lands in."""
    rows = [np.random.default_rng([seed, stream, int(i)]).standard_normal(length, dtype=np.float32)
            for i in indices.tolist()]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, length)


class AudioBank:
    """All clips of a dataset in one place, served per sample in the requested format.

    Clean audio is a plain index into precomputed arrays; with ``noise > 0`` each sample's
    waveform gets its own seeded noise (see ``per_sample_noise``) and, in spectrogram format,
    its spectrogram is recomputed from the noisy waveform.
    """

    def __init__(self, waveforms: torch.Tensor, spectrograms: torch.Tensor | None, audio_format: str,
                 noise: float = 0.0, seed: int = 0) -> None:
        if audio_format not in ("spectrogram", "waveform"):
            raise ValueError(f"audio_format must be 'spectrogram' or 'waveform', got {audio_format!r}")
        self.waveforms, self.format, self.noise, self.seed = waveforms, audio_format, noise, seed
        self.features = SpectrogramFeatures()
        if audio_format == "spectrogram" and spectrograms is None:
            spectrograms = self.features(waveforms)
        self.spectrograms = spectrograms
        self.rms = signal_rms(waveforms) if noise > 0 else None

    def get(self, recording: torch.Tensor, sample: torch.Tensor, stream: int) -> torch.Tensor:
        """Audio for clips ``recording[b]``; ``sample[b]`` + ``stream`` key the noise draw."""
        if self.noise <= 0:
            return self.spectrograms[recording] if self.format == "spectrogram" else self.waveforms[recording]
        wave = self.waveforms[recording]
        noise = per_sample_noise(self.seed, stream, sample, wave.shape[-1])
        wave = wave + self.noise * self.rms[recording].unsqueeze(1) * noise
        return self.features(wave) if self.format == "spectrogram" else wave
