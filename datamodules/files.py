"""Crash-safe file writes, shared by every package: caches, checkpoints, pictures, predictions.

A file is written to a temporary name *in its own folder* (so the final step is a rename on one
filesystem, never a copy across filesystems), flushed and fsync'ed, then renamed over the target.
A reader -- or a run killed half-way -- sees either the old file or the new one, never a torn
one. A failed write removes its temporary file. A write that fails because the disk is full
raises ``NoSpaceError`` naming the file and saying that the previous version of it is kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".fusegen-tmp"
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


class NoSpaceError(OSError):
    """The disk (or the user's quota) filled up while writing a file; the previous file is kept."""


# torch's zip writer reports a short write (ENOSPC inside fwrite) as e.g. "[enforce fail at
# inline_container.cc:672] . unexpected pos 707840 vs 707732" or "PytorchStreamWriter failed writing file".
_SHORT_WRITE = ("unexpected pos", "failed writing file", "file write failed", "No space left on device")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for want of space (ENOSPC/EDQUOT, or torch's short write)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and any(mark in str(err) for mark in _SHORT_WRITE)


def disk_full_error(path: str | os.PathLike, err: BaseException, what: str = "file",
                    previous: str | os.PathLike | None = None) -> NoSpaceError:
    """``NoSpaceError("no space left on device writing <path>; the previous <what> <previous> is kept")``.

    ``previous`` defaults to ``path`` itself when it exists (a rewrite); otherwise the message says
    that nothing was replaced."""
    path = Path(path)
    if previous is None and path.exists():
        previous = path
    kept = (f"the previous {what} {previous} is kept" if previous is not None
            else f"no earlier {what} was replaced")
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on that device now"
    return NoSpaceError(errno.ENOSPC, f"no space left on device writing {path}; {kept} (the unfinished temporary "
                        f"file was removed{free}; {type(err).__name__}: {detail}). Free some space, or point "
                        "the output elsewhere, and run again.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    Use it for writers that want a file name (``torch.save``, ``safetensors.save_file``,
    ``fig.savefig``)::

        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK)
    os.close(fd)
    tmp = Path(name)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)  # again: some writers (safetensors) replace the file with a 0600 one
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err) or isinstance(err, NoSpaceError):
                raise
            tmp.unlink(missing_ok=True)  # give the space back before saying how much is free
            raise disk_full_error(path, err) from err
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    For results made of several files (an extracted archive, a dataset cache): a reader sees the
    whole folder or none of it. ``replace``: an existing ``path`` (a broken earlier copy) gives way;
    otherwise an existing one is kept, as when another process finished the same folder first.
    A failure removes the temporary folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700); give it a plain mkdir's mode
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err) or isinstance(err, NoSpaceError):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_full_error(path, err, what="folder") from err
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old-{os.getpid()}{TMP_MARK}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` by writes that were killed; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.endswith(TMP_MARK) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
