"""Downloads on a fresh machine, without the network: tiny fake archives served from a loopback
HTTP server, checked against monkeypatched checksums. Verified landing, progress on stderr,
refused corrupt downloads, the offline error, and repair of a broken downloaded copy."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules import FSDDDataModule, MNISTDataModule, SST2DataModule, download, sources
from datamodules.cache import CacheRepairWarning
from datamodules.download import DataUnavailable, DownloadCorrupt

SPEAKERS = ("alice", "bob")
TAKES = (0, 5, 6, 7)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache (so nothing downloaded by another test is found) and a data root that does not exist."""
    monkeypatch.setenv("FUSEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FUSEGEN_DATA", str(tmp_path / "no-data-here"))
    return tmp_path / "cache"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"  # nothing listens there once the socket is closed


def wav_bytes(digit: int, speaker: int, take: int) -> bytes:
    t = np.arange(400) / 8000
    wave = 0.3 * np.sin(2 * np.pi * (300 + 100 * digit + 37 * speaker) * t + take)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def fake_fsdd_files() -> dict[str, bytes]:
    return {f"recordings/{d}_{s}_{k}.wav": wav_bytes(d, j, k) for d in range(10) for j, s in enumerate(SPEAKERS)
            for k in TAKES}


def digest_of(files: dict[str, bytes]) -> str:
    return sources.files_digest({rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()})


def write_tarball(path: Path, files: dict[str, bytes], top: str = "free-spoken-digit-dataset-1.0.10") -> None:
    with tarfile.open(path, "w:gz") as t:
        for rel, data in {"README.md": b"fake", **files}.items():
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def serve_fsdd(monkeypatch, www: Path, base: str, files: dict[str, bytes], expected: str | None = None) -> None:
    write_tarball(www / "v1.0.10.tar.gz", files)
    monkeypatch.setattr(sources, "FSDD_URL", f"{base}/v1.0.10.tar.gz")
    monkeypatch.setattr(sources, "FSDD_FILES", len(files))
    monkeypatch.setattr(sources, "FSDD_SHA256", digest_of(files) if expected is None else expected)


def test_fsdd_download_lands_verified_with_progress(cache, server, monkeypatch, capsys) -> None:
    www, base = server
    files = fake_fsdd_files()
    serve_fsdd(monkeypatch, www, base, files)
    monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)  # a progress line per chunk
    size = (www / "v1.0.10.tar.gz").stat().st_size
    dm = FSDDDataModule(download=True, split="recording", audio_format="waveform", batch_size=8)
    dm.prepare_data()
    dm.setup()
    err = capsys.readouterr().err
    assert f"downloading fsdd from {base}/v1.0.10.tar.gz ({size / 1e3:.1f} kB)" in err
    assert f"fsdd: {size / 1e3:.1f} kB / {size / 1e3:.1f} kB (100%)" in err and " done" in err
    folder = cache / "data" / "fsdd"
    assert (folder / "COMPLETE.json").is_file()
    assert sorted(p.name for p in (folder / "recordings").iterdir()) == sorted(Path(r).name for r in files)
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    # Labels are the digits in the file names; takes 0-4 are test (FSDD's official split).
    assert sum(len(d) for d in dm.splits.values()) == len(files)
    for split, paths in dm.paths.items():
        assert dm.splits[split].label.tolist() == [int(Path(p).name[0]) for p in paths]
    assert all(Path(p).stem.endswith("_0") for p in dm.paths["test"])
    # Relabelled by speaker: classes are the speakers found in the file names.
    by_speaker = FSDDDataModule(label="speaker", split="recording", audio_format="waveform")
    by_speaker.setup()
    assert by_speaker.class_names == ["alice", "bob"] and by_speaker.num_classes == 2
    for split, paths in by_speaker.paths.items():
        names = [by_speaker.class_names[y] for y in by_speaker.splits[split].label.tolist()]
        assert names == [Path(p).stem.split("_")[1] for p in paths] and set(names) == {"alice", "bob"}


