"""Tri-modal digits: AV-MNIST's image + spoken digit, plus a short noisy text about the digit.

The text is a template around the digit's word ("seven", "the number seven", "i think it's a
seven", ...). With probability ``text_noise`` a sample's text is corrupted, one of:

- **typo**: one or two character edits of the digit word ("sevn", "sveen") -- still readable;
- **distractor**: a second, wrong digit word ("seven or two", "two, no, seven") -- ambiguous;
- **wrong**: the word of another digit -- misleading (like a mislabelled caption).

So text alone is right on roughly ``1 - text_noise / 2`` of samples, and all three encoders and
a three-way fusion are exercised on real image/audio. Texts are deterministic from the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.avmnist import SPLITS, AVMNISTDataModule, PairedDigits
from datamodules.base import BatchedDataset
from datamodules.text import load_tokenizer, trim_batch

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("{}", "the number {}", "a {}", "it is {}", "i think it's a {}", "this is a {}", "digit: {}", "{} i guess")
DISTRACTOR_TEMPLATES = ("{true} or {other}", "{other} or {true}", "{other}, no, {true}", "{true}, not {other}",
                        "{other} or maybe {true}")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo(word: str, rng: np.random.Generator) -> str:
    """One or two random edits: delete, swap neighbours, replace, or duplicate a character."""
    chars = list(word)
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(len(chars)))
        op = int(rng.integers(4))
        if op == 0 and len(chars) > 2:
            del chars[i]
        elif op == 1 and i < len(chars) - 1:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == 2:
            chars[i] = LETTERS[int(rng.integers(26))]
        else:
            chars.insert(i, chars[i])
    return "".join(chars)


def digit_texts(labels: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """A text per label and its kind (0 clean, 1 typo, 2 distractor, 3 wrong)."""
    texts, kinds = [], np.zeros(len(labels), dtype=np.int64)
    for i, y in enumerate(labels.tolist()):
        other = WORDS[(y + int(rng.integers(1, 10))) % 10]
        word = WORDS[y]
        kind = int(rng.integers(1, 4)) if rng.random() < noise else 0
        if kind == 1:
            word = typo(word, rng)
        elif kind == 3:
            word = other
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        if kind == 2:
            word = DISTRACTOR_TEMPLATES[int(rng.integers(len(DISTRACTOR_TEMPLATES)))].format(true=word, other=other)
        texts.append(template.format(word))
        kinds[i] = kind
    return texts, kinds


class TriModalDigits(BatchedDataset):
    def __init__(self, paired: PairedDigits, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 texts: list[str], kinds: np.ndarray, pad_id: int = 0) -> None:
        self.paired, self.input_ids, self.attention_mask, self.texts, self.kinds = (
            paired, input_ids, attention_mask, texts, kinds)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.paired)

    def get_batch(self, index: torch.Tensor) -> dict:
        batch = self.paired.get_batch(index)
        present = self.paired.presence(index, "text")
        ids, mask = self.input_ids[index], self.attention_mask[index]
        if not present.all():  # absent text: all padding, empty attention mask
            ids = ids.masked_fill(~present.unsqueeze(1), self.pad_id)
            mask = mask * present.unsqueeze(1)
        batch["text"] = trim_batch({"input_ids": ids, "attention_mask": mask})
        batch["present"]["text"] = present
        return batch


class TriModalDigitsDataModule(AVMNISTDataModule):
    """AV-MNIST image + audio (same arguments, same cached build) plus a noisy digit text.

    Batches: ``{"image", "audio", "text": {"input_ids", "attention_mask"}, "label",
    "present": {"image", "audio", "text"}}``.

    Args (besides ``AVMNISTDataModule``'s):
        text_noise: probability that a sample's text is corrupted (typo / distractor / wrong word).
        tokenizer: ``"byte"`` (default, vocab 259) or ``"minilm"`` / a local tokenizer folder.
        max_length: token budget per text (texts are trimmed per batch).
        labels_per_class / label_fraction / budget_seed: a label budget on the training triples, as
            AV-MNIST's (``datamodules.budget``); ``unlabelled_rows`` holds the other rows, which the
            same datamodule without a budget serves for pretraining.
    """

    modalities = ("image", "audio", "text")

    def __init__(self, root: str | None = None, split: str = "speaker", reduce_image: bool = True,
                 image_energy: float = 0.25, audio_format: str = "spectrogram", audio_noise: float = 0.0,
                 seed: int = 0, batch_size: int = 64, num_workers: int = 0, download: bool = False,
                 cache_dir: str | None = None, train_limit: int | None = None, test_speaker: str = "yweweler",
                 audio_length: int = 8000, skip_bad_files: bool = False, missing_prob: float = 0.0,
                 missing_splits: list[str] | None = None, text_noise: float = 0.3, tokenizer: str = "byte",
                 max_length: int = 16, val_speaker: str | None = None, labels_per_class: int | None = None,
                 label_fraction: float | None = None, budget_seed: int | None = None) -> None:
        super().__init__(root=root, split=split, reduce_image=reduce_image, image_energy=image_energy,
                         audio_format=audio_format, audio_noise=audio_noise, seed=seed, batch_size=batch_size,
                         num_workers=num_workers, download=download, cache_dir=cache_dir, train_limit=train_limit,
                         test_speaker=test_speaker, audio_length=audio_length, skip_bad_files=skip_bad_files,
                         missing_prob=missing_prob, missing_splits=missing_splits, val_speaker=val_speaker,
                         labels_per_class=labels_per_class, label_fraction=label_fraction, budget_seed=budget_seed)
        if not 0.0 <= text_noise <= 1.0:
            raise ValueError(f"text_noise must be in [0, 1], got {text_noise}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size

    def _make_dataset(self, split: str, paired: PairedDigits) -> BatchedDataset:
        rng = np.random.default_rng([self.hparams.seed, SPLITS.index(split), 7])
        texts, kinds = digit_texts(paired.label.numpy(), self.hparams.text_noise, rng)
        enc = self.tokenizer(texts, self.hparams.max_length)
        return TriModalDigits(paired, enc["input_ids"], enc["attention_mask"], texts, kinds,
                              pad_id=self.tokenizer.pad_token_id or 0)
