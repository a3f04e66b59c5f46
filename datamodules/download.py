"""Downloads for the public datasets: progress on stderr, checksums, atomic, clear offline errors.

``fetch`` streams a URL to a temp file beside the target (progress lines with bytes/total on
stderr), checks its MD5 / sha256, then renames it into place; a failed or corrupt download
leaves nothing behind. Archives are extracted member by member into a temp folder that is
renamed into place once every file in it has been verified (see ``datamodules.sources``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from datamodules.files import atomic_path

TIMEOUT_S = 30
CHUNK = 1 << 16
PROGRESS_EVERY_S = 2.0


class DataUnavailable(FileNotFoundError):
    """A dataset is neither on disk nor downloadable (offline, URL gone, download refused)."""


class DownloadCorrupt(DataUnavailable):
    """A downloaded file (or a file inside a downloaded archive) failed its checksum."""


def digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def checksum_problem(path: Path, md5: str | None = None, sha256: str | None = None) -> str | None:
    for algorithm, want in (("md5", md5), ("sha256", sha256)):
        if want and digest(path, algorithm) != want:
            return f"{algorithm} {digest(path, algorithm)} != expected {want}"
    return None


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def stream(url: str, out: Path, label: str) -> int:
    """Copy ``url`` to ``out``, printing ``label: done/total MB (p%)`` lines on stderr."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(out, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0)
        done, last = 0, time.monotonic()
        print(f"fusegen: downloading {label} from {url}" + (f" ({_mb(total)})" if total else ""),
              file=sys.stderr, flush=True)
        while block := response.read(CHUNK):
            f.write(block)
            done += len(block)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                share = f" ({100 * done / total:.0f}%)" if total else ""
                print(f"fusegen:   {label}: {_mb(done)}" + (f" / {_mb(total)}" if total else "") + share,
                      file=sys.stderr, flush=True)
    print(f"fusegen:   {label}: {_mb(done)} done", file=sys.stderr, flush=True)
    return done


def offline_message(what: str, failures: list[tuple[str, BaseException]], target: Path, layout: str) -> str:
    tried = "\n".join(f"  {url}: {type(err).__name__}: {getattr(err, 'reason', err)}" for url, err in failures)
    return (
        f"{what} is not on this machine and could not be downloaded:\n{tried}\n"
        f"Fixes, any one of:\n"
        f"  1. run once on a machine that is online (it lands verified in {target.parent}, reused from then on);\n"
        f"  2. set FUSEGEN_DATA (or the datamodule's `root`) to a folder holding {layout};\n"
        f"  3. download the file above by hand and put it at {target} (it is checked, then used)."
    )


def fetch(urls: list[str], target: Path, *, what: str, layout: str, md5: str | None = None,
          sha256: str | None = None) -> Path:
    """Download the first working URL to ``target``, verified; reuse a verified ``target``.

    Raises ``DataUnavailable`` (offline, every mirror failing) with the URLs and fixes, or
    ``DownloadCorrupt`` naming the file when a download does not match its checksum."""
    target = Path(target)
    if target.is_file():
        bad = checksum_problem(target, md5, sha256)
        if bad is None:
            return target
        print(f"fusegen: {target} does not match its checksum ({bad}); downloading it again", file=sys.stderr)
    failures: list[tuple[str, BaseException]] = []
    corrupt: list[str] = []
    for url in urls:
        try:
            with atomic_path(target) as tmp:
                stream(url, tmp, what)
                bad = checksum_problem(tmp, md5, sha256)
                if bad:
                    raise DownloadCorrupt(f"download of {what} from {url} refused: {target.name}: {bad}")
            return target
        except DownloadCorrupt as err:
            corrupt.append(str(err))
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as err:
            failures.append((url, err))
    if corrupt:
        raise DownloadCorrupt("; ".join(corrupt) + ". The server sent something else (a proxy page?) or the file "
                              "changed upstream; nothing was kept. " + offline_message(what, failures, target, layout))
    raise DataUnavailable(offline_message(what, failures, target, layout))
