"""Readers for the raw datasets (MNIST .gz, FSDD wavs, SST-2 TSVs), their downloads, clear errors.

Where a dataset is looked for, first match wins:

1. the data root (``root`` / ``FUSEGEN_DATA`` / ``../shared/data``, see ``datamodules.paths``),
   in its usual layout: ``MNIST/raw/*.gz``, ``fsdd/recordings/*.wav``, ``sst2/{train,dev}.tsv``;
2. the download root ``$FUSEGEN_CACHE/data`` (same layout), filled by ``download=True``.

Nothing is written into the data root (it may be read-only). Downloads are checksummed:
MNIST's ``.gz`` against torchvision's MD5s, FSDD's 3,000 wavs against one digest of their
sha256 sums (``FSDD_SHA256``), SST-2's TSVs against their sha256 sums (``SST2_SHA256``), all of
the files this project was checked on. A downloaded folder carries a ``COMPLETE.json`` written
last that lists every file's size and sha256; it is re-verified against that list on use, and a
broken copy is re-extracted from its archive (or re-downloaded).

``ensure_datasets()`` is the one call a demo needs: it returns a data root on success and
raises ``DataUnavailable`` (a ``FileNotFoundError``) naming the URLs and the fixes when offline.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from datamodules.cache import CacheRepairWarning, load_or_build, sha256_file
from datamodules.download import (
    DataUnavailable,
    DownloadCorrupt,
    checksum_problem,
    fetch,
)
from datamodules.files import atomic_folder
from datamodules.paths import HOW_TO_GET_DATA, cache_dir, resolve_data_root

__all__ = ["DataUnavailable", "DownloadCorrupt", "download_root", "ensure_datasets", "load_mnist", "read_fsdd",
           "read_sst2", "fsdd_folder", "sst2_folder", "mnist_raw_folder"]

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
# FSDD v1.0.10's recordings as one digest: the sha256 of the sorted lines
# "recordings/<name>.wav\t<sha256 of the file>\n" (shared/data/fsdd/MANIFEST.tsv gives the sums).
FSDD_FILES = 3000
FSDD_SHA256 = "6a1aafacf40d8a7aeda379f079a39ca7e165fe03f4ed5d63a2ab25f3a8420685"
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_SHA256 = {
    "train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
}
# torchvision's mirrors and MD5s (torchvision.datasets.MNIST); None = read them from torchvision.
MNIST_MIRRORS: list[str] | None = None
MNIST_RESOURCES: list[tuple[str, str]] | None = None
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
COMPLETE = "COMPLETE.json"


def download_root() -> Path:
    """Where downloaded datasets live, in the data-root layout: ``$FUSEGEN_CACHE/data``."""
    return cache_dir("data")


def _missing_error(what: str, paths: list[Path], data_root: Path | None = None) -> DataUnavailable:
    listed = "\n  ".join(str(p) for p in paths)
    gone = f"Data root {str(data_root)!r} does not exist. " if data_root is not None and not data_root.is_dir() else ""
    return DataUnavailable(
        f"{what}: missing {len(paths)} path(s):\n  {listed}\n{gone}{HOW_TO_GET_DATA} "
        "(i.e. set FUSEGEN_DATA, or `download: true` in the data config)."
    )


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------
def mnist_sources() -> tuple[list[str], list[tuple[str, str]]]:
    """(mirror URLs, [(file name, md5)]) as torchvision lists them."""
    if MNIST_MIRRORS is not None and MNIST_RESOURCES is not None:
        return list(MNIST_MIRRORS), list(MNIST_RESOURCES)
    from torchvision.datasets import MNIST

    return list(MNIST_MIRRORS or MNIST.mirrors), list(MNIST_RESOURCES or MNIST.resources)


def _md5_ok(path: Path, md5: str) -> bool:
    return checksum_problem(path, md5=md5) is None


def mnist_raw_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding MNIST's four MD5-verified ``.gz`` files (data root, else the download root)."""
    mirrors, resources = mnist_sources()
    data_root = resolve_data_root(root, must_exist=False)
    raw = data_root / "MNIST" / "raw"
    gz = [raw / name for name, _ in resources]
    if all(p.is_file() for p in gz):
        bad = [(p, md5) for p, (_, md5) in zip(gz, resources) if not _md5_ok(p, md5)]
        if bad:
            listed = "; ".join(f"{p} (expected MD5 {md5})" for p, md5 in bad)
            raise ValueError(
                f"MNIST file(s) corrupt (MD5 mismatch): {listed}. Replace them with the original "
                f"files, point FUSEGEN_DATA at a good copy, or delete them and use `download: true`."
            )
        return raw
    cached = download_root() / "MNIST" / "raw"
    if all((cached / n).is_file() and _md5_ok(cached / n, md5) for n, md5 in resources):
        return cached
    if not download:
        raise _missing_error(f"MNIST under data root {str(data_root)!r}", [p for p in gz if not p.is_file()], data_root)
    for name, md5 in resources:
        fetch([m + name for m in mirrors], cached / name, what=f"MNIST {name}", md5=md5,
              layout="MNIST/raw/*.gz (torchvision layout)")
    return cached


