"""SST-2 (GLUE) binary sentiment, text only.

GLUE's ``test.tsv`` has no labels, so **both the val and the test loaders read ``dev.tsv``**
(872 sentences), as is usual for SST-2: report dev accuracy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from datamodules.base import BatchedDataset, RealDataModule
from datamodules.cache import load_or_build
from datamodules.paths import cache_dir
from datamodules.sources import read_sst2, sst2_folder
from datamodules.text import load_tokenizer, trim_batch


class TextSet(BatchedDataset):
    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, label: torch.Tensor,
                 sentences: list[str]) -> None:
        self.input_ids, self.attention_mask, self.label, self.sentences = input_ids, attention_mask, label, sentences

    def __len__(self) -> int:
        return len(self.label)

    def get_batch(self, index: torch.Tensor) -> dict:
        text = trim_batch({"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]})
        return {"text": text, "label": self.label[index], "present": {"text": torch.ones(len(index), dtype=torch.bool)}}


class SST2DataModule(RealDataModule):
    """SST-2 sentences -> ``{"text": {"input_ids", "attention_mask"}, "label", "present": {"text"}}``.

    Splits: train = ``train.tsv`` (67,349), val = test = ``dev.tsv`` (872; ``test.tsv`` is
    unlabelled). Batches are trimmed to their longest sentence (at most ``max_length`` tokens).
    Token ids are cached per tokenizer under ``cache_dir("sst2")``.

    Args:
        root: data root holding ``sst2/{train,dev}.tsv``.
        tokenizer: ``"minilm"`` (local all-MiniLM-L6-v2 WordPiece, pairs with
            ``TransformerTextEncoder(pretrained=...)``), ``"byte"`` (no files), or a local
            tokenizer folder.
        max_length: truncation length in tokens.
        train_limit: use only the first N training sentences (quick runs).
    """

    num_classes = 2
    modalities = ("text",)

    @property
    def class_names(self) -> list[str]:
        return ["negative", "positive"]  # GLUE's label 0 / 1

    def __init__(self, root: str | None = None, tokenizer: str = "minilm", max_length: int = 64, batch_size: int = 64,
                 num_workers: int = 0, train_limit: int | None = None, download: bool = False) -> None:
        super().__init__()
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (room for [CLS] x [SEP]), got {max_length}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size

    def prepare_data(self) -> None:
        sst2_folder(self.hparams.root, download=self.hparams.download)

    def token_cache_file(self, path: str | os.PathLike, num_sentences: int) -> Path:
        """Where the token ids of ``path`` live: keyed by the file (path, size, mtime), the
        tokenizer, ``max_length`` and the number of sentences -- nothing else."""
        hp = self.hparams
        st = os.stat(path)
        key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{hp.tokenizer}|{hp.max_length}|"
                           f"{num_sentences}".encode()).hexdigest()[:16]
        return cache_dir("sst2") / f"{key}.safetensors"

    def _encode(self, path, sentences: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize once; later runs load the ids (tokenizing 67k sentences takes seconds)."""
        def read(file: Path) -> dict[str, torch.Tensor]:
            enc = load_file(str(file))
            if set(enc) != {"input_ids", "attention_mask"} or len(enc["input_ids"]) != len(sentences):
                raise ValueError(f"holds {({k: tuple(v.shape) for k, v in enc.items()})}, not {len(sentences)} rows")
            return enc

        return load_or_build(self.token_cache_file(path, len(sentences)), read,
                             lambda: self.tokenizer(sentences, self.hparams.max_length),
                             lambda enc, tmp: save_file(enc, str(tmp)))[0]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        folder = sst2_folder(hp.root, download=hp.download)
        for split, name in (("train", "train.tsv"), ("val", "dev.tsv")):
            sentences, labels = read_sst2(folder / name)
            label = torch.from_numpy(labels)
            if split == "train" and hp.train_limit is not None:
                sentences, label = sentences[: hp.train_limit], label[: hp.train_limit]
            enc = self._encode(folder / name, sentences)
            self.splits[split] = TextSet(enc["input_ids"], enc["attention_mask"], label, sentences)
        self.splits["test"] = self.splits["val"]  # dev.tsv: GLUE's test.tsv has no labels
