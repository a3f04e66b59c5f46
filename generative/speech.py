"""Speech GANs: a ``GAN`` whose images are log-mel spectrograms, and how its clips are scored.

``SpeechGAN`` is ``generative.GAN`` with one change of input: the batch carries waveforms
(``batch["audio"]``, e.g. ``FSDDDataModule(audio_format: waveform)``), and the module turns them
into the ``[1, size, size]`` log-mel images of ``generative.audio`` on the fly, on its device, so
the DCGAN networks, losses, EMA, conditioning and checkpoints are the GAN's own. The condition is
anything ``GAN`` takes: ``label`` (say the digit you ask for) or a frozen encoder of another
modality, e.g. ``condition: image`` with a fusion image encoder (show it a digit, it says it).

``fusegen predict`` writes, under ``runs/<experiment>/predictions/``, each generated spectrogram as
a PNG (``GAN``'s writer: row 0 is the lowest mel band) and beside it the same clip as an 8 kHz
``.wav`` (``generative.audio.to_waveform``: inverse mel scale + Griffin-Lim), plus ``grid.png``.

Scoring (``score_clips``): a fusion audio classifier trained on real recordings listens to the
generated waveforms (after Griffin-Lim, the honest end-to-end check): the share it reads as the
requested digit, and the Fréchet distance between its features of real and generated clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import soundfile as sf
import torch
from torch import nn

from datamodules.files import atomic_path
from generative.audio import MelConfig, log_mel, to_waveform
from generative.callbacks import PredictionWriter
from generative.module import GAN


class SpeechGAN(GAN):
    """``GAN`` on log-mel spectrograms of the batch's waveforms (see the module doc).

    Args:
        mel: the spectrogram: fields of ``generative.audio.MelConfig`` (``{size: 32, n_fft: 1024}``); its
            ``size`` must be the networks' ``image_size``, its ``length`` the clips' sample count.
        image_key: the batch key of the waveforms ``[B, length]``.
        **kwargs: ``generative.GAN``'s arguments (networks with ``channels: 1``, loss, condition...).
    """

    def __init__(self, mel: dict[str, Any] | None = None, image_key: str = "audio", **kwargs: Any) -> None:
        super().__init__(image_key=image_key, **kwargs)
        # Kept a plain dict in the hyperparameters: checkpoints are read as data (weights_only).
        self.mel = MelConfig(**(mel or {}))
        for name, net in (("generator", self.generator), ("discriminator", self.discriminator)):
            size = getattr(net, "image_size", self.mel.size)
            if size != self.mel.size:
                raise ValueError(f"model.init_args.{name}.init_args.image_size is {size} but model.init_args.mel.size "
                                 f"is {self.mel.size}: the spectrogram has {self.mel.size} mel bands x as many "
                                 "frames; set both to the same value")

    def real_images(self, batch: dict) -> torch.Tensor:
        """The batch's waveforms as log-mel images in [-1, 1] (``data_range`` does not apply)."""
        return log_mel(batch[self.hparams.image_key], self.mel)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [SpeechPredictionWriter(self.mel) if type(c) is PredictionWriter else c
                for c in super().configure_callbacks()]


class SpeechPredictionWriter(PredictionWriter):
    """``PredictionWriter`` (spectrogram PNGs and ``grid.png``) plus a ``.wav`` beside each PNG:
    the clip at ``mel.sample_rate``, 16-bit PCM, written atomically."""

    def __init__(self, mel: MelConfig, grid_size: int = 100, nrow: int = 10) -> None:
        super().__init__(grid_size=grid_size, nrow=nrow)
        self.mel = mel
        self.wavs: list[Path] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self.wavs = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        super().write_on_batch_end(trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx)
        if prediction is None:
            return
        images = prediction["images"]  # [0, 1]: the writer's PNG range
        waves = to_waveform(images * 2.0 - 1.0, self.mel)
        for png, wave in zip(self.written[-len(images):], waves):
            path = png.with_suffix(".wav")
            write_wav(path, wave, self.mel.sample_rate)
            self.wavs.append(path)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_end(trainer, pl_module)
        if trainer.is_global_zero and self.wavs:
            print(f"fusegen: wrote {len(self.wavs)} .wav clips ({self.mel.sample_rate} Hz) beside them in "
                  f"{self.folder}")


def write_wav(path: Path, wave: torch.Tensor, sample_rate: int) -> Path:
    """One mono clip in [-1, 1] as a 16-bit PCM WAV file, written atomically."""
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wave.detach().float().cpu().clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16",
                 format="WAV")
    return path


# ---------------------------------------------------------------------------------------------- scoring
def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature matrices ``[N, D]`` (as FID):
    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2))``, the last term from the
    eigenvalues of ``S_r S_f`` (real and non-negative up to round-off)."""
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    sqrt_trace = torch.linalg.eigvals(cov_r @ cov_f).real.clamp_min(0).sqrt().sum()
    return float((mu_r - mu_f).pow(2).sum() + cov_r.trace() + cov_f.trace() - 2 * sqrt_trace)


@torch.no_grad()
def classifier_features(classifier: nn.Module, waves: torch.Tensor, modality: str = "audio",
                        batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``fusion.FusionClassifier``'s logits and fused features (``embed``) for waveforms ``[N, L]``."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    logits, feats = [], []
    for part in waves.split(batch_size):
        batch = {modality: part.to(device)}
        feats.append(classifier.embed(batch).float().cpu())
        logits.append(classifier(batch).float().cpu())
    classifier.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def score_clips(classifier: nn.Module, fake: torch.Tensor, wanted: torch.Tensor, real: torch.Tensor,
                real_labels: torch.Tensor) -> dict[str, float]:
    """How a real-speech classifier hears generated clips.

    ``fake`` ``[N, L]`` generated waveforms for digits ``wanted``; ``real`` ``[M, L]`` held-out
    real recordings with ``real_labels``. Returns ``agreement`` (share of fake clips classified as
    their wanted digit), ``real_accuracy`` (the classifier on the real clips: the ceiling to read
    agreement against), ``frechet`` (on the classifier's fused features, real vs fake) and the
    sample counts (the Fréchet distance is biased at small counts: compare equal-sized runs only)."""
    fake_logits, fake_feats = classifier_features(classifier, fake)
    real_logits, real_feats = classifier_features(classifier, real)
    return {"agreement": float((fake_logits.argmax(1) == wanted.cpu()).float().mean()),
            "real_accuracy": float((real_logits.argmax(1) == real_labels.cpu()).float().mean()),
            "frechet": frechet_distance(real_feats, fake_feats), "num_fake": len(fake), "num_real": len(real)}