def test_corrupt_download_is_refused_naming_the_archive(cache, server, monkeypatch) -> None:
    www, base = server
    files = fake_fsdd_files()
    expected = digest_of(files)
    files["recordings/3_bob_6.wav"] = files["recordings/3_bob_6.wav"][:-10] + b"\x00" * 10  # same size, other bytes
    serve_fsdd(monkeypatch, www, base, files, expected)
    with pytest.raises(DownloadCorrupt) as err:
        FSDDDataModule(download=True, split="recording").setup()
    msg = str(err.value)
    assert "v1.0.10.tar.gz" in msg and "sha256 digest differs" in msg
    assert not (cache / "data" / "fsdd").exists()  # nothing half-verified is kept ...
    assert not list((cache / "downloads").glob("*.tar.gz"))  # ... and the bad archive is gone, so a rerun refetches
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".")]


def test_offline_error_names_url_and_fixes(cache, monkeypatch) -> None:
    url = closed_port_url("v1.0.10.tar.gz")
    monkeypatch.setattr(sources, "FSDD_URL", url)
    with pytest.raises(DataUnavailable) as err:
        FSDDDataModule(download=True).setup()
    assert isinstance(err.value, FileNotFoundError)  # callers catching FileNotFoundError keep working
    msg = str(err.value)
    assert url in msg and "FUSEGEN_DATA" in msg and "online" in msg
    assert str(cache / "downloads" / "free-spoken-digit-dataset-v1.0.10.tar.gz") in msg  # where a manual copy goes
    assert len(msg.splitlines()) <= 12  # one screen
    with pytest.raises(DataUnavailable, match="download: true"):  # without download: the usual missing-data error
        FSDDDataModule().setup()


def test_broken_downloaded_copy_is_repaired_from_the_archive(cache, server, monkeypatch) -> None:
    www, base = server
    files = fake_fsdd_files()
    serve_fsdd(monkeypatch, www, base, files)
    sources.fsdd_folder(download=True)
    monkeypatch.setattr(sources, "FSDD_URL", closed_port_url("gone.tar.gz"))  # repair must not need the network
    victim = cache / "data" / "fsdd" / "recordings" / "7_alice_5.wav"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(CacheRepairWarning, match="7_alice_5.wav"):
        folder = sources.fsdd_folder()
    assert (folder / "7_alice_5.wav").read_bytes() == files["recordings/7_alice_5.wav"]
    (cache / "data" / "fsdd" / "COMPLETE.json").unlink()  # an interrupted extraction
    with pytest.warns(CacheRepairWarning, match="COMPLETE.json"):
        sources.fsdd_folder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sources.fsdd_folder()  # verified copy: silent


# ----------------------------------------------------------------------------------------------
# MNIST (torchvision's mirrors and MD5s, monkeypatched) and SST-2 (GLUE zip)
# ----------------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
            "train-labels-idx1-ubyte": np.arange(30) % 10,
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
            "t10k-labels-idx1-ubyte": np.arange(10)}


def serve_mnist(monkeypatch, folder: Path, base: str, corrupt: str | None = None) -> dict[str, np.ndarray]:
    arrays, resources = fake_mnist(), []
    for name, array in arrays.items():
        data = gzip.compress(idx_bytes(array), mtime=0)
        resources.append((name + ".gz", hashlib.md5(data).hexdigest()))
        (folder / (name + ".gz")).write_bytes(data[:-1] + b"x" if name == corrupt else data)
    monkeypatch.setattr(sources, "MNIST_MIRRORS", [f"{base}/"])
    monkeypatch.setattr(sources, "MNIST_RESOURCES", resources)
    return arrays