def parse_idx(data: bytes, source: Path) -> torch.Tensor:
    """An IDX file (MNIST's format) as a uint8 tensor; a size mismatch names ``source``."""
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{source}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{source}: {len(data) - offset} bytes of data for shape {dims}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy())


def load_mnist(root: str | os.PathLike | None = None, download: bool = False) -> dict[str, torch.Tensor]:
    """MNIST as uint8 tensors: ``train_images [60000,28,28]``, ``train_labels``, ``test_*``.

    The ``.gz`` files are MD5-checked (a mismatch names the file) and gunzipped once into
    ``cache_dir("mnist", "MNIST", "raw")`` as verified cache files (a truncated one is rebuilt
    with a warning); files already gunzipped in the data root are read as they are."""
    _, resources = mnist_sources()
    names = [Path(n).stem for n, _ in resources]  # train-images-idx3-ubyte, ...
    data_root = resolve_data_root(root, must_exist=False)
    plain = [data_root / "MNIST" / "raw" / n for n in names]
    if all(p.is_file() for p in plain):
        arrays = [parse_idx(p.read_bytes(), p) for p in plain]
    else:
        raw = mnist_raw_folder(root, download)
        work = cache_dir("mnist", "MNIST", "raw")
        arrays = []
        for (gz_name, _), name in zip(resources, names):
            out = work / name

            def read(path: Path) -> torch.Tensor:
                return parse_idx(path.read_bytes(), path)

            def build(src: Path = raw / gz_name, out: Path = out) -> torch.Tensor:
                with gzip.open(src, "rb") as f:
                    return parse_idx(f.read(), src)

            arrays.append(load_or_build(out, read, build, save=_save_idx)[0])
    by_name = dict(zip(names, arrays))
    return {"train_images": by_name["train-images-idx3-ubyte"],
            "train_labels": by_name["train-labels-idx1-ubyte"].long(),
            "test_images": by_name["t10k-images-idx3-ubyte"],
            "test_labels": by_name["t10k-labels-idx1-ubyte"].long()}


def _save_idx(array: torch.Tensor, path: Path) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.numpy().tobytes())


# ----------------------------------------------------------------------------------------------
# Archives (FSDD tarball, SST-2 zip): extract into a temp folder, verify every file, rename
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    name: str  # dataset folder under the download root ("fsdd", "sst2")
    url: str
    file_name: str  # the archive's name in cache_dir("downloads")
    member: Callable[[str], str | None]  # archive member name -> path inside the dataset folder (or skip)
    verify: Callable[[dict[str, str]], list[str]]  # {path: sha256} extracted -> problems (none: trusted)
    layout: str


def _fsdd_member(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) >= 2 and parts[-2] == "recordings" and FSDD_NAME.match(parts[-1]):
        return f"recordings/{parts[-1]}"
    return None


def _sst2_member(name: str) -> str | None:
    parts = name.split("/")
    return parts[-1] if len(parts) == 2 and parts[0] == "SST-2" and parts[1].endswith(".tsv") else None


