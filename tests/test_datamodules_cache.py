"""Cache entries are verified and repaired; cache keys hold exactly the parameters they must;
what is fitted on which split. AV-MNIST's builder is replaced by a tiny deterministic fake
(the real build takes ~15 s and is covered by test_datamodules_avmnist.py)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AVMNISTDataModule, SST2DataModule, TriModalDigitsDataModule, avmnist
from datamodules.cache import CacheRepairWarning, manifest_path, problem

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
N_TRAIN, N_VAL, N_TEST = 100, 20, 30


def fake_build(root, *, audio_length: int, download: bool, skip_bad_files: bool):
    """Small AV-MNIST arrays with the real structure: 6 speakers x 10 digits x 6 takes."""
    g = torch.Generator().manual_seed(audio_length)
    rec = [(d, s, k) for d in range(10) for s in SPEAKERS for k in range(6)]
    train_images = torch.randint(0, 120, (N_TRAIN + N_VAL, 28, 28), generator=g, dtype=torch.uint8)
    train_images[N_TRAIN:] = 250  # val images differ from train: a PCA fitted on them would show it
    waves = torch.randn(len(rec), audio_length, generator=g)
    tensors = {
        "train_images": train_images, "train_labels": torch.arange(N_TRAIN + N_VAL) % 10,
        "test_images": torch.randint(0, 256, (N_TEST, 28, 28), generator=g, dtype=torch.uint8),
        "test_labels": torch.arange(N_TEST) % 10,
        "waveforms": waves, "spectrograms": torch.rand(len(rec), 1, 112, 112, generator=g).half(),
        "rec_digit": torch.tensor([r[0] for r in rec]), "rec_take": torch.tensor([r[2] for r in rec]),
    }
    meta = {"rec_speaker": [r[1] for r in rec], "rec_path": [f"/x/{d}_{s}_{k}.wav" for d, s, k in rec], "bad_files": []}
    return tensors, meta


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return fake_build(*args, **kwargs)

    monkeypatch.setattr(avmnist, "build_avmnist", counting)
    monkeypatch.setattr(avmnist, "NUM_TRAIN", N_TRAIN)
    return calls


def make(tmp_path: Path, **kw) -> AVMNISTDataModule:
    dm = AVMNISTDataModule(root=str(tmp_path / "root"), cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup()
    return dm


def silent(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)
        return fn()


def same_data(a: AVMNISTDataModule, b: AVMNISTDataModule) -> bool:
    return (all(torch.equal(a.arrays[k], b.arrays[k]) for k in a.arrays) and a.meta == b.meta
            and all(torch.equal(a.pca[k], b.pca[k]) for k in a.pca))


@pytest.mark.parametrize("victim", ["arrays.safetensors", "meta.json", "pca"])
def test_truncated_cache_file_warns_rebuilds_and_gives_identical_data(tmp_path, builds, victim) -> None:
    first = silent(lambda: make(tmp_path))
    assert first.cache_hit is False and len(builds) == 1
    assert silent(lambda: make(tmp_path)).cache_hit is True and len(builds) == 1
    folder = first.cache_path.parent
    path = next(folder.glob("pca-*.safetensors")) if victim == "pca" else folder / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(CacheRepairWarning, match=f"cache file {path} is truncated.*rebuilding it"):
        again = make(tmp_path)
    assert same_data(first, again)
    assert len(builds) == (1 if victim == "pca" else 2)  # a PCA file is refitted alone
    assert silent(lambda: make(tmp_path)).cache_hit is True  # repaired for good
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_same_size_corruption_and_missing_manifest_are_caught(tmp_path, builds) -> None:
    first = silent(lambda: make(tmp_path))
    path = first.cache_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the waveforms: safetensors would load it happily
    written = path.stat().st_mtime_ns
    path.write_bytes(bytes(data))
    os.utime(path, ns=(written, written))  # bit rot keeps the mtime: only a full hash sees it
    assert problem(path) is None and "sha256 differs" in problem(path, full_hash=True)
    os.utime(path, ns=(written + 10**9, written + 10**9))  # any rewrite moves the mtime: hashed at load
    with pytest.warns(CacheRepairWarning, match="sha256 differs"):
        assert same_data(first, make(tmp_path))
    manifest_path(path).unlink()  # a run killed after the rename, before the manifest
    with pytest.warns(CacheRepairWarning, match="completion manifest"):
        make(tmp_path)
    assert json.loads(manifest_path(path).read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_key_holds_exactly_the_build_parameters(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "fsdd" / "recordings").mkdir(parents=True)
    (root / "MNIST" / "raw").mkdir(parents=True)
    wav = root / "fsdd" / "recordings" / "0_george_0.wav"
    wav.write_bytes(b"RIFF")
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"gz")

    def key(**kw) -> str:
        return AVMNISTDataModule(**{"root": str(root), **kw}).build_key()

    base = key()
    for changed in ({"audio_length": 4000}, {"skip_bad_files": True}, {"root": str(tmp_path / "other")}):
        assert key(**changed) != base, changed
    unrelated = {"seed": 3, "split": "recording", "batch_size": 7, "num_workers": 2, "reduce_image": False,
                 "image_energy": 0.5, "audio_noise": 0.3, "audio_format": "waveform", "train_limit": 10,
                 "test_speaker": "theo", "val_speaker": "lucas", "missing_prob": 0.2, "download": True}
    for name, value in unrelated.items():
        assert key(**{name: value}) == base, name
    # The tri-modal module reuses AV-MNIST's build: its text options are not part of the key.
    assert TriModalDigitsDataModule(root=str(root), text_noise=0.9, max_length=8).build_key() == base
    wav.write_bytes(b"RIFF, edited")  # edited source data -> rebuilt
    assert key() != base
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"gz, replaced")
    assert len({base, key()}) == 2


def test_pca_file_per_energy_and_fitted_on_train_only(tmp_path, builds) -> None:
    assert AVMNISTDataModule.pca_file_name(0.25) != AVMNISTDataModule.pca_file_name(0.2500001)
    a = make(tmp_path, image_energy=0.25)
    b = make(tmp_path, image_energy=0.6)
    assert len(builds) == 1 and a.pca["components"].shape[0] < b.pca["components"].shape[0]
    assert {p.name for p in a.cache_path.parent.glob("pca-*.safetensors")} == {"pca-0.25.safetensors",
                                                                              "pca-0.6.safetensors"}
    train = a.arrays["train_images"][:N_TRAIN].reshape(N_TRAIN, -1).float() / 255.0
    torch.testing.assert_close(a.pca["mean"], train.mean(0), rtol=0, atol=1e-6)  # not the val/test images
    # Reduced images = the projection onto the components, around the train mean.
    c, m = a.pca["components"], a.pca["mean"]
    for split, images in (("train", a.arrays["train_images"][:N_TRAIN]), ("test", a.arrays["test_images"])):
        x = images.reshape(len(images), -1).float() / 255.0
        torch.testing.assert_close(a.splits[split].image.reshape(len(x), -1), (x - m) @ c.T @ c + m)
    # The components are the top eigenvectors of the train covariance.
    centred = train - train.mean(0)
    top = torch.linalg.eigh((centred.T @ centred).double())[1][:, -1].float()
    assert abs(float(a.pca["components"][0] @ top)) > 0.999


def test_splits_and_missing_splits_order(tmp_path, builds) -> None:
    dm = make(tmp_path)
    speakers = {s: {dm.meta["rec_speaker"][r] for r in d.recording.tolist()} for s, d in dm.splits.items()}
    assert speakers["test"] == {"yweweler"} and "yweweler" not in speakers["train"] | speakers["val"]
    takes = dm.arrays["rec_take"]
    assert (takes[dm.splits["train"].recording] >= 5).all() and (takes[dm.splits["val"].recording] < 5).all()
    assert torch.equal(dm.splits["val"].label, dm.arrays["train_labels"][N_TRAIN:])
    a = make(tmp_path, missing_prob=0.4, missing_splits=["val", "test"])
    b = make(tmp_path, missing_prob=0.4, missing_splits=["test", "val"])
    for split in ("val", "test"):
        assert a.splits[split].present is not None
        assert all(torch.equal(a.splits[split].present[m], b.splits[split].present[m]) for m in ("image", "audio"))
    assert a.splits["train"].present is None  # train untouched when not listed


def test_audio_noise_is_the_same_in_every_epoch_and_split(tmp_path, builds) -> None:
    """audio_noise is documented as part of the data (robustness studies), not a train-time
    augmentation: every split gets it, and a sample's noise never changes between epochs."""
    clean = make(tmp_path, audio_format="waveform")
    noisy = make(tmp_path, audio_format="waveform", audio_noise=0.5)
    for split in ("train", "val", "test"):
        idx = torch.arange(8)
        x, x0 = noisy.splits[split].get_batch(idx)["audio"], clean.splits[split].get_batch(idx)["audio"]
        assert not torch.allclose(x, x0), split
        assert torch.equal(x, noisy.splits[split].get_batch(idx)["audio"]), split  # epoch 2 = epoch 1
    torch.testing.assert_close(clean.splits["val"].get_batch(torch.arange(8))["audio"],
                               clean.bank.waveforms[clean.splits["val"].recording[:8]])


