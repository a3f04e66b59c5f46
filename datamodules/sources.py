"""Readers for the raw datasets (MNIST .gz, FSDD wavs, SST-2 TSVs) with clear errors.

The data root may be read-only, so nothing is written there: MNIST's ``.gz`` files are linked
into a writable cache folder where torchvision verifies their MD5 and gunzips them; downloads
(only with ``download=True``) also land in the cache.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.paths import HOW_TO_GET_DATA, cache_dir, resolve_data_root

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def _missing_error(what: str, paths: list[Path]) -> FileNotFoundError:
    listed = "\n  ".join(str(p) for p in paths)
    return FileNotFoundError(
        f"{what}: missing {len(paths)} path(s):\n  {listed}\n{HOW_TO_GET_DATA} "
        "(i.e. set FUSEGEN_DATA, or `download: true` in the data config)."
    )


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------
def load_mnist(root: str | os.PathLike | None = None, download: bool = False) -> dict[str, torch.Tensor]:
    """MNIST as uint8 tensors: ``train_images [60000,28,28]``, ``train_labels``, ``test_*``.

    Read with ``torchvision.datasets.MNIST``. The ``.gz`` files under ``<root>/MNIST/raw`` are
    MD5-checked here (a mismatch names the file), then linked into ``cache_dir("mnist")`` where
    torchvision verifies and gunzips them, so a read-only root works.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    data_root = resolve_data_root(root, must_exist=not download)
    raw = data_root / "MNIST" / "raw"
    plain = [raw / Path(name).stem for name, _ in MNIST.resources]
    work = cache_dir("mnist")
    if all(p.is_file() for p in plain):  # already gunzipped in the root (torchvision verifies nothing more)
        tv_root = data_root
    else:
        gz = [raw / name for name, _ in MNIST.resources]
        missing = [p for p in gz if not p.is_file()]
        if missing and not download:
            raise _missing_error(f"MNIST under data root {str(data_root)!r}", missing)
        if not missing:
            bad = [(p, md5) for p, (_, md5) in zip(gz, MNIST.resources) if not check_integrity(str(p), md5)]
            if bad:
                listed = "; ".join(f"{p} (expected MD5 {md5})" for p, md5 in bad)
                raise ValueError(
                    f"MNIST file(s) corrupt (MD5 mismatch): {listed}. Replace them with the original "
                    f"files, point FUSEGEN_DATA at a good copy, or delete them and use `download: true`."
                )
            _link_into(work / "MNIST" / "raw", gz)
        tv_root = work
    with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress; keep stdout clean
        train = MNIST(str(tv_root), train=True, download=tv_root == work)
        test = MNIST(str(tv_root), train=False, download=False)
    return {"train_images": train.data, "train_labels": train.targets.long(),
            "test_images": test.data, "test_labels": test.targets.long()}


def _link_into(folder: Path, files: list[Path]) -> None:
    """Symlink (or copy) ``files`` into ``folder`` atomically, so concurrent builds do not race."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = folder / src.name
        if dst.is_file() and dst.resolve() == src.resolve():
            continue
        tmp = Path(tempfile.mktemp(dir=folder, prefix=f".{src.name}."))
        try:
            os.symlink(src.resolve(), tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


# ----------------------------------------------------------------------------------------------
# FSDD
# ----------------------------------------------------------------------------------------------
@dataclass
class Recordings:
    """All FSDD recordings, fixed length: ``waveforms [R, L]`` float32 and per-recording metadata."""

    waveforms: torch.Tensor
    digit: torch.Tensor  # int64 [R]
    speaker: list[str]
    index: torch.Tensor  # int64 [R], the take number in the file name
    paths: list[str]
    bad_files: list[str]


def fsdd_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder of FSDD wavs: ``<root>/fsdd/recordings`` (or a download in the cache)."""
    data_root = resolve_data_root(root, must_exist=not download)
    folder = data_root / "fsdd" / "recordings"
    if folder.is_dir() and any(folder.glob("*.wav")):
        return folder
    cached = cache_dir("downloads", "fsdd")
    found = sorted(cached.glob("*/recordings"))
    if found and any(found[0].glob("*.wav")):
        return found[0]
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        with contextlib.redirect_stdout(sys.stderr):
            download_and_extract_archive(FSDD_URL, download_root=str(cached))
        found = sorted(cached.glob("*/recordings"))
        if found:
            return found[0]
    raise _missing_error(f"FSDD recordings (*.wav) under data root {str(data_root)!r}", [folder])


