"""Users' own data through Hugging Face ``datasets``: CSV/JSON/Parquet manifests, image/audio
folders, ``save_to_disk`` folders or Hub ids, mapped onto fusegen's dict-batch contract.

    data:
      class_path: datamodules.HFDataModule
      init_args:
        path: csv
        data_files: {train: my_data/train.csv, test: my_data/test.csv}
        columns: {image: picture, audio: recording, text: caption}
        label_column: label
        label_columns: {speaker: owner}     # more labels for multi-task: batch["speaker"]

What happens in ``setup``:
  1. the dataset is loaded (``datasets.load_dataset`` / ``load_from_disk``); Image/Audio features
     are read undecoded, so no FFmpeg/torchcodec is needed: images open with PIL, audio with
     ``soundfile`` and is resampled with ``torchaudio``;
  2. every cell is checked and decoded to a fixed-size array -- images ``[C, H, W]`` at
     ``image_size``/``image_channels``, audio a waveform of ``audio_length`` samples at
     ``sample_rate`` (or its 112x112 spectrogram), text token ids of ``max_length`` -- and an empty
     cell marks that modality absent for its row (``present``), it is not an error;
  3. the arrays are cached (safetensors, one folder per dataset + options, built in a temporary
     folder and renamed), so every later epoch and run is an in-memory index, not file I/O. Each
     file has a size + sha256 manifest (``datamodules.cache``): a damaged one is rebuilt, with
     one warning naming it.

Defaults fit the encoders' defaults: grey 28x28 images <-> ``fusion.LeNetImageEncoder``, 8 kHz
1-s waveforms <-> ``fusion.AudioEncoder``, the MiniLM WordPiece tokenizer (vocabulary 30522) <->
``fusion.TransformerTextEncoder``'s default BERT (vocabulary 30522, 128 positions).

``streaming: true`` reads rows lazily instead (data larger than a disk): split across DDP ranks
row by row with ``datasets.distributed.split_dataset_by_node`` and across loader workers by
``datasets`` itself, shuffled through a buffer; nothing is cached. Every rank runs the same number
of batches per epoch (``EvenStream``), whatever the shard sizes.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.base import BatchedDataset, RealDataModule, collate
from datamodules.budget import check_budget, label_budget
from datamodules.cache import problem, repair_warning, write_verified
from datamodules.checks import DATA, check_choice, check_real, check_value
from datamodules.files import atomic_folder
from datamodules.paths import cache_dir

KINDS = ("image", "audio", "text")
BUILDERS = ("csv", "json", "parquet", "arrow", "text", "imagefolder", "audiofolder")
MANIFEST_BUILDERS = ("csv", "json", "parquet", "arrow")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".mp3"}
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}
CACHE_VERSION = 2  # 2: every cache file has a size + sha256 manifest
EXTRA_LABEL = "label:"  # array-name prefix of the label_columns' labels (``label:speaker``)
RESERVED_KEYS = ("label", "index", "present", "id")


class DataError(ValueError):
    """Bad user data: the message names the column/file/row and the fix."""


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, dict):
        return all(_is_empty(v) for k, v in value.items() if k in ("path", "bytes", "array"))
    return False


def _cell_path(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str) and not value.get("bytes"):
        return value["path"]
    return None


def _plain_id(value: Any) -> Any:
    """An id cell as a JSON/CSV value: numpy scalars become Python ints/floats/strings."""
    return value.item() if isinstance(value, np.generic) else value


def _index_of_ids(ids: list[Any], fallback: np.ndarray) -> np.ndarray:
    """Integer ids serve as ``index`` too; any other ids (``'ex1'``) leave the row numbers there."""
    if ids and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
        return np.asarray(ids, dtype=np.int64)
    return fallback


def _to_tensors(arrays: dict[str, Any]) -> dict[str, Any]:
    """Decoded arrays as tensors; the ids (``id``: any values) stay a list."""
    return {k: list(v) if k == "id" else torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _with_file(where: str, value: Any) -> str:
    """``where`` plus the cell's file, for messages about a file (a folder dataset's row names only
    its folder)."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return f"{where}, file {path!r}" if isinstance(path, str) and path and path not in where else where


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------------------
# Decoding one cell (shared by the cached and the streaming path)
# ----------------------------------------------------------------------------------------------