# ----------------------------------------------------------------------------------------------
# SST-2 token cache
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def sst2_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FUSEGEN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "root" / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"movie number {i} \t{i % 2}\n" for i in range(40)))
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    return tmp_path / "root"


def test_sst2_token_cache_truncated_is_rebuilt(sst2_root: Path, tmp_path: Path) -> None:
    first = SST2DataModule(root=str(sst2_root), tokenizer="byte")
    silent(first.setup)
    files = sorted((tmp_path / "cache" / "sst2").glob("*.safetensors"))
    assert len(files) == 2  # train and dev
    victim = first.token_cache_file(sst2_root / "sst2" / "train.tsv", 40)
    assert victim in files
    victim.write_bytes(victim.read_bytes()[:50])
    again = SST2DataModule(root=str(sst2_root), tokenizer="byte")
    with pytest.warns(CacheRepairWarning, match=victim.name):
        again.setup()
    assert torch.equal(again.splits["train"].input_ids, first.splits["train"].input_ids)
    silent(SST2DataModule(root=str(sst2_root), tokenizer="byte").setup)


def test_sst2_token_cache_key(sst2_root: Path) -> None:
    train = sst2_root / "sst2" / "train.tsv"

    def key(n: int = 40, **kw) -> Path:
        return SST2DataModule(root=str(sst2_root), **{"tokenizer": "byte", **kw}).token_cache_file(train, n)

    base = key()
    assert key(max_length=32) != base and key(n=10) != base and key(tokenizer="minilm") != base
    assert key(batch_size=3) == base and key(num_workers=2) == base and key(download=True) == base
    train.write_text(train.read_text() + "one more \t1\n")  # the file changed -> new ids
    assert key() != base
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        SST2DataModule(tokenizer="byte", max_length=2)


def test_standard_normalisation_constants_are_train_statistics(data_root: Path) -> None:
    from datamodules.mnist import MNIST_MEAN, MNIST_STD
    from datamodules.sources import load_mnist

    m = load_mnist(data_root)
    train = m["train_images"].float() / 255.0
    assert abs(train.mean().item() - MNIST_MEAN) < 1e-4 and abs(train.std().item() - MNIST_STD) < 1e-4
    assert abs((m["test_images"].float() / 255.0).mean().item() - MNIST_MEAN) > 1e-3  # test stats would differ
    assert np.isclose(MNIST_MEAN, 0.1307)
