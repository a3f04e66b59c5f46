"""AV-MNIST on the real files: splits, pairing, disjointness, formats, determinism, cache, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AVMNISTDataModule
from datamodules.sources import load_mnist


@pytest.fixture(scope="module")
def dm(data_root: Path) -> AVMNISTDataModule:
    module = AVMNISTDataModule(root=str(data_root))
    module.prepare_data()
    module.setup()
    return module


def _speakers(module: AVMNISTDataModule, split: str) -> set[str]:
    return {module.meta["rec_speaker"][r] for r in module.splits[split].recording.unique().tolist()}


def test_split_sizes_and_label_agreement(dm: AVMNISTDataModule) -> None:
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 55_000, "val": 5_000, "test": 10_000}
    for split, ds in dm.splits.items():
        # The spoken digit of every pair is the image's digit (labels come from MNIST).
        assert torch.equal(dm.arrays["rec_digit"][ds.recording], ds.label), split
        # ... and the recording's file name says the same digit.
        for r, y in zip(ds.recording[:500].tolist(), ds.label[:500].tolist()):
            assert Path(dm.meta["rec_path"][r]).name.startswith(f"{y}_")
    mnist = load_mnist(dm.hparams.root)
    assert torch.equal(dm.splits["test"].label, mnist["test_labels"])
    assert torch.equal(dm.splits["val"].label, mnist["train_labels"][55_000:])


def test_speaker_split_is_speaker_and_recording_disjoint(dm: AVMNISTDataModule) -> None:
    assert _speakers(dm, "test") == {"yweweler"}
    assert "yweweler" not in _speakers(dm, "train") | _speakers(dm, "val")
    recs = {s: set(d.recording.tolist()) for s, d in dm.splits.items()}
    assert not recs["train"] & recs["test"] and not recs["val"] & recs["test"] and not recs["train"] & recs["val"]
    paths = {s: {dm.meta["rec_path"][r] for r in r_set} for s, r_set in recs.items()}
    assert not paths["train"] & paths["test"]
    # Every available recording is used, and about equally often (balanced cycling).
    assert len(recs["test"]) == 500 and len(recs["train"]) == 2250
    counts = torch.bincount(dm.splits["test"].recording, minlength=3000)[sorted(recs["test"])]
    assert counts.max() - counts.min() <= 20


def test_batch_shapes_and_dtypes(dm: AVMNISTDataModule) -> None:
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["audio"].shape == (64, 1, 112, 112) and batch["audio"].dtype == torch.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == torch.int64
    assert set(batch["present"]) == {"image", "audio"}
    assert all(p.dtype == torch.bool and p.all() for p in batch["present"].values())
    assert 0.0 <= batch["audio"].min() and batch["audio"].max() <= 1.0
    assert dm.num_classes == 10 and dm.sample_rate == 8000


def test_pca_keeps_a_quarter_of_the_energy(dm: AVMNISTDataModule) -> None:
    k = dm.pca["components"].shape[0]
    assert 1 <= k <= 20  # 25% of MNIST's variance lives in a handful of components
    train = dm.splits["train"].image.reshape(55_000, -1)
    raw = dm.arrays["train_images"][:55_000].reshape(55_000, -1).float() / 255.0
    centred_raw = raw - raw.mean(0)
    kept = ((train - raw.mean(0)) ** 2).sum() / (centred_raw ** 2).sum()
    assert 0.25 <= kept.item() < 0.40
    # Reduced images live in a k-dimensional affine subspace.
    sv = torch.linalg.svdvals(train[:2000] - dm.pca["mean"])
    assert (sv[k:] < 1e-3 * sv[0]).all()


def test_cache_hit_and_determinism(dm: AVMNISTDataModule, data_root: Path) -> None:
    again = AVMNISTDataModule(root=str(data_root))
    again.setup()
    assert again.cache_hit is True and again.cache_path == dm.cache_path and dm.cache_path.is_file()
    for split in ("train", "val", "test"):
        assert torch.equal(again.splits[split].recording, dm.splits[split].recording)
    first = [next(iter(m.val_dataloader())) for m in (dm, again)]
    assert torch.equal(first[0]["audio"], first[1]["audio"]) and torch.equal(first[0]["image"], first[1]["image"])
    shuffled = []
    for m in (dm, again):
        torch.manual_seed(123)
        shuffled.append(next(iter(m.train_dataloader())))
    assert torch.equal(shuffled[0]["label"], shuffled[1]["label"])
    assert torch.equal(shuffled[0]["audio"], shuffled[1]["audio"])
    other_seed = AVMNISTDataModule(root=str(data_root), seed=1)
    other_seed.setup()
    assert other_seed.cache_hit is True  # the seed only changes the cheap pairing step
    assert not torch.equal(other_seed.splits["train"].recording, dm.splits["train"].recording)


def test_recording_split_is_fsdds_official_split(data_root: Path) -> None:
    m = AVMNISTDataModule(root=str(data_root), split="recording", reduce_image=False)
    m.setup()
    takes = m.arrays["rec_take"]
    test_recs = m.splits["test"].recording.unique()
    assert (takes[test_recs] < 5).all() and len(test_recs) == 300
    assert (takes[m.splits["train"].recording] >= 10).all()
    assert not set(m.splits["train"].recording.tolist()) & set(test_recs.tolist())
    assert torch.equal(m.arrays["rec_digit"][m.splits["test"].recording], m.splits["test"].label)
    # reduce_image=False gives the plain MNIST pixels in [0, 1].
    mnist = load_mnist(str(data_root))
    assert torch.equal(m.splits["test"].image[:, 0] * 255.0, mnist["test_images"].float())


def test_waveform_mode_with_seeded_noise(data_root: Path, dm: AVMNISTDataModule) -> None:
    m = AVMNISTDataModule(root=str(data_root), audio_format="waveform", audio_noise=0.5, train_limit=256)
    m.setup()
    assert len(m.splits["train"]) == 256
    batch = next(iter(m.val_dataloader()))
    assert batch["audio"].shape == (64, 8000) and batch["audio"].dtype == torch.float32
    ds = m.splits["val"]
    # A sample's noise depends on its index only, not on the batch it is drawn in.
    alone = ds.get_batch(torch.tensor([5]))["audio"][0]
    assert torch.equal(ds.get_batch(torch.tensor([3, 5]))["audio"][1], alone)
    clean = m.bank.waveforms[ds.recording[5]]
    noise_rms = (alone - clean).pow(2).mean().sqrt()
    assert 0.3 * m.bank.rms[ds.recording[5]] < noise_rms < 0.7 * m.bank.rms[ds.recording[5]]
    # Noisy spectrograms are recomputed from the noisy waveform and differ from the clean ones.
    noisy = AVMNISTDataModule(root=str(data_root), audio_noise=0.5)
    noisy.setup()
    spec = noisy.splits["val"].get_batch(torch.arange(4))["audio"]
    assert spec.shape == (4, 1, 112, 112)
    assert not torch.allclose(spec, dm.splits["val"].get_batch(torch.arange(4))["audio"], atol=1e-2)


def test_workers_give_the_same_batches(data_root: Path, dm: AVMNISTDataModule) -> None:
    m = AVMNISTDataModule(root=str(data_root), num_workers=2)
    m.setup()
    got = next(iter(m.val_dataloader()))
    want = next(iter(dm.val_dataloader()))
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["audio"], want["audio"])


def test_export_multibench_layout(dm: AVMNISTDataModule, tmp_path: Path) -> None:
    out = dm.export_multibench(tmp_path / "avmnist", limit=100)
    img, aud = np.load(out / "image" / "train_data.npy"), np.load(out / "audio" / "train_data.npy")
    labels = np.load(out / "train_labels.npy")
    assert img.shape == (200, 784) and aud.shape == (200, 112, 112) and labels.shape == (200,)
    assert img.dtype == np.float32 and aud.dtype == np.float32 and labels.dtype == np.int64
    assert 100.0 < aud.max() <= 255.0 and img.max() > 100.0  # MultiBench divides both by 255
    want = dm.splits["train"].get_batch(torch.arange(100))
    np.testing.assert_allclose(img[:100] / 255.0, want["image"].reshape(100, 784).numpy(), atol=1e-5)
    np.testing.assert_array_equal(labels[100:], dm.splits["val"].label[:100].numpy())
    assert np.load(out / "audio" / "test_data.npy").shape == (100, 112, 112)
    assert np.load(out / "test_labels.npy").shape == (100,)


@pytest.mark.slow
def test_full_export_multibench(dm: AVMNISTDataModule, tmp_path: Path) -> None:
    out = dm.export_multibench(tmp_path / "avmnist")
    assert np.load(out / "image" / "train_data.npy", mmap_mode="r").shape == (60_000, 784)
    assert np.load(out / "audio" / "test_data.npy", mmap_mode="r").shape == (10_000, 112, 112)
    labels = np.load(out / "train_labels.npy")
    np.testing.assert_array_equal(labels[-5000:], dm.splits["val"].label.numpy())


def test_val_speaker_makes_validation_a_second_unseen_voice(data_root: Path) -> None:
    m = AVMNISTDataModule(root=str(data_root), val_speaker="theo", reduce_image=False)
    m.prepare_data()
    m.setup()
    assert _speakers(m, "val") == {"theo"} and _speakers(m, "test") == {"yweweler"}
    assert _speakers(m, "train") == {"george", "jackson", "lucas", "nicolas"}
    assert len(m.splits["val"]) == 5_000 and len(m.splits["train"]) == 55_000
    with pytest.raises(ValueError, match="val_speaker 'nobody' has no FSDD recordings"):
        AVMNISTDataModule(root=str(data_root), val_speaker="nobody").setup()
    with pytest.raises(ValueError, match="val_speaker and test_speaker are both 'yweweler'"):
        AVMNISTDataModule(root=str(data_root), val_speaker="yweweler").setup()