def test_mnist_download_and_unzipped_cache_repair(cache, server, monkeypatch) -> None:
    www, base = server
    arrays = serve_mnist(monkeypatch, www, base)
    got = sources.load_mnist(download=True)
    assert torch.equal(got["train_images"], torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)))
    assert got["test_labels"].tolist() == list(range(10))
    assert sorted(p.name for p in (cache / "data" / "MNIST" / "raw").iterdir()) == sorted(a + ".gz" for a in arrays)
    pixels = torch.from_numpy(arrays["train-images-idx3-ubyte"][:5].astype(np.float32)).unsqueeze(1) / 255.0
    for normalize, want in (("tanh", pixels * 2 - 1), ("standard", (pixels - 0.1307) / 0.3081)):
        dm = MNISTDataModule(normalize=normalize)
        dm.setup()
        torch.testing.assert_close(dm.splits["train"].get_batch(torch.arange(5))["image"], want)
    # A truncated gunzipped file in the cache is rebuilt (from the verified .gz, no network), same data.
    monkeypatch.setattr(sources, "MNIST_MIRRORS", [closed_port_url("")])
    unzipped = cache / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    unzipped.write_bytes(unzipped.read_bytes()[:5000])
    with pytest.warns(CacheRepairWarning, match="train-images-idx3-ubyte is truncated"):
        again = sources.load_mnist()
    assert torch.equal(again["train_images"], got["train_images"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sources.load_mnist()


def test_mnist_corrupt_download_is_refused(cache, server, monkeypatch) -> None:
    www, base = server
    serve_mnist(monkeypatch, www, base, corrupt="t10k-labels-idx1-ubyte")
    with pytest.raises(DownloadCorrupt, match="t10k-labels-idx1-ubyte.gz: md5"):
        MNISTDataModule(download=True).setup()
    assert not (cache / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()


SST2_TRAIN = "sentence\tlabel\na fine film \t1\ndull and long \t0\nwonderful \t1\n"
SST2_DEV = "sentence\tlabel\ngreat fun\t1\nawful\t0\n"


def test_sst2_download_and_ensure_datasets(cache, server, monkeypatch) -> None:
    www, base = server
    with zipfile.ZipFile(www / "SST-2.zip", "w") as z:
        z.writestr("SST-2/train.tsv", SST2_TRAIN)
        z.writestr("SST-2/dev.tsv", SST2_DEV)
        z.writestr("SST-2/original/README.txt", "not needed")
    monkeypatch.setattr(sources, "SST2_URL", f"{base}/SST-2.zip")
    monkeypatch.setattr(sources, "SST2_SHA256", {n: hashlib.sha256(t.encode()).hexdigest()
                                                 for n, t in (("train.tsv", SST2_TRAIN), ("dev.tsv", SST2_DEV))})
    serve_fsdd(monkeypatch, www, base, fake_fsdd_files())
    serve_mnist(monkeypatch, www, base)
    root = sources.ensure_datasets()
    assert root == cache / "data"
    assert (root / "sst2" / "COMPLETE.json").is_file() and not (root / "sst2" / "original").exists()
    dm = SST2DataModule(root=str(root), tokenizer="byte")
    dm.setup()
    assert dm.splits["train"].label.tolist() == [1, 0, 1] and dm.splits["val"].sentences == ["great fun", "awful"]
    # Offline afterwards: everything is found in the cache, nothing is fetched.
    for name in ("SST2_URL", "FSDD_URL"):
        monkeypatch.setattr(sources, name, closed_port_url("x.zip"))
    assert sources.ensure_datasets(download=False) == root


def test_ensure_datasets_offline_raises_data_unavailable(cache, monkeypatch) -> None:
    monkeypatch.setattr(sources, "MNIST_MIRRORS", [closed_port_url("")])
    monkeypatch.setattr(sources, "MNIST_RESOURCES", [("train-images-idx3-ubyte.gz", "0" * 32)])
    with pytest.raises(DataUnavailable) as err:
        sources.ensure_datasets()
    assert "MNIST train-images-idx3-ubyte.gz" in str(err.value) and "FUSEGEN_DATA" in str(err.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        sources.ensure_datasets(datasets=["cifar"])


def test_fsdd_digest_matches_the_real_release(data_root: Path) -> None:
    """FSDD_SHA256 is the digest of FSDD v1.0.10's own 3,000 recordings (a download is judged by it)."""
    folder = data_root / "fsdd" / "recordings"
    sums = {f"recordings/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.wav")}
    assert sources._verify_fsdd(sums) == []
    first = sorted(sums)[0]
    assert sources._verify_fsdd({**sums, first: "0" * 64}) and sources._verify_fsdd(dict(list(sums.items())[1:]))
