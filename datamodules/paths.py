"""Where data is read from and where derived arrays are cached.

Data root resolution (first match wins):
  1. the ``root`` argument a datamodule was given,
  2. the ``FUSEGEN_DATA`` environment variable,
  3. ``../shared/data`` next to the repository checkout (this project's machines keep the
     real datasets there), then ``./data``.

The data root may be read-only, so anything derived (unzipped MNIST, built AV-MNIST arrays,
token ids) goes to the cache dir: ``FUSEGEN_CACHE``, else ``~/.cache/fusegen``. Downloads land
in ``<cache>/data`` in the data-root layout, and the readers look there after the data root
(see ``datamodules.sources``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

HOW_TO_GET_DATA = (
    "Set FUSEGEN_DATA (or the datamodule's `root`) to a folder holding the datasets "
    "(MNIST/raw/*.gz in the torchvision layout, fsdd/recordings/*.wav, sst2/*.tsv), "
    "or pass `download: true` on a machine that is online."
)


def default_data_root() -> Path:
    env = os.environ.get("FUSEGEN_DATA")
    if env:
        return Path(env).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return REPO_ROOT / "data"


def resolve_data_root(root: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path:
    """Return the data root as a Path; raise a FileNotFoundError naming it and the fix."""
    path = Path(root).expanduser() if root not in (None, "") else default_data_root()
    if must_exist and not path.is_dir():
        source = "the `root` argument" if root not in (None, "") else (
            "FUSEGEN_DATA" if os.environ.get("FUSEGEN_DATA") else "the default data root"
        )
        raise FileNotFoundError(
            f"Data root {str(path)!r} (from {source}) does not exist. {HOW_TO_GET_DATA}"
        )
    return path


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (FUSEGEN_CACHE or ~/.cache/fusegen), created on demand."""
    base = Path(os.environ.get("FUSEGEN_CACHE") or Path.home() / ".cache" / "fusegen").expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
