"""One live ``fusegen fit`` per run folder.

Two runs with the same ``--experiment`` would write into one ``checkpoints/`` (``last.ckpt`` and
``last-v1.ckpt``) and a later ``--ckpt_path last`` would resume either. A fit therefore holds
``<run folder>/fusegen.lock`` while it runs: an advisory ``flock`` on the file (released by the
kernel when the process dies, however it dies) and, inside it, the holder's PID, host and start
time, so the refusal can name them. A lock file whose holder is gone is stale: it is taken over
with one warning. Only the launching process (global rank 0) takes the lock; DDP ranks started by
it, by torchrun or by SLURM share the run folder by design.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the PID check alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "fusegen.lock"


class RunFolderBusyError(RuntimeError):
    """Another live process is training into this run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(info: dict[str, Any]) -> str:
    pid, host = info.get("pid", "?"), info.get("host", "?")
    since = info.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(
        since, (int, float)) else ""
    return f"PID {pid} on {host}{when}"


class RunLock:
    """``with RunLock(run_dir):`` — or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be unlinked by a releasing holder between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            info = _read(self.path)
            if not locked or self._held_elsewhere(info):
                os.close(fd)
                raise RunFolderBusyError(
                    f"run folder {self.run_dir} is in use by another fusegen run ({_holder(info)}; lock file "
                    f"{self.path}). Two runs in one folder would mix their checkpoints: wait for that run to "
                    "finish, stop it, or give this run its own folder with --experiment NAME.")
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            if info.get("pid") not in (None, os.getpid()):
                self.took_over = info
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                     "argv": sys.argv[1:]}).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunFolderBusyError(f"could not take the lock {self.path}: it keeps being replaced")

    @staticmethod
    def _flock(fd: int) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # a filesystem without flock support: the PID check decides
            return True
        return True

    @staticmethod
    def _held_elsewhere(info: dict[str, Any]) -> bool:
        """A recorded holder that is still running (where flock could not tell)."""
        pid = info.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        if info.get("host") != socket.gethostname():
            return False  # the flock (shared by NFS servers) is the only evidence across hosts
        return fcntl is None and _pid_alive(pid)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