def list_fsdd(folder: Path) -> list[tuple[Path, int, str, int]]:
    """``(path, digit, speaker, take)`` for every ``{digit}_{speaker}_{take}.wav``, sorted."""
    rows = []
    for p in sorted(folder.iterdir()):
        m = FSDD_NAME.match(p.name)
        if m:
            rows.append((p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not rows:
        raise _missing_error(f"FSDD recordings named {{digit}}_{{speaker}}_{{take}}.wav in {folder}", [folder])
    return rows


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-crop or zero-pad (at the end) a 1-D waveform to ``length`` samples."""
    n = wave.shape[-1]
    if n >= length:
        start = (n - length) // 2
        return wave[start:start + length]
    return torch.nn.functional.pad(wave, (0, length - n))


def read_fsdd(
    root: str | os.PathLike | None = None,
    *,
    sample_rate: int = 8000,
    length: int = 8000,
    download: bool = False,
    skip_bad_files: bool = False,
) -> Recordings:
    """Read every FSDD wav with soundfile (mono, resampled with torchaudio where the rate differs),
    fixed to ``length`` samples. Unreadable wavs raise a ValueError naming each one, unless
    ``skip_bad_files`` (then they are skipped with a warning that lists them)."""
    import soundfile as sf
    import torchaudio

    rows = list_fsdd(fsdd_folder(root, download))
    waves, keep, bad = [], [], []
    for row in rows:
        path = row[0]
        try:
            x, sr = sf.read(str(path), dtype="float32", always_2d=True)
            if x.shape[0] == 0:
                raise ValueError("no samples")
        except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / ValueError
            bad.append(f"{path} ({type(err).__name__}: {err})")
            continue
        w = torch.from_numpy(x.mean(axis=1))
        if sr != sample_rate:
            w = torchaudio.functional.resample(w, sr, sample_rate)
        waves.append(fit_length(w, length))
        keep.append(row)
    if bad:
        listed = "\n  ".join(bad)
        if not skip_bad_files:
            raise ValueError(
                f"{len(bad)} unreadable FSDD wav file(s):\n  {listed}\nReplace them (FUSEGEN_DATA or "
                "`download: true`), or pass `skip_bad_files: true` to skip them with a warning."
            )
        warnings.warn(f"skipping {len(bad)} unreadable FSDD wav file(s):\n  {listed}", stacklevel=2)
    return Recordings(
        waveforms=torch.stack(waves),
        digit=torch.tensor([r[1] for r in keep], dtype=torch.long),
        speaker=[r[2] for r in keep],
        index=torch.tensor([r[3] for r in keep], dtype=torch.long),
        paths=[str(r[0]) for r in keep],
        bad_files=bad,
    )


# ----------------------------------------------------------------------------------------------
# SST-2
# ----------------------------------------------------------------------------------------------
def sst2_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    data_root = resolve_data_root(root, must_exist=not download)
    folder = data_root / "sst2"
    need = ["train.tsv", "dev.tsv"]
    if all((folder / n).is_file() for n in need):
        return folder
    cached = cache_dir("downloads", "sst2") / "SST-2"
    if all((cached / n).is_file() for n in need):
        return cached
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        with contextlib.redirect_stdout(sys.stderr):
            download_and_extract_archive(SST2_URL, download_root=str(cached.parent))
        if all((cached / n).is_file() for n in need):
            return cached
    raise _missing_error(f"SST-2 under data root {str(data_root)!r}",
                         [folder / n for n in need if not (folder / n).is_file()])


def read_sst2(path: Path) -> tuple[list[str], np.ndarray]:
    """Sentences and int64 labels of a GLUE SST-2 ``train.tsv`` / ``dev.tsv``."""
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "sentence" not in header or "label" not in header:
            raise ValueError(f"{path}: expected a TSV with a header row holding 'sentence' and 'label', got {header}")
        s_col, l_col = header.index("sentence"), header.index("label")
        for line_no, row in enumerate(reader, start=2):
            try:
                sentences.append(row[s_col].strip())
                labels.append(int(row[l_col]))
            except (IndexError, ValueError) as err:
                raise ValueError(f"{path}, line {line_no}: cannot parse {row!r} ({err})") from err
    return sentences, np.asarray(labels, dtype=np.int64)
