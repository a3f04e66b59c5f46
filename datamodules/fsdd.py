"""Free Spoken Digit Dataset, audio only (3,000 clips, 6 speakers x 10 digits x 50 takes)."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.audio import AudioBank
from datamodules.base import DIGIT_NAMES, BatchedDataset, RealDataModule
from datamodules.sources import read_fsdd

FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
LABELS = ("digit", "speaker")


class ClipSet(BatchedDataset):
    def __init__(self, recording: torch.Tensor, label: torch.Tensor, bank: AudioBank, stream: int) -> None:
        self.recording, self.label, self.bank, self.stream = recording, label, bank, stream

    def __len__(self) -> int:
        return len(self.recording)

    def get_batch(self, index: torch.Tensor) -> dict:
        return {"audio": self.bank.get(self.recording[index], index, self.stream), "label": self.label[index],
                "present": {"audio": torch.ones(len(index), dtype=torch.bool)}}


def fsdd_split(speaker: list[str], take: torch.Tensor, split: str, test_speaker: str, val_fraction: float,
               seed: int) -> dict[str, np.ndarray]:
    """Recording indices per split. Test: the held-out speaker (``speaker``) or takes 0-4 of
    every speaker (``recording``, FSDD's official split); val: a seeded ``val_fraction`` of the rest."""
    speaker_arr = np.asarray(speaker)
    if split == "speaker":
        if test_speaker not in set(speaker):
            raise ValueError(f"test_speaker {test_speaker!r} has no FSDD recordings; speakers: {sorted(set(speaker))}")
        is_test = speaker_arr == test_speaker
    elif split == "recording":
        is_test = take.numpy() < 5
    else:
        raise ValueError(f"split must be 'speaker' or 'recording', got {split!r}")
    rest = np.random.default_rng(seed).permutation(np.flatnonzero(~is_test))
    n_val = int(round(val_fraction * len(rest)))
    return {"train": np.sort(rest[n_val:]), "val": np.sort(rest[:n_val]), "test": np.flatnonzero(is_test)}


class FSDDDataModule(RealDataModule):
    """FSDD spoken digits. Batches: ``{"audio", "label", "present": {"audio"}}`` with audio a
    ``[B, 1, 112, 112]`` spectrogram in [0, 1] or a ``[B, audio_length]`` 8 kHz waveform.

    Args:
        root: data root holding ``fsdd/recordings/*.wav``.
        split: ``"speaker"`` (test = all clips of ``test_speaker``, unseen voice) or
            ``"recording"`` (FSDD's official split: takes 0-4 of every speaker are test).
        audio_format: ``"spectrogram"`` or ``"waveform"``.
        val_fraction: share of the non-test clips held out for validation (seeded).
        audio_noise: additive noise RMS relative to each clip's RMS.
        skip_bad_files: skip unreadable wavs with a warning instead of failing.
        label: what ``batch["label"]`` is: ``"digit"`` (0-9) or ``"speaker"`` (index into
            ``class_names``, the sorted speaker names; needs ``split: recording``, since the
            speaker split holds a whole voice out of training).
    """

    num_classes = 10
    sample_rate = 8000
    modalities = ("audio",)

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES) if self.hparams.label == "digit" else list(self.speakers)

    def __init__(self, root: str | None = None, split: str = "speaker", audio_format: str = "spectrogram",
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, val_fraction: float = 0.1,
                 audio_noise: float = 0.0, test_speaker: str = "yweweler", audio_length: int = 8000,
                 download: bool = False, skip_bad_files: bool = False, label: str = "digit") -> None:
        super().__init__()
        if label not in LABELS:
            raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
        if label == "speaker" and split == "speaker":
            raise ValueError("label: speaker needs split: recording -- split: speaker keeps every clip of "
                             f"test_speaker {test_speaker!r} out of training, a class the model could never learn")
        if split not in ("speaker", "recording"):
            raise ValueError(f"split must be 'speaker' or 'recording', got {split!r}")
        if audio_format not in ("spectrogram", "waveform"):
            raise ValueError(f"audio_format must be 'spectrogram' or 'waveform', got {audio_format!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.paths: dict[str, list[str]] = {}
        self.speakers: list[str] = list(FSDD_SPEAKERS)  # replaced by the speakers found at setup
        if label == "speaker":
            self.num_classes = len(self.speakers)

    def prepare_data(self) -> None:
        if self.hparams.download:
            from datamodules.sources import fsdd_folder

            fsdd_folder(self.hparams.root, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        rec = read_fsdd(hp.root, length=hp.audio_length, download=hp.download, skip_bad_files=hp.skip_bad_files)
        self.bank = AudioBank(rec.waveforms, None, hp.audio_format, hp.audio_noise, hp.seed)
        parts = fsdd_split(rec.speaker, rec.index, hp.split, hp.test_speaker, hp.val_fraction, hp.seed)
        if hp.label == "speaker":
            self.speakers = sorted(set(rec.speaker))
            self.num_classes = len(self.speakers)
            labels = torch.tensor([self.speakers.index(s) for s in rec.speaker], dtype=torch.long)
        else:
            labels = rec.digit
        for code, (s, idx) in enumerate(parts.items()):
            r = torch.from_numpy(idx)
            self.splits[s] = ClipSet(r, labels[r], self.bank, stream=code)
            self.paths[s] = [rec.paths[i] for i in idx]