def files_digest(sums: dict[str, str]) -> str:
    """One sha256 for a set of files: of the sorted ``"<path>\t<sha256>\n"`` lines."""
    return hashlib.sha256("".join(f"{rel}\t{sums[rel]}\n" for rel in sorted(sums)).encode()).hexdigest()


def _verify_fsdd(sums: dict[str, str]) -> list[str]:
    recordings = {rel: sha for rel, sha in sums.items() if rel.startswith("recordings/")}
    if len(recordings) != FSDD_FILES:
        return [f"{len(recordings):,} recordings, expected {FSDD_FILES:,}"]
    if files_digest(recordings) != FSDD_SHA256:
        return [f"the recordings' sha256 digest differs from FSDD v1.0.10's ({FSDD_SHA256[:12]}...)"]
    return []


def _verify_sst2(sums: dict[str, str]) -> list[str]:
    return [f"{name} ({'missing' if name not in sums else f'sha256 differs from the expected {sha[:12]}...'})"
            for name, sha in SST2_SHA256.items() if sums.get(name) != sha]


def archives() -> dict[str, Archive]:
    # Built on call so tests (and users behind a mirror) can monkeypatch the URL constants.
    return {
        "fsdd": Archive("fsdd", FSDD_URL, "free-spoken-digit-dataset-v1.0.10.tar.gz", _fsdd_member,
                        _verify_fsdd, "fsdd/recordings/{digit}_{speaker}_{take}.wav"),
        "sst2": Archive("sst2", SST2_URL, "SST-2.zip", _sst2_member, _verify_sst2,
                        "sst2/train.tsv and sst2/dev.tsv (GLUE SST-2)"),
    }


def _file_problems(folder: Path, checksums: dict[str, tuple[int | None, str]], full_hash: bool) -> list[str]:
    bad = []
    for rel, (size, sha) in checksums.items():
        p = folder / rel
        if not p.is_file():
            bad.append(f"{p} (missing)")
        elif size is not None and p.stat().st_size != size:
            bad.append(f"{p} ({p.stat().st_size:,} bytes, expected {size:,})")
        elif full_hash and sha256_file(p) != sha:
            bad.append(f"{p} (sha256 differs from the expected {sha[:12]}...)")
    return bad