class Preparer:
    """Turns raw cells into fixed-size arrays, per the datamodule's options."""

    def __init__(self, kinds: dict[str, str], image_size: tuple[int, int], image_channels: int, image_convert: bool,
                 sample_rate: int, audio_length: int, audio_format: str, tokenizer: str, max_length: int) -> None:
        self.kinds, self.image_size, self.image_channels = kinds, image_size, image_channels
        self.image_convert, self.sample_rate, self.audio_length = image_convert, sample_rate, audio_length
        self.audio_format, self.tokenizer_name, self.max_length = audio_format, tokenizer, max_length
        self._tokenizer = None
        self._spec = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from datamodules.text import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def __getstate__(self) -> dict:  # loader workers rebuild the tokenizer lazily
        return {**self.__dict__, "_tokenizer": None, "_spec": None}

    def shape(self, modality: str) -> tuple[int, ...]:
        kind = self.kinds[modality]
        if kind == "image":
            return (self.image_channels, *self.image_size)
        if kind == "audio":
            return (1, 112, 1 + self.audio_length // 72) if self.audio_format == "spectrogram" else (self.audio_length,)
        return (self.max_length,)

    # -- images --------------------------------------------------------------------------------
    def image(self, value: Any, where: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2 import functional as TF

        where = _with_file(where, value)
        try:
            if isinstance(value, Image.Image):
                img = value
            elif isinstance(value, dict) and value.get("bytes"):
                img = Image.open(io.BytesIO(value["bytes"]))
            elif _cell_path(value) is not None:
                img = Image.open(_cell_path(value))
            elif isinstance(value, (np.ndarray, list)):
                arr = np.asarray(value)
                img = Image.fromarray(arr.astype(np.uint8) if arr.dtype != np.uint8 else arr)
            else:
                raise DataError(f"{where}: cannot read an image from a {type(value).__name__}")
            img.load()
        except FileNotFoundError as err:
            raise DataError(f"{where}: image file not found: {err.filename}") from None
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{where}: unreadable image ({type(err).__name__}: {err})") from None
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        colours = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        if colours != self.image_channels and not self.image_convert:
            raise DataError(
                f"{where}: image has {colours} channel(s) (PIL mode {img.mode!r}) but image_channels is "
                f"{self.image_channels}. Set `image_channels: {colours}` (and the image encoder's `in_chans: "
                f"{colours}`), or `image_convert: true` to convert every image to {self.image_channels} channel(s)")
        img = img.convert("L" if self.image_channels == 1 else "RGB")
        x = TF.pil_to_tensor(img)
        if tuple(x.shape[-2:]) != self.image_size:
            x = TF.resize(x, list(self.image_size), antialias=True)
        return x.numpy()

    # -- audio ---------------------------------------------------------------------------------
    def audio(self, value: Any, where: str) -> np.ndarray:
        import soundfile as sf
        import torchaudio

        from datamodules.sources import fit_length

        where = _with_file(where, value)
        try:
            if isinstance(value, dict) and value.get("array") is not None:
                wave = np.asarray(value["array"], dtype=np.float32)
                sr = int(value.get("sampling_rate") or self.sample_rate)
                wave = wave if wave.ndim == 1 else wave.reshape(wave.shape[0], -1).mean(axis=0)
            elif isinstance(value, (np.ndarray, list)):
                wave, sr = np.asarray(value, dtype=np.float32).reshape(-1), self.sample_rate
            else:
                has_bytes = isinstance(value, dict) and value.get("bytes")
                source = io.BytesIO(value["bytes"]) if has_bytes else _cell_path(value)
                if source is None:
                    raise DataError(f"{where}: cannot read audio from a {type(value).__name__}")
                data, sr = sf.read(source, dtype="float32", always_2d=True)
                wave = data.mean(axis=1)
            if wave.size == 0:
                raise DataError(f"{where}: audio has no samples")
        except DataError:
            raise
        except FileNotFoundError as err:
            raise DataError(f"{where}: audio file not found: {err.filename}") from None
        except Exception as err:  # soundfile raises LibsndfileError / RuntimeError on bad files
            raise DataError(f"{where}: unreadable audio ({type(err).__name__}: {err}); soundfile reads "
                            "WAV/FLAC/OGG/AIFF (no FFmpeg needed)") from None
        w = torch.from_numpy(np.ascontiguousarray(wave))
        if sr != self.sample_rate:
            w = torchaudio.functional.resample(w, sr, self.sample_rate)
        w = fit_length(w, self.audio_length)
        if self.audio_format == "spectrogram":
            if self._spec is None:
                from datamodules.audio import SpectrogramFeatures

                self._spec = SpectrogramFeatures()
            return self._spec(w.unsqueeze(0))[0].numpy()
        return w.numpy()

    # -- a batch of rows -----------------------------------------------------------------------
    def rows(self, cells: dict[str, list], where: list[str], columns: dict[str, str] | None = None
             ) -> dict[str, np.ndarray]:
        """``cells[modality]`` = raw values of len(where) rows -> arrays + ``present_<m>`` masks;
        ``columns`` (modality -> the user's column name) names the column in errors."""
        n = len(where)
        out: dict[str, np.ndarray] = {}
        for m, values in cells.items():
            kind = self.kinds[m]
            present = np.array([not _is_empty(v) for v in values], dtype=bool)
            out[f"present_{m}"] = present
            if kind == "text":
                texts = [str(v) if p else "" for v, p in zip(values, present)]
                enc = self.tokenizer(texts, self.max_length)
                ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
                ids[~present], mask[~present] = 0, 0  # an absent caption is blanked, not a "[CLS] [SEP]"
                out[f"{m}.input_ids"], out[f"{m}.attention_mask"] = ids, mask
                continue
            dtype = np.uint8 if kind == "image" else np.float32
            arr = np.zeros((n, *self.shape(m)), dtype=dtype)
            decode = self.image if kind == "image" else self.audio
            for i in np.flatnonzero(present):
                column = (columns or {}).get(m, m)
                arr[i] = decode(values[i], f"{where[i]}, column {column!r}" + (f" ({m})" if column != m else ""))
            out[m] = arr
        return out


# ----------------------------------------------------------------------------------------------
# Datasets served to the loaders
# ----------------------------------------------------------------------------------------------

def _batch_from_arrays(data: dict[str, torch.Tensor], index: torch.Tensor, kinds: dict[str, str],
                       augment: Any = None) -> dict:
    batch: dict[str, Any] = {"label": data["label"][index], "index": data["index"][index], "present": {}}
    if "id" in data:  # the id column's values as the file holds them (strings or numbers)
        batch["id"] = [data["id"][i] for i in index.tolist()]
    for k, v in data.items():  # label_columns: one batch key each
        if k.startswith(EXTRA_LABEL):
            batch[k[len(EXTRA_LABEL):]] = v[index]
    for m, kind in kinds.items():
        if kind == "text":
            batch[m] = {"input_ids": data[f"{m}.input_ids"][index],
                        "attention_mask": data[f"{m}.attention_mask"][index]}
        elif kind == "image":
            x = data[m][index].float().div_(255.0)
            if augment is not None:
                present = data[f"present_{m}"][index]
                x = torch.stack([augment(img) if p else img for img, p in zip(x, present)]) if len(x) else x
            batch[m] = x
        else:
            batch[m] = data[m][index]
        batch["present"][m] = data[f"present_{m}"][index]
    return batch


class ArraySet(BatchedDataset):
    """One split of decoded arrays; ``augment`` (train only) runs per image."""

    def __init__(self, data: dict[str, torch.Tensor], kinds: dict[str, str], augment: Any = None) -> None:
        self.data, self.kinds, self.augment = data, kinds, augment

    def __len__(self) -> int:
        return len(self.data["label"])

    def get_batch(self, index: torch.Tensor) -> dict:
        return _batch_from_arrays(self.data, index, self.kinds, self.augment)


class Labeler:
    """Label cell -> class index: by name (``str(value)`` in ``class_names``), or an integer that
    is already an index when the class names are not themselves integers."""

    def __init__(self, class_names: list[str], column: str) -> None:
        self.class_names, self.column = class_names, column
        self.lookup = {n: i for i, n in enumerate(class_names)}
        self.ints_are_indices = not all(n.lstrip("-").isdigit() for n in class_names)

    def __call__(self, value: Any, where: str) -> int:
        if _is_empty(value):
            raise DataError(f"{where}: empty label in column {self.column!r}")
        if str(value) in self.lookup:
            return self.lookup[str(value)]
        if isinstance(value, (int, np.integer)) and self.ints_are_indices and 0 <= int(value) < len(self.lookup):
            return int(value)
        shown = self.class_names if len(self.class_names) <= 20 else self.class_names[:20] + ["..."]
        raise DataError(f"{where}: label {value!r} (column {self.column!r}) is not in class_names {shown}; "
                        "add it to class_names or fix the row")


class StreamingSet(IterableDataset):
    """Rows of a ``datasets.IterableDataset`` decoded on the fly and yielded as whole batches.

    Iterating the wrapped dataset inside a loader worker makes ``datasets`` give each worker its
    own shards; the DDP split was already done with ``split_dataset_by_node``. The epoch (the
    shuffle order) is set by ``EvenStream`` in the main process: ``datasets`` keeps it in shared
    memory for persistent workers, and workers setting it themselves race (its update is a
    read-modify-write), which gave two workers, or two ranks, different shard orders."""

    def __init__(self, ds: Any, preparer: Preparer, columns: dict[str, str], labeler: Labeler,
                 id_column: str | None, batch_size: int, folder: Path, augment: Any = None,
                 extra_labelers: dict[str, Labeler] | None = None) -> None:
        self.ds, self.preparer, self.columns, self.labeler, self.folder = ds, preparer, columns, labeler, folder
        self.id_column, self.batch_size, self.augment = id_column, batch_size, augment
        self.extra_labelers = dict(extra_labelers or {})

    def __iter__(self) -> Iterator[dict]:
        rows: list[dict] = []
        for row in self.ds:
            rows.append(row)
            if len(rows) == self.batch_size:
                yield self._prepare(rows)
                rows = []
        if rows:
            yield self._prepare(rows)

    def _prepare(self, rows: list[dict]) -> dict:
        ids = [_plain_id(r[self.id_column]) for r in rows] if self.id_column else []
        where = [f"HFDataModule: streamed row {i!r}" for i in ids] or ["HFDataModule: streamed row"] * len(rows)
        kinds = self.preparer.kinds
        cells = {m: [r[c] if kinds[m] == "text" else HFDataModule._resolve(r[c], self.folder) for r in rows]
                 for m, c in self.columns.items()}
        arrays = self.preparer.rows(cells, where, self.columns)
        arrays["label"] = np.array([self.labeler(r[self.labeler.column], w) for r, w in zip(rows, where)])
        for key, labeler in self.extra_labelers.items():
            arrays[EXTRA_LABEL + key] = np.array([labeler(r[labeler.column], w) for r, w in zip(rows, where)])
        arrays["index"] = _index_of_ids(ids, np.full(len(rows), -1, dtype=np.int64))
        data = _to_tensors(arrays)
        if self.id_column:
            data["id"] = ids
        return _batch_from_arrays(data, torch.arange(len(rows)), self.preparer.kinds, self.augment)


class EvenStream:
    """The loader of a streamed split as Lightning iterates it: every DDP rank runs the same number
    of batches per epoch.

    Ranks hold different numbers of rows when shards differ in size (or rows do not divide by
    the world size); a rank that ran one batch more than another would wait forever in DDP's
    gradient all-reduce (gloo aborts with "Received data size doesn't match expected size", NCCL
    hangs). Before each batch the ranks agree, with one all-reduce (MIN) of "I still have a
    batch" over a gloo group, and all stop when the first runs out; the rows left on the others
    are skipped this epoch (the data is split row by row, so that is at most a few batches).
    For ``shuffle`` the epoch is set here, in the main process, before the workers start.

    Args:
        loader: the ``DataLoader`` over a ``StreamingSet``.
        stream: that ``StreamingSet``.
        shuffle: set the epoch (a new shuffle order) before each pass.
        epoch: a callable giving the epoch to set (the trainer's), else passes are counted.
        group: the process group to agree over; ``None`` outside DDP.
    """

    def __init__(self, loader: DataLoader, stream: StreamingSet, shuffle: bool, epoch: Any = None,
                 group: Any = None) -> None:
        self.loader, self.stream, self.shuffle, self.epoch, self.group = loader, stream, shuffle, epoch, group
        self.passes = 0

    def __iter__(self) -> Iterator[dict]:
        if self.shuffle:
            self.stream.ds.set_epoch(int(self.epoch()) if self.epoch is not None else self.passes)
        self.passes += 1
        batches = iter(self.loader)
        while True:
            batch = next(batches, None)
            if self.group is not None:
                have = torch.tensor([0 if batch is None else 1], dtype=torch.int32)
                torch.distributed.all_reduce(have, op=torch.distributed.ReduceOp.MIN, group=self.group)
                if not have.item():
                    return
            if batch is None:
                return
            yield batch


# ----------------------------------------------------------------------------------------------
# The DataModule
# ----------------------------------------------------------------------------------------------

def _infer_class_names(features: Any, column: str, labels: list[Any], option: str) -> list[str]:
    """A label column's classes: the ``ClassLabel`` feature's names; else, for integer labels,
    ``"0"`` .. ``"max"``; else the sorted values."""
    import datasets

    feat = features.get(column) if features is not None else None
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names)
    values = {v for v in labels if not _is_empty(v)}
    if not values:
        raise DataError(f"HFDataModule: {option} {column!r} is empty in every row")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        # integer labels keep their value as the class index (0..max), even where a class has no rows
        return [str(v) for v in range(int(max(values)) + 1)]
    return sorted(str(v) for v in values)


def _label_columns(label_columns: Any, class_names: Any) -> dict[str, str]:
    """``label_columns`` as ``{batch_key: column}`` (a list serves each column under its name),
    checked: keys usable as batch keys, not the reserved ones, ``label_class_names`` keys among them."""
    if label_columns is None:
        out: dict[str, str] = {}
    elif isinstance(label_columns, (list, tuple)):
        out = {str(c): str(c) for c in label_columns}
        check_value("label_columns", label_columns, len(out) == len(label_columns) and all(
            isinstance(c, str) for c in label_columns), "a list of distinct column names", prefix=DATA)
    elif isinstance(label_columns, dict):
        out = dict(label_columns)
        check_value("label_columns", label_columns, all(isinstance(c, str) for c in out.values()),
                    "{batch_key: column name}", prefix=DATA)
    else:
        raise ValueError(f"{DATA}label_columns = {label_columns!r} is not allowed: a list of column names or "
                         "{batch_key: column}")
    for key in out:
        check_value(f"label_columns.{key}", out[key], isinstance(key, str) and key.isidentifier()
                    and key not in RESERVED_KEYS,
                    f"a batch key that is an identifier and none of {list(RESERVED_KEYS)} (the main label is "
                    "label_column's, served as 'label')", prefix=DATA)
    unknown = sorted(set(class_names or {}) - set(out))
    if unknown:
        raise ValueError(f"{DATA}label_class_names has {unknown}, which label_columns does not serve; its keys: "
                         f"{sorted(out)}")
    return out


class HFDataModule(RealDataModule):
    """A LightningDataModule on Hugging Face ``datasets`` for the user's own data.

    Batches: ``{<modality>: ..., "label": LongTensor[B], "index": LongTensor[B], "present":
    {<modality>: BoolTensor[B]}}`` with one key per entry of ``columns``; ``index`` is the row's
    number within its split (for predictions); with ``id_column`` also ``"id"``: the ids, a list;
    with ``label_columns`` one ``LongTensor[B]`` more per entry. After ``setup``: ``num_classes``,
    ``class_names``, ``modalities`` (the batch keys), ``kinds`` (modality -> image/audio/text),
    ``label_keys`` (``"label"`` and the ``label_columns`` keys) and ``label_classes`` (label key ->
    its class names; ``len`` is a ``MultiTaskClassifier`` task's ``num_classes``).

    Args:
        path: a ``datasets`` builder (``csv``, ``json``, ``parquet``, ``imagefolder``,
            ``audiofolder``), a Hub id, or a folder written by ``save_to_disk``. ``audiofolder``
            (``data_dir/[split/]label/clip.wav``) is listed by fusegen itself: the ``datasets``
            builder would need torchcodec/FFmpeg to store the clips.
        data_files / data_dir / name: passed to ``datasets.load_dataset``; ``data_files`` may be a
            path, a glob, a list, or ``{split: files}``. Paths inside CSV/JSON/Parquet manifests
            are relative to the manifest's folder.
        columns: ``{modality: column}``; the modality is the batch key (``image``, ``audio``,
            ``text``, or any name such as ``front``/``side``). Default: every column named
            image/audio/text that exists.
        kinds: ``{modality: image|audio|text}`` for modalities whose kind is not their name and
            cannot be inferred from the data (image/audio features, file extensions; else text).
        label_column: the column holding the class (any column: this is also how to relabel).
        label_columns: more label columns, for multi-task models: ``{batch_key: column}`` (or a list
            of columns, each served under its own name). Each becomes ``batch[batch_key]``, class
            indices inferred as for ``label_column``; a ``MultiTaskClassifier`` task reads it with
            ``label_key: batch_key``.
        label_class_names: ``{batch_key: [classes in order]}`` for ``label_columns`` entries (as
            ``class_names`` is for ``label_column``); needed when streaming without ClassLabel features.
        class_names: the classes in order (default: the ``ClassLabel`` feature's names; else, for
            integer labels, ``"0"`` .. ``"max"`` so a label's value is its index; else the sorted
            label values of all splits). A label not among them is an error.
        id_column: a column of ids (any values: ``17``, ``'ex1'``), served as the batch's ``id``
            list and written as the first column of ``predictions.csv``; integer ids also replace
            the row number as ``index``.
        val_fraction / test_fraction / seed: seeded split of ``train`` where the dataset has no
            validation/test split.
        image_size / image_channels: images are resized to ``image_size`` (int or [H, W]) with
            ``image_channels`` (1 grey, 3 RGB) and served as float ``[C, H, W]`` in [0, 1].
        image_convert: convert images whose channel count differs (else an error).
        augment: training-time image augmentation (torchvision v2): ``true`` for a small random
            affine, or a list of ``{class_path, init_args}`` transforms.
        sample_rate / audio_length / audio_format: audio resampled to ``sample_rate``, centre-cropped
            or zero-padded to ``audio_length`` samples, served as ``waveform`` ``[L]`` or
            ``spectrogram`` ``[1, 112, T]`` in [0, 1].
        tokenizer / max_length: ``minilm`` (default, matches TransformerTextEncoder's default
            vocabulary), ``byte``, a local tokenizer folder or a Hub id; ids padded to ``max_length``.
        streaming: read rows lazily (``datasets`` IterableDataset), split across DDP ranks (row by
            row: each rank reads every shard) and workers, shuffled with a ``shuffle_buffer``-row
            buffer; needs ``class_names`` or a ClassLabel feature, and the validation/test splits
            as files. Under DDP all ranks stop an epoch when the first runs out of rows, so up to
            a few batches' rows per rank are skipped that epoch (in ``predict`` too).
        cache: keep decoded arrays under ``datamodules.paths.cache_dir("hf")``.
        labels_per_class / label_fraction / budget_seed: a label budget on the training rows (one of
            them; ``datamodules.budget``): N rows of every class of ``label``, or a fraction of the
            rows, class-stratified, seeded by ``budget_seed`` (default ``seed``); ``unlabelled_rows``
            holds the others' positions in the whole train split (for label-free pretraining, which
            uses the datamodule without a budget). Not with ``streaming``.
    """

    def __init__(self, path: str, data_files: str | list[str] | dict[str, str | list[str]] | None = None,
                 data_dir: str | None = None, name: str | None = None, columns: dict[str, str] | None = None,
                 kinds: dict[str, str] | None = None, label_column: str = "label",
                 class_names: list[str] | None = None, id_column: str | None = None,
                 label_columns: list[str] | dict[str, str] | None = None,
                 label_class_names: dict[str, list[str]] | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 image_size: int | list[int] = 28, image_channels: int = 1, image_convert: bool = False,
                 augment: bool | list[dict] = False, sample_rate: int = 8000, audio_length: int = 8000,
                 audio_format: str = "waveform", tokenizer: str = "minilm", max_length: int = 64,
                 batch_size: int = 64, num_workers: int = 0, streaming: bool = False, shuffle_buffer: int = 1000,
                 cache: bool = True, labels_per_class: int | None = None, label_fraction: float | None = None,
                 budget_seed: int | None = None) -> None:
        super().__init__()
        check_budget(labels_per_class, label_fraction)
        if streaming and (labels_per_class is not None or label_fraction is not None):
            raise ValueError(f"{DATA}labels_per_class / label_fraction need every training label up front: use "
                             "streaming: false for a label budget")
        check_choice("audio_format", audio_format, ("waveform", "spectrogram"), prefix=DATA)
        check_value("image_channels", image_channels, image_channels in (1, 3), "1 (grey) or 3 (RGB)", prefix=DATA)
        for key, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_real(key, v, 0.0, 1.0, high_open=True, prefix=DATA)
        for m, k in (kinds or {}).items():
            check_choice(f"kinds.{m}", k, KINDS, prefix=DATA)
        self.label_columns = _label_columns(label_columns, label_class_names)
        self.save_hyperparameters()
        size = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        self.image_size = (int(size[0]), int(size[1]))
        self.class_names: list[str] = list(class_names) if class_names else []
        self.columns: dict[str, str] = dict(columns or {})
        self.kinds: dict[str, str] = {}
        self.modalities: tuple[str, ...] = ()
        self.streams: dict[str, StreamingSet] = {}
        self.unlabelled_rows: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self.extra_class_names: dict[str, list[str]] = {k: list(v) for k, v in (label_class_names or {}).items()}

    @property
    def label_keys(self) -> tuple[str, ...]:
        """The batch keys holding a label: ``label`` and one per ``label_columns`` entry."""
        return ("label", *self.label_columns)

    @property
    def label_classes(self) -> dict[str, list[str]]:
        """Label key -> class names (after ``setup``)."""
        return {"label": self.class_names, **{k: self.extra_class_names.get(k, []) for k in self.label_columns}}

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    @class_names.setter
    def class_names(self, names: list[str]) -> None:
        self._class_names = list(names)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def id_name(self) -> str | None:
        """The id column, the header of the ids in ``predictions.csv``."""
        return self.hparams.id_column

    # -- loading -------------------------------------------------------------------------------
    def _is_saved_folder(self) -> bool:
        p = Path(self.hparams.path).expanduser()
        return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())

    def _data_files(self) -> dict[str, list[Path]] | None:
        """``data_files`` as ``{split: [absolute paths]}`` (globs expanded), each checked to exist."""
        files = self.hparams.data_files
        if files is None:
            return None
        if isinstance(files, (str, os.PathLike)):
            files = {"train": [files]}
        elif isinstance(files, (list, tuple)):
            files = {"train": list(files)}
        base = Path(self.hparams.data_dir).expanduser() if self.hparams.data_dir else Path.cwd()
        out: dict[str, list[Path]] = {}
        for split, entries in files.items():
            entries = [entries] if isinstance(entries, (str, os.PathLike)) else list(entries)
            found: list[Path] = []
            for entry in entries:
                if "://" in str(entry):  # hf://, s3://, https://: datasets resolves those itself
                    found.append(entry)
                    continue
                pattern = str(entry) if Path(entry).expanduser().is_absolute() else str(base / entry)
                matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
                if not matches:
                    against = "data_dir" if self.hparams.data_dir else "the working folder"
                    raise FileNotFoundError(f"HFDataModule: data_files[{split!r}]: {str(entry)!r} not found "
                                            f"(looked for {pattern!r}; relative paths are relative to "
                                            f"{against} {str(base)!r})")
                found += [Path(m).resolve() for m in matches]
            out[split] = found
        return out

    def _load(self, streaming: bool = False) -> tuple[dict[str, Any], dict[str, list[tuple[int, Path, Path]]]]:
        """The raw splits, and per split the (first row, manifest folder, manifest file) of each file."""
        import datasets

        hp = self.hparams
        files = self._data_files()
        origins: dict[str, list[tuple[int, Path, Path]]] = {}
        # Local files are converted to Arrow under fusegen's cache; a Hub dataset uses the Hugging Face
        # cache (HF_HOME / HF_DATASETS_CACHE), where a user's earlier downloads already are.
        is_local = hp.path in BUILDERS or Path(hp.path).expanduser().exists()
        hf_cache = str(cache_dir("hf", "datasets")) if is_local else None
        if self._is_saved_folder():
            if streaming:
                raise ValueError("HFDataModule: streaming reads Parquet shards or a Hub dataset, not a save_to_disk "
                                 "folder (that one is memory-mapped already: use streaming: false)")
            loaded = datasets.load_from_disk(str(Path(hp.path).expanduser()))
            folder = Path(hp.path).expanduser().resolve()
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            origins = {s: [(0, folder, folder)] for s in splits}
        elif hp.path == "audiofolder" and not streaming:
            splits = self._audiofolder(files)
            folder = Path(hp.data_dir or ".").expanduser().resolve()
            origins = {s: [(0, folder, folder)] for s in splits}
        elif hp.path in MANIFEST_BUILDERS and files and not streaming and all(
                isinstance(p, Path) for ps in files.values() for p in ps):
            splits = {}
            for split, paths in files.items():
                parts, start = [], 0
                origins[split] = []
                for p in paths:
                    try:
                        part = datasets.load_dataset(hp.path, data_files=str(p), split="train", cache_dir=hf_cache)
                    except Exception as err:  # pyarrow/pandas parse errors: name the file
                        if "corresponds to no data" in str(err):
                            raise DataError(f"HFDataModule: the {split} split is empty: {str(p)!r} has no rows; "
                                            "give it rows or leave it out of data_files") from None
                        raise DataError(f"HFDataModule: could not read {str(p)!r} as {hp.path} "
                                        f"({type(err).__name__}: {err})") from None
                    origins[split].append((start, p.parent, p))
                    start += len(part)
                    parts.append(part)
                splits[split] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(
                    [q.cast(parts[0].features) for q in parts])
        else:
            kw: dict[str, Any] = dict(name=hp.name, data_dir=hp.data_dir, cache_dir=hf_cache, streaming=streaming)
            if files:
                kw["data_files"] = {s: [str(p) for p in ps] for s, ps in files.items()}
            try:
                loaded = datasets.load_dataset(hp.path, **kw)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"HFDataModule: dataset {hp.path!r} not found ({err}). `path` is a builder "
                                        f"({', '.join(BUILDERS)}) with data_files/data_dir, a save_to_disk folder, "
                                        "or a Hub id (needs the network or a cached copy)") from None
            splits = dict(loaded)
            for s in splits:
                ps = [p for p in (files or {}).get(s) or [] if isinstance(p, Path)]
                origin = ps[0] if ps else Path(hp.data_dir or ".").expanduser().resolve()
                origins[s] = [(0, origin.parent if ps else origin, origin)]
        return splits, origins

    def _audiofolder(self, files: dict[str, list[Path]] | None) -> dict[str, Any]:
        """``audiofolder`` read as ``datasets`` lays it out (``[split/]label/clip.wav``) but with the
        audio kept as paths: the ``datasets`` builder encodes audio through torchcodec (FFmpeg)."""
        import datasets

        if files is None:
            if not self.hparams.data_dir:
                raise ValueError("HFDataModule: path: audiofolder needs data_dir (or data_files)")
            root = Path(self.hparams.data_dir).expanduser().resolve()
            clips = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXT)
            files = {}
            for p in clips:
                top = p.relative_to(root).parts[0]
                split = top if top in ("train", "validation", "val", "valid", "dev", "test") and \
                    len(p.relative_to(root).parts) > 2 else "train"
                files.setdefault(split, []).append(p)
        if not any(files.values()):
            raise DataError(f"HFDataModule: no audio files ({', '.join(sorted(AUDIO_EXT))}) under "
                            f"{self.hparams.data_dir!r}")
        names = sorted({p.parent.name for ps in files.values() for p in ps})
        features = datasets.Features({"audio": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
        return {s: datasets.Dataset.from_dict({"audio": [str(p) for p in ps],
                                               "label": [names.index(p.parent.name) for p in ps]}, features=features)
                for s, ps in files.items()}

    def _pick_splits(self, raw: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for ours, names in SPLIT_NAMES.items():
            for n in names:
                if n in raw:
                    out[ours] = (n, raw[n])
                    break
        if "train" not in out:
            if len(raw) == 1:
                name = next(iter(raw))
                out["train"] = (name, raw[name])
            else:
                raise DataError(f"HFDataModule: the dataset has splits {sorted(raw)}, none of them 'train'; "
                                "name the training files `train` in data_files ({train: ..., test: ...})")
        return out

    def _resolve_columns(self, features: Any, available: list[str]) -> None:
        import datasets

        hp = self.hparams
        if not self.columns:
            self.columns = {k: k for k in KINDS if k in available}
            if not self.columns:
                raise DataError(f"HFDataModule: no `columns` given and no column is named image/audio/text; "
                                f"available columns: {available}. Map them: columns: {{image: <col>, ...}}")
        missing = {m: c for m, c in self.columns.items() if c not in available}
        if hp.label_column not in available:
            missing["label_column"] = hp.label_column
        missing.update({f"label_columns.{k}": c for k, c in self.label_columns.items() if c not in available})
        if missing:
            raise DataError(f"HFDataModule: column(s) {missing} not in the dataset; available columns: {available}")
        for m, c in self.columns.items():
            kind = (hp.kinds or {}).get(m) or (m if m in KINDS else None)
            feat = features.get(c) if features is not None else None
            if kind is None:
                if isinstance(feat, datasets.Image):
                    kind = "image"
                elif isinstance(feat, datasets.Audio):
                    kind = "audio"
            self.kinds[m] = kind or "?"
        clash = sorted(set(self.label_columns) & set(self.columns))
        if clash:
            raise DataError(f"HFDataModule: label_columns key(s) {clash} are also modalities in columns "
                            f"{self.columns}; give the labels other batch keys")
        self.modalities = tuple(self.columns)

    def _infer_kinds(self, sample: dict[str, list]) -> None:
        for m, kind in self.kinds.items():
            if kind != "?":
                continue
            values = [v for v in sample[self.columns[m]] if not _is_empty(v)]
            first = values[0] if values else ""
            path = _cell_path(first)
            ext = Path(path).suffix.lower() if path else ""
            if ext in IMAGE_EXT or type(first).__name__.endswith("ImageFile") or type(first).__name__ == "Image":
                self.kinds[m] = "image"
            elif ext in AUDIO_EXT or (isinstance(first, dict) and "array" in first):
                self.kinds[m] = "audio"
            else:
                self.kinds[m] = "text"

    def _undecoded(self, ds: Any) -> Any:
        """Image/Audio features read as ``{"bytes", "path"}`` (decoding audio would need torchcodec)."""
        import datasets

        feats = ds.features or {}
        for c in set(self.columns.values()):
            f = feats.get(c)
            if isinstance(f, datasets.Audio):
                ds = ds.cast_column(c, datasets.Audio(decode=False))
            elif isinstance(f, datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
        return ds

    def _set_class_names(self, features: Any, labels: list[Any]) -> None:
        if not self.class_names:
            self.class_names = _infer_class_names(features, self.hparams.label_column, labels, "label_column")

    # -- preparation ---------------------------------------------------------------------------
    def _preparer(self) -> Preparer:
        hp = self.hparams
        return Preparer(self.kinds, self.image_size, hp.image_channels, hp.image_convert, hp.sample_rate,
                        hp.audio_length, hp.audio_format, hp.tokenizer, hp.max_length)

    def _options(self) -> dict:
        hp = self.hparams
        keep = ("path", "name", "data_dir", "label_column", "id_column", "val_fraction", "test_fraction", "seed",
                "image_channels", "image_convert", "sample_rate", "audio_length", "audio_format", "tokenizer",
                "max_length")
        extra = {"label_columns": self.label_columns, "label_class_names": hp.label_class_names} \
            if self.label_columns else {}  # only when used: caches without them stay valid
        return {**{k: hp[k] for k in keep}, "image_size": self.image_size, "columns": self.columns,
                "kinds": hp.kinds, "class_names": hp.class_names, "version": CACHE_VERSION, **extra}

    def _cache_key(self, files: dict | None, media: list[str]) -> str:
        h = hashlib.sha256(json.dumps(self._options(), sort_keys=True, default=str).encode())
        stats: list[Any] = []
        for split, paths in sorted((files or {}).items()):
            stats += [(split, str(p), p.stat().st_size, p.stat().st_mtime_ns) if isinstance(p, Path) else (split, p)
                      for p in paths]
        if self._is_saved_folder():
            folder = Path(self.hparams.path).expanduser().resolve()
            stats += [(str(p), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted(folder.rglob("*")) if p.is_file()]
        h.update(repr(stats).encode())
        for p in media:  # the referenced images/wavs: editing one rebuilds the cache
            try:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}|missing\n".encode())
        return h.hexdigest()[:20]

    def _decode_split(self, ds: Any, origins: list[tuple[int, Path, Path]], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Decode rows ``rows`` of ``ds`` (paths resolved against each row's manifest folder)."""
        hp = self.hparams
        starts = np.array([o[0] for o in origins])
        prep = self._preparer()
        label = Labeler(self.class_names, hp.label_column)
        extra = {k: Labeler(self.extra_class_names[k], c) for k, c in self.label_columns.items()}
        out: dict[str, list[np.ndarray]] = {}
        for lo in range(0, len(rows), 256):
            chunk = rows[lo:lo + 256]
            part = ds.select(chunk.tolist()).to_dict() if len(chunk) else {c: [] for c in ds.column_names}
            file_of = np.searchsorted(starts, chunk, side="right") - 1
            where = [self._where(origins, r) for r in chunk]
            cells = {}
            for m, c in self.columns.items():
                values = list(part[c])
                if prep.kinds[m] in ("image", "audio"):
                    values = [self._resolve(v, origins[f][1]) for v, f in zip(values, file_of)]
                    for i, v in enumerate(values):
                        p = _cell_path(v)
                        if p is not None and not _is_empty(v) and not os.path.isfile(p):
                            raise DataError(f"HFDataModule: {where[i]}: {m} file not found: {p!r} (column {c!r}; "
                                            "paths in a manifest are relative to the manifest's folder)")
                cells[m] = values
            arrays = prep.rows(cells, where, self.columns)
            arrays["label"] = np.array([label(v, f"HFDataModule: {w}")
                                        for v, w in zip(part[hp.label_column], where)], dtype=np.int64)
            for k, lab in extra.items():
                arrays[EXTRA_LABEL + k] = np.array([lab(v, f"HFDataModule: {w}")
                                                    for v, w in zip(part[lab.column], where)], dtype=np.int64)
            arrays["index"] = np.asarray(chunk, dtype=np.int64)
            if hp.id_column:
                arrays["id"] = np.empty(len(chunk), dtype=object)  # any values, kept as the file holds them
                arrays["id"][:] = [_plain_id(v) for v in part[hp.id_column]]
            for k, v in arrays.items():
                out.setdefault(k, []).append(v)
        joined = {k: np.concatenate(v) for k, v in out.items()}
        if "id" in joined:
            joined["index"] = _index_of_ids(joined["id"].tolist(), joined["index"])
        return joined

    @staticmethod
    def _where(origins: list[tuple[int, Path, Path]], row: int) -> str:
        """``row N of 'file'`` (N counted within that file; CSVs also give the line, header = line 1)."""
        start, _, src = [o for o in origins if o[0] <= row][-1]
        line = f", line {int(row - start) + 2}" if src.suffix.lower() == ".csv" else ""
        return f"row {int(row - start)} of {str(src)!r}{line}"

    @staticmethod
    def _resolve(value: Any, folder: Path) -> Any:
        p = _cell_path(value)
        if p is None or _is_empty(value) or os.path.isabs(p) or "://" in p:
            return value
        full = str(folder / p)
        return full if isinstance(value, str) else {**value, "path": full}

    def _build(self) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
        """Load, check and decode every split; returns the arrays and the metadata."""
        hp = self.hparams
        raw, origins = self._load()
        chosen = self._pick_splits(raw)
        first = chosen["train"][1]
        self._resolve_columns(first.features, list(first.column_names))
        for ours, (name, ds) in chosen.items():
            absent = [c for c in [*self.columns.values(), hp.label_column, *self.label_columns.values()]
                      if c not in ds.column_names]
            if absent:
                raise DataError(f"HFDataModule: split {name!r} lacks column(s) {absent}; "
                                f"its columns: {ds.column_names}")
        chosen = {s: (n, self._undecoded(ds)) for s, (n, ds) in chosen.items()}
        first = chosen["train"][1]
        self._infer_kinds(first.select(range(min(len(first), 32))).to_dict())
        self._set_class_names(first.features, [v for _, ds in chosen.values() for v in ds[hp.label_column]])
        labeler = Labeler(self.class_names, hp.label_column)
        labelers = [labeler]
        for k, c in self.label_columns.items():
            if k not in self.extra_class_names:
                self.extra_class_names[k] = _infer_class_names(first.features, c, [v for _, ds in chosen.values()
                                                                                  for v in ds[c]], f"label_columns.{k}")
            labelers.append(Labeler(self.extra_class_names[k], c))
        for name, ds in chosen.values():  # every label checked before any file is decoded
            for lab in labelers:
                for r, v in enumerate(ds[lab.column]):
                    lab(v, f"HFDataModule: {self._where(origins[name], r)}")
        # Rows of each of our splits: (source split, row numbers).
        plan: dict[str, tuple[str, np.ndarray]] = {s: (s, np.arange(len(chosen[s][1]))) for s in chosen}
        todo = [s for s in ("val", "test") if s not in chosen]
        if todo:
            n = len(first)
            perm = np.random.default_rng(hp.seed).permutation(n)
            cut = 0
            for s in todo:
                k = int(round((hp.val_fraction if s == "val" else hp.test_fraction) * n))
                plan[s] = ("train", np.sort(perm[cut:cut + k]))
                cut += k
            plan["train"] = ("train", np.sort(perm[cut:]))
        for s, (src, rows) in plan.items():
            if len(rows) == 0:
                if s == "train":
                    raise DataError(f"HFDataModule: the train split is empty ({len(first)} rows in "
                                    f"{chosen['train'][0]!r}, after val/test fractions): give it rows")
                frac = "val_fraction" if s == "val" else "test_fraction"
                how = f"{frac} is {hp[frac]}" if src == "train" else f"split {chosen[s][0]!r} has no rows"
                raise DataError(f"HFDataModule: the {s} split is empty ({how}, {len(first)} training rows). Give it "
                                f"rows: a larger {frac}, or a {s} file in data_files")
        arrays = {s: self._decode_split(chosen[src][1], origins[chosen[src][0]], rows)
                  for s, (src, rows) in plan.items()}
        meta = {"class_names": self.class_names, "columns": self.columns, "kinds": self.kinds,
                "label_classes": {k: self.extra_class_names[k] for k in self.label_columns},
                "sizes": {s: int(len(a["label"])) for s, a in arrays.items()}, "id_column": hp.id_column}
        return arrays, meta

    def _media_paths(self) -> tuple[dict | None, list[str]]:
        """The manifest files and the media paths they reference (for the cache key)."""
        files = self._data_files()
        media: list[str] = []
        if self.hparams.path in MANIFEST_BUILDERS and files and self.hparams.path in ("csv", "json"):
            import datasets

            hf_cache = str(cache_dir("hf", "datasets"))
            for paths in files.values():
                for p in paths:
                    try:
                        part = datasets.load_dataset(self.hparams.path, data_files=str(p), split="train",
                                                     cache_dir=hf_cache)
                    except Exception:
                        continue  # _build reports the unreadable file
                    for c in set(self.columns.values() if self.columns else part.column_names) & set(part.column_names):
                        for v in part[c]:
                            if isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXT | AUDIO_EXT:
                                media.append(str(p.parent / v))
        elif self.hparams.path in ("imagefolder", "audiofolder") and self.hparams.data_dir:
            media = sorted(str(p) for p in Path(self.hparams.data_dir).expanduser().rglob("*") if p.is_file())
        return files, media

    def _cached_arrays(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        from safetensors.numpy import save_file

        if not self.hparams.cache:
            arrays, meta = self._build()
            return {s: _to_tensors(a) for s, a in arrays.items()}, meta
        files, media = self._media_paths()
        final = cache_dir("hf") / self._cache_key(files, media)
        self.cache_path = final
        cached = self._read_cache(final)
        if cached is not None:
            return cached
        arrays, meta = self._build()
        # Built in a temporary folder beside the final one and renamed: a failure or a kill mid-way
        # leaves no half-written cache. Each file is written with its size + sha256 manifest
        # (datamodules.cache), so a file damaged later is caught on the next read and rebuilt.
        # A damaged folder gives way; otherwise another process (a DDP rank) that finished first wins.
        with atomic_folder(final, replace=final.exists()) as tmp:
            for s, a in arrays.items():
                tensors = {k: np.ascontiguousarray(v) for k, v in a.items() if k != "id"}
                write_verified(tmp / f"{s}.safetensors", lambda t, x=tensors: save_file(x, str(t)))
                if "id" in a:  # any values (strings too): JSON, not safetensors
                    write_verified(tmp / f"{s}.ids.json", lambda t, ids=a["id"]: t.write_text(json.dumps(ids.tolist())))
            write_verified(tmp / "meta.json", lambda t: t.write_text(json.dumps(meta, indent=2)))
        return {s: _to_tensors(a) for s, a in arrays.items()}, meta

    @staticmethod
    def _read_cache(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
        """The cached arrays and metadata when every file matches its manifest, else ``None``
        (after one warning naming the damaged file; the caller rebuilds the folder)."""
        from safetensors.torch import load_file

        if not folder.exists():
            return None
        path = folder / "meta.json"
        try:
            reason = problem(path)
            if reason is None:
                meta = json.loads(path.read_text())
                splits = list(meta["sizes"])
                files = [folder / f"{s}.safetensors" for s in splits]
                files += [folder / f"{s}.ids.json" for s in splits] if meta.get("id_column") else []
                for path in files:
                    reason = problem(path)
                    if reason is not None:
                        break
                else:
                    arrays = {}
                    for s in splits:
                        path = folder / f"{s}.safetensors"
                        arrays[s] = load_file(str(path))
                        if meta.get("id_column"):
                            path = folder / f"{s}.ids.json"
                            arrays[s]["id"] = json.loads(path.read_text())
                    return arrays, meta
        except Exception as err:  # a file that matches its manifest but does not parse
            reason = f"unreadable ({type(err).__name__}: {str(err)[:200]})"
        repair_warning(path, reason)
        return None

    def _augment(self) -> Any:
        spec = self.hparams.augment
        if not spec:
            return None
        from torchvision.transforms import v2

        if spec is True:
            return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
        return v2.Compose([_import(t["class_path"])(**(t.get("init_args") or {})) for t in spec])

    def prepare_data(self) -> None:
        # Local rank 0 decodes and caches before the other ranks' setup reads the cache.
        if self.hparams.cache and not self.hparams.streaming:
            self._cached_arrays()

    def setup(self, stage: str | None = None) -> None:
        if self.splits or self.streams:
            return
        if self.hparams.streaming:
            self._setup_streaming()
            return
        arrays, meta = self._cached_arrays()
        self.class_names, self.columns, self.kinds = meta["class_names"], meta["columns"], meta["kinds"]
        self.extra_class_names = dict(meta.get("label_classes") or {})
        self.modalities = tuple(self.columns)
        augment = self._augment()
        hp = self.hparams
        if hp.labels_per_class is not None or hp.label_fraction is not None:  # after the cache: it holds every row
            keep, rest = label_budget(arrays["train"]["label"], hp.labels_per_class, hp.label_fraction,
                                      hp.seed if hp.budget_seed is None else hp.budget_seed)
            self.unlabelled_rows = torch.from_numpy(rest)
            arrays["train"] = {k: [v[i] for i in keep.tolist()] if k == "id" else v[torch.from_numpy(keep)]
                               for k, v in arrays["train"].items()}
        self.splits = {s: ArraySet(a, self.kinds, augment if s == "train" else None) for s, a in arrays.items()}
        self._check_against_model()

    def _check_against_model(self) -> None:
        """An encoder that cannot take this data fails here, before training, naming both sides."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        encoders = getattr(module, "encoders", None)
        if encoders is None or not len(self.splits.get("train", [])):
            return
        sample = self.splits["train"].get_batch(torch.arange(min(2, len(self.splits["train"]))))
        for m in self.modalities:
            enc = encoders[m] if m in encoders else None
            if enc is None or not hasattr(enc, "accepts") or enc.accepts(sample[m]):
                continue
            shape = list(sample[m].shape[1:]) if isinstance(sample[m], torch.Tensor) else "token ids"
            fix = ("set the datamodule's image_channels/image_size or the encoder's in_chans"
                   if self.kinds[m] == "image" else "set the datamodule's audio_format/audio_length")
            raise DataError(f"HFDataModule: {m!r} (column {self.columns[m]!r}) gives [B, {', '.join(map(str, shape))}] "
                            f"but the model's {type(enc).__name__} expects {enc.expected_shape()}: {fix}")

    # -- streaming -----------------------------------------------------------------------------
    def _setup_streaming(self) -> None:
        import datasets
        from datasets.distributed import split_dataset_by_node

        hp = self.hparams
        raw, origins = self._load(streaming=True)
        chosen = self._pick_splits(raw)
        first = chosen["train"][1]
        feats = first.features
        available = list(feats) if feats is not None else list(next(iter(first.take(1))).keys())
        self._resolve_columns(feats, available)
        chosen = {s: (n, self._undecoded(ds)) for s, (n, ds) in chosen.items()}
        if "?" in self.kinds.values():
            sample = list(chosen["train"][1].take(32))
            self._infer_kinds({c: [r[c] for r in sample] for c in available})
        label_feat = feats.get(hp.label_column) if feats is not None else None
        if not self.class_names:
            if isinstance(label_feat, datasets.ClassLabel):
                self.class_names = list(label_feat.names)
            else:
                raise DataError("HFDataModule: streaming cannot scan every label to find the classes; give "
                                "class_names: [...] (or use a dataset whose label is a ClassLabel feature)")
        for k, c in self.label_columns.items():
            feat = feats.get(c) if feats is not None else None
            if k not in self.extra_class_names:
                if not isinstance(feat, datasets.ClassLabel):
                    raise DataError(f"HFDataModule: streaming cannot scan every label of column {c!r} to find its "
                                    f"classes; give label_class_names: {{{k}: [...]}} (or use a ClassLabel feature)")
                self.extra_class_names[k] = list(feat.names)
        extra = {k: Labeler(self.extra_class_names[k], c) for k, c in self.label_columns.items()}
        rank, world = self._rank_world()
        augment, prep, labeler = self._augment(), self._preparer(), Labeler(self.class_names, hp.label_column)
        for s, (name, ds) in chosen.items():
            # Row by row ("examples"), not whole shards per rank: shards of 100 and 37 rows would
            # give one rank almost three times the other's rows. Each rank reads every shard.
            ds = split_dataset_by_node(ds, rank=rank, world_size=world, strategy="examples") if world > 1 else ds
            if s == "train":
                ds = ds.shuffle(seed=hp.seed, buffer_size=hp.shuffle_buffer)
            self.streams[s] = StreamingSet(ds, prep, self.columns, labeler, hp.id_column, hp.batch_size,
                                           origins[name][0][1], augment if s == "train" else None, extra)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.hparams.streaming:
            return super()._loader(split, shuffle)
        if not self.streams:
            self.setup()
        if split not in self.streams:
            return []  # no such split in the streamed dataset: Lightning skips the loop
        workers = self.hparams.num_workers
        loader = DataLoader(self.streams[split], batch_size=None, num_workers=workers, collate_fn=collate,
                            persistent_workers=workers > 0)
        trainer = getattr(self, "trainer", None)
        epoch = (lambda: trainer.current_epoch) if trainer is not None else None
        return EvenStream(loader, self.streams[split], shuffle=shuffle, epoch=epoch, group=self._sync_group())

    def _sync_group(self) -> Any:
        """A gloo group over all ranks for ``EvenStream`` (the default one when it is gloo; NCCL
        would need a CUDA tensor per batch); ``None`` outside DDP. Every rank builds its loaders
        in the same order, so the group is created collectively, once."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        if getattr(self, "_group", None) is None:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self._group
