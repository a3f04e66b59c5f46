"""Hand-computed values for the small pure pieces of the datamodules (no data files needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import SyntheticMultimodalDataModule
from datamodules.audio import SpectrogramFeatures, per_sample_noise, signal_rms
from datamodules.avmnist import fit_pca, pair_recordings, recording_pools
from datamodules.base import presence_masks
from datamodules.sources import fit_length, parse_idx
from datamodules.text import CLS_ID, PAD_ID, SEP_ID, ByteTokenizer, trim_batch


def test_spectrogram_is_log_power_relative_to_its_peak() -> None:
    t = torch.arange(8000) / 8000
    noise = 0.01 * torch.randn(8000, generator=torch.Generator().manual_seed(0))
    wave = torch.stack([torch.sin(2 * torch.pi * 440 * t), noise])
    got = SpectrogramFeatures()(wave)
    assert got.shape == (2, 1, 112, 112)
    spec = torch.stft(wave, n_fft=222, hop_length=72, window=torch.hann_window(222), center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)
    db = 10 * torch.log10(spec.clamp_min(1e-10))
    want = ((db - db.amax(dim=(-2, -1), keepdim=True) + 80.0) / 80.0).clamp(0, 1)
    torch.testing.assert_close(got[:, 0], want, atol=1e-4, rtol=0)
    assert got.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]  # each clip's peak is 1
    # 440 Hz lands in bin round(440 / (8000 / 222)) = 12.
    assert int(got[0, 0].mean(dim=1).argmax()) == round(440 / (8000 / 222))


def test_fit_length_centre_crops_and_pads_at_the_end() -> None:
    x = torch.arange(10.0)
    assert fit_length(x, 4).tolist() == [3.0, 4.0, 5.0, 6.0]
    assert fit_length(x, 12).tolist() == list(range(10)) + [0.0, 0.0]
    assert fit_length(x, 10).tolist() == x.tolist()


def test_signal_rms_ignores_padding_and_noise_is_keyed_by_sample() -> None:
    waves = torch.tensor([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(signal_rms(waves), torch.tensor([(25 / 2) ** 0.5, 1.0]))
    a = per_sample_noise(0, 1, torch.tensor([7, 3]), 16)
    assert torch.equal(a[1], per_sample_noise(0, 1, torch.tensor([3]), 16)[0])
    assert not torch.equal(a[0], per_sample_noise(0, 2, torch.tensor([7]), 16)[0])  # another split, other noise
    assert torch.equal(a[0], torch.from_numpy(np.random.default_rng([0, 1, 7]).standard_normal(16, dtype=np.float32)))


def test_byte_tokenizer_and_trim_by_hand() -> None:
    enc = ByteTokenizer()(["ab", "", "abcdef"], max_length=6)
    o = 3  # BYTE_OFFSET
    assert enc["input_ids"].tolist() == [[CLS_ID, 97 + o, 98 + o, SEP_ID, PAD_ID, PAD_ID],
                                         [CLS_ID, SEP_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                                         [CLS_ID, 97 + o, 98 + o, 99 + o, 100 + o, SEP_ID]]  # truncated to fit
    assert enc["attention_mask"].sum(1).tolist() == [4, 2, 6]
    short = trim_batch({k: v[:2] for k, v in enc.items()})
    assert short["input_ids"].shape == (2, 4) and short["input_ids"][0, 3] == SEP_ID  # [SEP] kept


def test_presence_masks_rate_and_never_all_absent() -> None:
    masks = presence_masks(20_000, ("image", "audio", "text"), 0.3, [0])
    stacked = torch.stack(list(masks.values()), 1)
    assert stacked.any(1).all()
    # P(absent) = 0.3, minus the 0.3^3 all-absent rows that get one modality back (1/3 each).
    expected = 0.3 - 0.3 ** 3 / 3
    assert abs((~stacked).float().mean().item() - expected) < 0.01
    again = presence_masks(20_000, ("image", "audio", "text"), 0.3, [0])
    assert all(torch.equal(masks[m], again[m]) for m in masks)


def test_pairing_uses_the_pool_evenly_and_keeps_the_digit() -> None:
    rec_digit = np.repeat(np.arange(10), 6)
    pool = np.flatnonzero(np.tile(np.arange(6), 10) < 3)  # 3 recordings per digit
    labels = np.repeat(np.arange(10), 7)
    out = pair_recordings(labels, pool, rec_digit, np.random.default_rng(0), "train")
    assert (rec_digit[out] == labels).all() and set(out) <= set(pool)
    counts = np.bincount(out, minlength=60)[pool]
    assert counts.max() - counts.min() <= 1  # 7 images over 3 recordings: 3/2/2
    orders = {tuple(pair_recordings(labels, pool, rec_digit, np.random.default_rng(s), "train")) for s in range(5)}
    assert len(orders) > 1  # the seed decides which recording goes with which image
    with pytest.raises(ValueError, match="no FSDD recording of digit 0 available for the test split"):
        pair_recordings(labels, pool[rec_digit[pool] > 0], rec_digit, np.random.default_rng(0), "test")


def test_recording_pools_by_hand() -> None:
    speaker = ["a", "a", "b", "b", "c", "c"]
    take = torch.tensor([0, 7, 3, 12, 1, 30])
    pools = recording_pools(speaker, take, "speaker", "c")
    assert {k: v.tolist() for k, v in pools.items()} == {"train": [1, 3], "val": [0, 2], "test": [4, 5]}
    pools = recording_pools(speaker, take, "speaker", "c", val_speaker="b")
    assert {k: v.tolist() for k, v in pools.items()} == {"train": [0, 1], "val": [2, 3], "test": [4, 5]}
    pools = recording_pools(speaker, take, "recording", "c")
    assert {k: v.tolist() for k, v in pools.items()} == {"train": [3, 5], "val": [1], "test": [0, 2, 4]}


def test_fit_pca_keeps_the_requested_energy() -> None:
    g = torch.Generator().manual_seed(0)
    # Variance 9 on one pixel direction, 1 on another, nothing else: 90% of the energy in one component.
    x = torch.zeros(2000, 784)
    x[:, 0] = 3 * torch.randn(2000, generator=g)
    x[:, 1] = torch.randn(2000, generator=g)
    images = (x * 20 + 128).clamp(0, 255).round().to(torch.uint8).reshape(-1, 28, 28)
    mean, comps = fit_pca(images, 0.5)
    assert comps.shape == (1, 784) and abs(float(comps[0, 0])) > 0.99
    assert fit_pca(images, 0.95)[1].shape[0] == 2
    torch.testing.assert_close(mean, images.reshape(2000, -1).float().mean(0) / 255.0)


def test_parse_idx_checks_the_size() -> None:
    data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    assert parse_idx(data, "f").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="f: 5 bytes of data for shape"):
        parse_idx(data[:-1], "f")


def test_own_subclass_may_assign_class_names() -> None:
    from datamodules.base import RealDataModule

    class Mine(RealDataModule):
        num_classes, modalities = 3, ("image",)

    dm = Mine()
    assert dm.class_names == ["0", "1", "2"]
    dm.class_names = ["cat", "dog", "owl"]
    assert dm.class_names == ["cat", "dog", "owl"]


def test_only_the_train_loader_shuffles() -> None:
    dm = SyntheticMultimodalDataModule(num_train=256, num_val=128, num_test=128, batch_size=32)
    dm.setup()
    torch.manual_seed(0)
    train = next(iter(dm.train_dataloader()))["label"]
    assert not torch.equal(train, dm.splits["train"].data["label"][:32])
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                          ("test", dm.predict_dataloader())):
        assert torch.equal(next(iter(loader))["label"], dm.splits[split].data["label"][:32]), split