def _recorded_files(folder: Path) -> dict[str, tuple[int | None, str]] | None:
    """The file list ``COMPLETE.json`` recorded at extraction (None: no usable marker)."""
    try:
        files = json.loads((folder / COMPLETE).read_text())["files"]
        return {rel: (int(size), sha) for rel, (size, sha) in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def downloaded_problem(spec: Archive, full_hash: bool = True) -> str | None:
    """Why the downloaded copy of ``spec`` cannot be used (None: complete and verified)."""
    folder = download_root() / spec.name
    if not folder.is_dir():
        return "missing"
    files = _recorded_files(folder)
    if files is None:
        return f"{folder} has no readable {COMPLETE} marker (an extraction was interrupted)"
    bad = _file_problems(folder, files, full_hash)
    if bad:
        return f"{bad[0]}" + (f" and {len(bad) - 1} more file(s)" if len(bad) > 1 else "")
    return None


def _extract(spec: Archive, archive: Path) -> Path:
    """Extract the wanted members of ``archive`` into a temp folder, verify them all, rename."""
    final = download_root() / spec.name
    with atomic_folder(final) as tmp:
        written: dict[str, tuple[int, str]] = {}

        def write(rel: str, data: bytes) -> None:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            written[rel] = (len(data), hashlib.sha256(data).hexdigest())

        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    rel = spec.member(info.filename)
                    if rel and not info.is_dir():
                        write(rel, z.read(info))
        else:
            with tarfile.open(archive) as t:
                for m in t:
                    rel = spec.member(m.name) if m.isfile() else None
                    if rel:
                        write(rel, t.extractfile(m).read())
        bad = spec.verify({rel: sha for rel, (_, sha) in written.items()})
        if bad:
            archive.unlink(missing_ok=True)  # a rerun downloads it again
            shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise DownloadCorrupt(
                f"{spec.name}: the archive {archive} (from {spec.url}) does not hold the expected files; refused "
                f"and deleted, nothing was kept:\n  {shown}\nRerun to download it again, or point FUSEGEN_DATA at "
                f"a folder holding {spec.layout}."
            )
        # written last; later uses re-verify the copy against this list
        (tmp / COMPLETE).write_text(json.dumps({"url": spec.url, "files": written}))
    return final


def ensure_downloaded(spec: Archive, download: bool) -> Path | None:
    """The verified download-root folder of ``spec``: reused, repaired from the archive, or
    fetched (``download``); None when absent and not to be downloaded."""
    reason = downloaded_problem(spec)
    if reason is None:
        return download_root() / spec.name
    archive = cache_dir("downloads") / spec.file_name
    if reason != "missing":
        warnings.warn(f"downloaded {spec.name} is broken: {reason}; re-extracting it", CacheRepairWarning,
                      stacklevel=3)
    if not archive.is_file():
        if not download:
            return None
        fetch([spec.url], archive, what=spec.name, layout=spec.layout)
    return _extract(spec, archive)


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


def find_fsdd_folder(root: str | os.PathLike | None = None) -> Path | None:
    """The wav folder in use, without verifying or downloading anything (for cache keys)."""
    folder = resolve_data_root(root, must_exist=False) / "fsdd" / "recordings"
    if folder.is_dir() and any(folder.glob("*.wav")):
        return folder
    dl = download_root() / "fsdd"
    return dl / "recordings" if (dl / COMPLETE).is_file() else None


def fsdd_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder of FSDD wavs: ``<root>/fsdd/recordings``, else the verified download."""
    data_root = resolve_data_root(root, must_exist=False)
    folder = data_root / "fsdd" / "recordings"
    if folder.is_dir() and any(folder.glob("*.wav")):
        return folder
    found = ensure_downloaded(archives()["fsdd"], download)
    if found is not None:
        return found / "recordings"
    raise _missing_error(f"FSDD recordings (*.wav) under data root {str(data_root)!r}", [folder], data_root)


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
    """The folder holding SST-2's ``train.tsv`` and ``dev.tsv``: the data root's, else the verified download."""
    data_root = resolve_data_root(root, must_exist=False)
    folder = data_root / "sst2"
    need = ["train.tsv", "dev.tsv"]
    if all((folder / n).is_file() for n in need):
        return folder
    found = ensure_downloaded(archives()["sst2"], download)
    if found is not None:
        return found
    raise _missing_error(f"SST-2 under data root {str(data_root)!r}",
                         [folder / n for n in need if not (folder / n).is_file()], data_root)


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


# ----------------------------------------------------------------------------------------------
# All at once (the demo's entry point)
# ----------------------------------------------------------------------------------------------
DATASETS = ("mnist", "fsdd", "sst2")


def ensure_datasets(root: str | os.PathLike | None = None, download: bool = True,
                    datasets: tuple[str, ...] | list[str] = DATASETS) -> Path:
    """Make sure ``datasets`` are readable, downloading what is missing (verified) when ``download``.

    Returns the data root to pass to the datamodules (the datamodules also find the download
    root on their own). Raises ``DataUnavailable`` -- a ``FileNotFoundError`` -- naming the URL
    and the fixes when something is missing and cannot be fetched (offline)."""
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"ensure_datasets: unknown dataset(s) {sorted(unknown)}; choose from {list(DATASETS)}")
    data_root = resolve_data_root(root, must_exist=False)
    where = {}
    if "mnist" in datasets:
        where["mnist"] = mnist_raw_folder(root, download).parents[1]
    if "fsdd" in datasets:
        where["fsdd"] = fsdd_folder(root, download).parents[1]
    if "sst2" in datasets:
        where["sst2"] = sst2_folder(root, download).parent
    roots = set(where.values())
    return roots.pop() if len(roots) == 1 else data_root
