"""Bad input: missing root / files, corrupt MNIST .gz, unreadable wav, read-only root."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from datamodules import AVMNISTDataModule, FSDDDataModule, MNISTDataModule, SST2DataModule


def _fake_root(tmp_path: Path, data_root: Path, *, fsdd: bool = True) -> Path:
    """A writable root whose files link to the real data (so they can be corrupted one by one)."""
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in (data_root / "MNIST" / "raw").glob("*.gz"):
        (root / "MNIST" / "raw" / f.name).symlink_to(f)
    if fsdd:
        (root / "fsdd" / "recordings").mkdir(parents=True)
        for f in (data_root / "fsdd" / "recordings").glob("*.wav"):
            (root / "fsdd" / "recordings" / f.name).symlink_to(f)
    return root


def test_missing_root_names_path_env_and_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for make in (lambda: AVMNISTDataModule(root=str(missing)), lambda: MNISTDataModule(root=str(missing)),
                 lambda: FSDDDataModule(root=str(missing)),
                 lambda: SST2DataModule(root=str(missing), tokenizer="byte")):
        with pytest.raises(FileNotFoundError) as err:
            make().setup()
        msg = str(err.value)
        assert str(missing) in msg and "FUSEGEN_DATA" in msg and "download: true" in msg


def test_missing_files_are_each_named(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        MNISTDataModule(root=str(root)).setup()
    msg = str(err.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert str(root / "MNIST" / "raw" / name) in msg
    assert "FUSEGEN_DATA" in msg and "download: true" in msg
    with pytest.raises(FileNotFoundError, match="fsdd"):
        FSDDDataModule(root=str(root)).setup()
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        SST2DataModule(root=str(root), tokenizer="byte").setup()


def test_corrupt_mnist_gz_is_named(tmp_path: Path, data_root: Path) -> None:
    root = _fake_root(tmp_path, data_root, fsdd=False)
    bad = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    bad.unlink()
    bad.write_bytes(b"not a gzip file")
    with pytest.raises(ValueError) as err:
        MNISTDataModule(root=str(root)).setup()
    assert str(bad) in str(err.value) and "MD5" in str(err.value)
    assert "train-images" not in str(err.value)  # only the bad file is blamed


def test_unreadable_wav_fails_unless_skipped(tmp_path: Path, data_root: Path) -> None:
    root = _fake_root(tmp_path, data_root)
    bad = root / "fsdd" / "recordings" / "3_theo_7.wav"
    bad.unlink()
    bad.write_bytes(b"RIFF....garbage")
    with pytest.raises(ValueError) as err:
        FSDDDataModule(root=str(root)).setup()
    assert str(bad) in str(err.value) and "skip_bad_files" in str(err.value)
    dm = FSDDDataModule(root=str(root), skip_bad_files=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    assert any(str(bad) in str(w.message) for w in caught)
    assert sum(len(d) for d in dm.splits.values()) == 2999
    assert all(str(bad) not in p for ps in dm.paths.values() for p in ps)


def test_read_only_root_is_never_written(data_root: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (data_root / "MNIST" / "raw").iterdir()}
    MNISTDataModule(root=str(data_root)).setup()
    after = {p: p.stat().st_mtime_ns for p in (data_root / "MNIST" / "raw").iterdir()}
    assert before == after
    if not (data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():  # gunzipped in the cache instead
        assert Path(os.environ["FUSEGEN_CACHE"], "mnist", "MNIST", "raw", "train-images-idx3-ubyte").is_file()


def test_bad_arguments_are_named(data_root: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        AVMNISTDataModule(split="random")
    with pytest.raises(ValueError, match="audio_format"):
        FSDDDataModule(audio_format="mfcc")
    with pytest.raises(ValueError, match="test_speaker 'nobody'"):
        FSDDDataModule(root=str(data_root), test_speaker="nobody").setup()
