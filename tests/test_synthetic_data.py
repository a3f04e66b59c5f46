"""The built-in synthetic data: deterministic, dict batches, and each modality informative but noisy."""

from __future__ import annotations

import torch

from datamodules.synthetic import FIRST_CLASS_TOKEN, SyntheticMultimodalDataModule, make_synthetic


def test_batches_follow_the_contract():
    dm = SyntheticMultimodalDataModule(num_train=64, num_val=32, num_test=32, batch_size=16, missing_prob=0.3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 28, 28) and batch["audio"].shape == (16, 4000)
    assert batch["text"]["input_ids"].dtype == torch.long and batch["label"].dtype == torch.long
    assert set(batch["present"]) == {"image", "audio", "text"}
    # an absent modality is marked and blanked, never silently left in
    absent = ~batch["present"]["image"]
    assert absent.any() and batch["image"][absent].abs().sum() == 0


def test_splits_are_different_draws():
    dm = SyntheticMultimodalDataModule(num_train=50, num_val=50, num_test=50)
    dm.setup()
    images = [dm.splits[s].data["image"] for s in ("train", "val", "test")]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    assert torch.equal(images[1], make_synthetic(50, seed=1)["image"])  # val = seed + 1


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_synthetic(100, seed=3), make_synthetic(100, seed=3), make_synthetic(100, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])


def test_each_modality_alone_is_informative_but_not_perfect():
    train, test = make_synthetic(3000, seed=0), make_synthetic(1000, seed=1)
    y = test["label"]
    # image: nearest class mean
    means = torch.stack([train["image"][train["label"] == c].mean(0) for c in range(10)]).flatten(1)
    image_acc = (torch.cdist(test["image"].flatten(1), means).argmin(1) == y).float().mean()
    # audio: the spectral peak identifies the class pitch
    spectrum = torch.fft.rfft(test["audio"]).abs()
    peaks = torch.stack([torch.fft.rfft(train["audio"][train["label"] == c]).abs().mean(0) for c in range(10)])
    audio_acc = ((spectrum @ peaks.T).argmax(1) == y).float().mean()
    # text: the class token, when present
    tokens = test["input_ids"]
    has = ((tokens >= FIRST_CLASS_TOKEN) & (tokens < FIRST_CLASS_TOKEN + 10))
    guess = torch.where(has.any(1), (tokens * has).max(1).values - FIRST_CLASS_TOKEN, torch.zeros_like(y))
    text_acc = (guess == y).float().mean()
    for name, acc in {"image": image_acc, "audio": audio_acc, "text": text_acc}.items():
        assert 0.3 < acc < 0.995, f"{name} alone: {acc:.3f}"
