"""A small deterministic multimodal dataset that needs no files.

Every sample carries a 28x28 image, an 8 kHz waveform and a short token sequence. Each modality
encodes the label *noisily* (class prototype + noise, a class-pitched tone in noise, a class
token that is sometimes missing), so no single modality is perfect and fusion helps. It is the
embedded default of the quick-start and the workhorse of the fast tests; headline results use
the real datasets.
"""

from __future__ import annotations

import math

import torch

from datamodules.base import BatchedDataset, RealDataModule

MODALITIES = ("image", "audio", "text")
PAD_ID, CLS_ID, FIRST_CLASS_TOKEN = 0, 1, 2


class MultimodalTensorDataset(BatchedDataset):
    """Dict-of-tensors dataset yielding fusegen's batch contract, a whole batch per index."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data["label"])

    def get_batch(self, index: torch.Tensor) -> dict:
        d = self.data
        return {
            "image": d["image"][index],
            "audio": d["audio"][index],
            "text": {"input_ids": d["input_ids"][index], "attention_mask": d["attention_mask"][index]},
            "label": d["label"][index],
            "present": {m: d[f"present_{m}"][index] for m in MODALITIES},
        }


def make_synthetic(
    n: int,
    *,
    num_classes: int = 10,
    seed: int = 0,
    image_noise: float = 1.2,
    image_distractor: float = 0.95,
    audio_noise: float = 3.0,
    text_keep_prob: float = 0.45,
    sample_rate: int = 8000,
    audio_len: int = 4000,
    text_len: int = 12,
    vocab_size: int = 64,
    missing_prob: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Build ``n`` samples. Class structure comes from a fixed generator (seed 1234) so every
    split shares it; ``seed`` only drives the per-sample draws."""
    proto_gen = torch.Generator().manual_seed(1234)
    # Smooth class prototypes: low-resolution random patterns upsampled to 28x28.
    low = torch.randn(num_classes, 1, 7, 7, generator=proto_gen)
    protos = torch.nn.functional.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)
    protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    pitches = 250.0 + 180.0 * torch.arange(num_classes, dtype=torch.float32)

    g = torch.Generator().manual_seed(seed)
    label = torch.randint(num_classes, (n,), generator=g)
    # A weaker prototype of another class is mixed in: iid noise alone stays linearly separable.
    distractor = (label + torch.randint(1, num_classes, (n,), generator=g)) % num_classes
    image = protos[label] + image_distractor * protos[distractor] + image_noise * torch.randn(n, 1, 28, 28, generator=g)

    t = torch.arange(audio_len, dtype=torch.float32) / sample_rate
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    jitter = 1.0 + 0.03 * torch.randn(n, 1, generator=g)  # speakers differ in pitch a little
    tone = torch.sin(2 * math.pi * pitches[label].unsqueeze(1) * jitter * t + phase)
    audio = 0.3 * (tone + audio_noise * torch.randn(n, audio_len, generator=g))

    lengths = torch.randint(text_len // 2, text_len + 1, (n,), generator=g)
    first_word = FIRST_CLASS_TOKEN + num_classes
    input_ids = torch.randint(first_word, vocab_size, (n, text_len), generator=g)
    input_ids[:, 0] = CLS_ID
    keep = torch.rand(n, generator=g) < text_keep_prob
    pos = 1 + (torch.rand(n, generator=g) * (lengths - 1).float()).long()
    rows = torch.nonzero(keep).squeeze(1)
    input_ids[rows, pos[rows]] = FIRST_CLASS_TOKEN + label[rows]
    attention_mask = (torch.arange(text_len).unsqueeze(0) < lengths.unsqueeze(1)).long()
    input_ids = input_ids * attention_mask  # PAD_ID is 0

    data = {"image": image, "audio": audio, "input_ids": input_ids, "attention_mask": attention_mask, "label": label}
    for m in MODALITIES:
        present = torch.rand(n, generator=g) >= missing_prob
        data[f"present_{m}"] = present
    # A modality marked absent is blanked so a model cannot peek at it by ignoring the mask.
    data["image"][~data["present_image"]] = 0.0
    data["audio"][~data["present_audio"]] = 0.0
    data["input_ids"][~data["present_text"]] = PAD_ID
    data["attention_mask"][~data["present_text"]] = 0
    return data


class SyntheticMultimodalDataModule(RealDataModule):
    """Deterministic image + audio + text digits-like data, no files needed.

    Args:
        num_train / num_val / num_test: split sizes.
        batch_size: samples per batch.
        seed: per-split draws use ``seed``, ``seed + 1`` and ``seed + 2``.
        missing_prob: probability that a modality is absent (marked in ``present``) per sample.
        image_noise / image_distractor / audio_noise / text_keep_prob: how hard each modality is
            on its own (defaults: roughly 65% image, 75% audio, 50% text for simple classifiers).
        num_workers: DataLoader workers.
    """

    num_classes = 10
    vocab_size = 64
    sample_rate = 8000
    modalities = MODALITIES  # class_names: "0" ... "9" (RealDataModule)

    def __init__(
        self,
        num_train: int = 3000,
        num_val: int = 500,
        num_test: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        missing_prob: float = 0.0,
        image_noise: float = 1.2,
        image_distractor: float = 0.95,
        audio_noise: float = 3.0,
        text_keep_prob: float = 0.45,
        num_workers: int = 0,
    ) -> None:
        super().__init__()  # loaders (train/val/test/predict) come from RealDataModule
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        kw = dict(image_noise=hp.image_noise, image_distractor=hp.image_distractor, audio_noise=hp.audio_noise,
                  text_keep_prob=hp.text_keep_prob,
                  missing_prob=hp.missing_prob, vocab_size=self.vocab_size, sample_rate=self.sample_rate)
        for offset, (split, n) in enumerate(
            [("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test)]
        ):
            self.splits[split] = MultimodalTensorDataset(make_synthetic(n, seed=hp.seed + offset, **kw))
