"""Verified cache files: each cached file carries a manifest, written last, with its size and sha256.

A cached file is trusted only when its manifest ``<name>.manifest.json`` exists and the file
matches it: same size, and either the same modification time as when it was written (the fast
path: a load does not re-hash 200 MB) or, when the file was touched since, the same sha256.
Anything else -- a file truncated by a full disk, a run killed before the manifest
was written, a manifest from an older build -- is rebuilt, with one warning line naming the file.
Files are written through ``datamodules.files.atomic_path`` (temp beside the target, fsync,
rename), and the manifest holds the digest of the bytes that were renamed into place, so two
processes rebuilding the same entry at once still leave a consistent pair.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

from datamodules.files import TMP_MARK, atomic_path, atomic_write_json

T = TypeVar("T")
MANIFEST_SUFFIX = ".manifest.json"


class CacheRepairWarning(UserWarning):
    """A cached file failed verification and is being rebuilt."""


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def problem(path: str | os.PathLike, *, full_hash: bool = False) -> str | None:
    """Why ``path`` cannot be trusted, or None when it matches its manifest.

    The sha256 is compared when ``full_hash`` or when the file's mtime differs from the one
    recorded at write time (any rewrite, partial or not, changes it)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    marker = manifest_path(path)
    if not marker.is_file():
        return "without its completion manifest (a run was killed while writing it?)"
    try:
        want = json.loads(marker.read_text())
        size, digest = int(want["bytes"]), str(want["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"listed in an unreadable manifest {marker.name} ({type(err).__name__})"
    st = path.stat()
    if st.st_size != size:
        return f"truncated or changed ({st.st_size:,} bytes, manifest says {size:,})"
    if (full_hash or st.st_mtime_ns != want.get("mtime_ns")) and sha256_file(path) != digest:
        return "corrupt (sha256 differs from its manifest)"
    return None


def write_verified(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically with ``write(tmp_path)``, then its manifest (last)."""
    path = Path(path)
    manifest_path(path).unlink(missing_ok=True)  # an old manifest must not vouch for the new file
    with atomic_path(path) as tmp:
        write(tmp)
        st = tmp.stat()
        record = {"file": path.name, "bytes": st.st_size, "sha256": sha256_file(tmp), "mtime_ns": st.st_mtime_ns}
    atomic_write_json(manifest_path(path), record)
    return path


def repair_warning(path: Path, reason: str) -> None:
    warnings.warn(f"cache file {path} is {reason}; rebuilding it", CacheRepairWarning, stacklevel=3)


def load_or_build(path: str | os.PathLike, read: Callable[[Path], T], build: Callable[[], T],
                  save: Callable[[T, Path], None]) -> tuple[T, bool]:
    """``(value, cache_hit)``: read a verified ``path``, else build, save (verified) and return it.

    A file that fails verification, or whose reader raises, is rebuilt with a warning naming it."""
    path = Path(path)
    reason = problem(path)
    if reason is None:
        try:
            return read(path), True
        except Exception as err:  # a file that matches its manifest but cannot be parsed: rebuild too
            reason = f"unreadable ({type(err).__name__}: {err})"
    if reason != "missing":
        repair_warning(path, reason)
    value = build()
    write_verified(path, lambda tmp: save(value, tmp))
    return value, False


def remove_old_temp_files(folder: str | os.PathLike, older_than_s: float = 6 * 3600) -> list[Path]:
    """Delete temp files of killed writes in ``folder``; recent ones may belong to a live writer."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for p in folder.iterdir():
        try:
            if p.name.endswith(TMP_MARK) and p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed
