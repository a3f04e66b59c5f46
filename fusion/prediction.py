"""``fusegen predict`` for classifiers: one CSV row per input, a file people can open.

``FusionClassifier``/``UnimodalClassifier`` return this writer from ``configure_callbacks()``, so
every ``trainer.predict`` (and ``fusegen predict --config X.yaml --ckpt_path ...``) writes
``<run_dir>/predictions/predictions.csv``::

    index,predicted,predicted_name,label,label_name,p_zero,p_one,...
    0,7,seven,7,seven,0.0012,0.0003,...

* ``index``: the batch's ``id`` (or ``index``) when the datamodule provides one, else the sample's
  position in the predict dataset (which Lightning tracks through its batch sampler). Ids are
  written as the data holds them (``17`` or ``'ex1'``), under the datamodule's ``id_name`` (the
  user's id column, e.g. ``HFDataModule(id_column=...)``) when it has one;
* ``predicted`` / ``predicted_name``: the arg-max class and its name (``class_names`` of the
  datamodule when it has them, else the index); ``label`` / ``label_name`` when the data has labels;
* ``p_<name>``: the softmax probability of each class (a row sums to 1).

Under DDP every rank predicts a shard; the rows are gathered to rank 0 (``all_gather_object``, so
no shared file system is needed), de-duplicated (a ``DistributedSampler`` pads the last shard
with repeats), sorted, and written atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from datamodules.files import atomic_write_text
from fusion.artifacts import PREDICTIONS, artifact_dir

FILENAME = "predictions.csv"


def _flat(batches: Sequence[Any]) -> list[Any]:
    """Lightning nests predictions per dataloader only when there are several; write them all."""
    if batches and isinstance(batches[0], list):
        return [b for loader in batches for b in loader]
    return list(batches)


def _values(x: Any) -> list[Any]:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


def prediction_rows(predictions: Sequence[dict], batch_indices: Sequence[Sequence[int]] | None,
                    class_names: Sequence[str] | None, id_name: str | None = None
                    ) -> tuple[list[str], list[list[Any]]]:
    """The CSV header and rows for ``predict_step`` outputs ``{"probs": [B, C], "id"?, "label"?}``.

    ``batch_indices[i]`` are the dataset indices of batch ``i`` (used when a batch has no ``id``);
    without them the rows are numbered in order. ``id_name``: the first column's header when the
    batches carry an ``id``."""
    batches = _flat(predictions)
    if not batches:
        return [], []
    num_classes = batches[0]["probs"].shape[-1]
    names = [str(n) for n in class_names] if class_names is not None and len(class_names) == num_classes \
        else [str(i) for i in range(num_classes)]
    id_key = next((k for k in ("id", "index") if k in batches[0]), None)
    has_label = "label" in batches[0]
    header = [(id_name if id_key == "id" and id_name else id_key) or "index", "predicted", "predicted_name"]
    header += ["label", "label_name"] if has_label else []
    header += [f"p_{n}" for n in names]
    rows, position = [], 0
    for i, out in enumerate(batches):
        probs = out["probs"].float()
        if id_key is not None:
            ids = _values(out[id_key])
        elif batch_indices is not None and i < len(batch_indices) and len(batch_indices[i]) == len(probs):
            ids = list(batch_indices[i])
        else:
            ids = list(range(position, position + len(probs)))
        position += len(probs)
        predicted = probs.argmax(dim=-1).tolist()
        labels = _values(out["label"]) if has_label else None
        for j, p in enumerate(probs.tolist()):
            row = [ids[j], predicted[j], names[predicted[j]]]
            if labels is not None:
                row += [labels[j], names[labels[j]] if 0 <= labels[j] < num_classes else ""]
            rows.append(row + [f"{v:.6g}" for v in p])
    return header, rows


class PredictionWriter(BasePredictionWriter):
    """Writes ``<run_dir>/predictions/predictions.csv`` at the end of ``predict`` (see module doc).

    Args:
        filename: the CSV's name inside ``<run_dir>/predictions/``.
    """

    def __init__(self, filename: str = FILENAME) -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        indices = _flat(batch_indices) if batch_indices else None
        datamodule = trainer.datamodule
        header, rows = prediction_rows(predictions, indices, getattr(datamodule, "class_names", None),
                                       getattr(datamodule, "id_name", None))
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (header, rows))
            header = next((h for h, _ in gathered if h), header)
            seen, rows = set(), []
            for _, part in gathered:
                for row in part:
                    if row[0] not in seen:  # DistributedSampler repeats samples to even the shards out
                        seen.add(row[0])
                        rows.append(row)
            rows.sort(key=lambda r: (isinstance(r[0], str), r[0] if isinstance(r[0], (int, float, str)) else str(r[0])))
        if not trainer.is_global_zero or not header:
            return
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self.path = artifact_dir(trainer, PREDICTIONS) / self.filename
        atomic_write_text(self.path, text.getvalue())
        print(f"fusegen predict: wrote {len(rows)} predictions to {self.path}", flush=True)
