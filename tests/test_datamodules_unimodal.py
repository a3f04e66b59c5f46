"""MNIST, FSDD, SST-2 and tri-modal digits on the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import FSDDDataModule, MNISTDataModule, SST2DataModule, TriModalDigitsDataModule
from datamodules.text import BYTE_OFFSET
from datamodules.trimodal import WORDS


def test_mnist_splits_ranges_and_resize(data_root: Path) -> None:
    dm = MNISTDataModule(root=str(data_root), image_size=32)
    dm.setup()
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 55_000, "val": 5_000, "test": 10_000}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (64, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and set(batch["present"]) == {"image"}
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0 and batch["image"].min() < -0.99
    std = MNISTDataModule(root=str(data_root), normalize="standard", val_size=10_000)
    std.setup()
    assert len(std.splits["train"]) == 50_000
    x = std.splits["train"].get_batch(torch.arange(5000))["image"]
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1.0) < 0.1
    with pytest.raises(ValueError, match="normalize"):
        MNISTDataModule(normalize="minmax")


@pytest.mark.parametrize("split", ["speaker", "recording"])
def test_fsdd_splits_are_disjoint(data_root: Path, split: str) -> None:
    dm = FSDDDataModule(root=str(data_root), split=split)
    dm.setup()
    sizes = {s: len(d) for s, d in dm.splits.items()}
    assert sum(sizes.values()) == 3000
    paths = {s: set(p) for s, p in dm.paths.items()}
    assert not paths["train"] & paths["test"] and not paths["val"] & paths["test"] and not paths["train"] & paths["val"]
    names = {s: [Path(p).stem.split("_") for p in ps] for s, ps in dm.paths.items()}
    if split == "speaker":
        assert sizes["test"] == 500 and {n[1] for n in names["test"]} == {"yweweler"}
        assert "yweweler" not in {n[1] for n in names["train"] + names["val"]}
    else:
        assert sizes["test"] == 300 and all(int(n[2]) < 5 for n in names["test"])
        assert all(int(n[2]) >= 5 for n in names["train"] + names["val"])
    assert sizes["val"] == round(0.1 * (3000 - sizes["test"]))
    for s, ds in dm.splits.items():  # labels = the digit in each file name
        assert ds.label.tolist() == [int(n[0]) for n in names[s]]
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (64, 1, 112, 112) and set(batch) == {"audio", "label", "present"}


def test_fsdd_waveform_format(data_root: Path) -> None:
    dm = FSDDDataModule(root=str(data_root), audio_format="waveform", batch_size=16)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["audio"].shape == (16, 8000) and batch["audio"].dtype == torch.float32
    assert batch["audio"].abs().max() > 0.01


def test_sst2_byte_tokenizer_reads_train_and_dev(data_root: Path) -> None:
    dm = SST2DataModule(root=str(data_root), tokenizer="byte", max_length=64)
    dm.setup()
    assert len(dm.splits["train"]) == 67_349 and len(dm.splits["val"]) == 872
    assert dm.splits["test"] is dm.splits["val"]  # test.tsv has no labels: test reads dev.tsv
    assert set(dm.splits["val"].label.tolist()) == {0, 1} and dm.vocab_size == 259
    ds = dm.splits["val"]
    b = ds.get_batch(torch.arange(8))
    assert b["text"]["input_ids"].shape[1] <= 64 and b["text"]["attention_mask"].dtype == torch.int64
    ids = b["text"]["input_ids"][0][b["text"]["attention_mask"][0].bool()]
    decoded = bytes((ids[1:-1] - BYTE_OFFSET).tolist()).decode()
    assert decoded == ds.sentences[0][:62]


def test_sst2_minilm_tokenizer(data_root: Path) -> None:
    dm = SST2DataModule(root=str(data_root), tokenizer="minilm", train_limit=500, batch_size=32)
    dm.setup()
    assert len(dm.splits["train"]) == 500 and dm.vocab_size == 30522
    batch = next(iter(dm.test_dataloader()))
    ids, mask = batch["text"]["input_ids"], batch["text"]["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 32 and (ids[:, 0] == 101).all()  # [CLS]
    assert (ids[mask == 0] == 0).all() and mask.sum(1).min() >= 3
    text = dm.tokenizer.tok.decode(ids[0][mask[0].bool()], skip_special_tokens=True)
    squeeze = lambda t: "".join(t.lower().split())  # noqa: E731  (WordPiece re-joins "it 's")
    assert squeeze(dm.splits["test"].sentences[0]).startswith(squeeze(text)[:30])


def test_trimodal_batches_and_text_noise(data_root: Path) -> None:
    dm = TriModalDigitsDataModule(root=str(data_root), text_noise=0.3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "audio", "text", "label", "speaker", "present"}
    assert set(batch["present"]) == {"image", "audio", "text"}
    assert batch["image"].shape == (64, 1, 28, 28) and batch["audio"].shape == (64, 1, 112, 112)
    assert batch["text"]["input_ids"].shape[1] <= 16
    train = dm.splits["train"]
    kinds = train.kinds
    assert abs((kinds > 0).mean() - 0.3) < 0.02  # ~30% of texts corrupted, in three kinds
    assert set(np.unique(kinds)) == {0, 1, 2, 3}
    labels = train.paired.label.tolist()
    for text, y, kind in zip(train.texts[:2000], labels[:2000], kinds[:2000]):
        words = set(text.replace(",", "").split())
        if kind == 0:
            assert WORDS[y] in words and len(words & set(WORDS)) == 1
        elif kind == 2:
            assert WORDS[y] in words and len(words & set(WORDS)) == 2
        elif kind == 3:
            assert WORDS[y] not in words
    # Same seed -> same texts; the image/audio side is AV-MNIST's (shared cache).
    again = TriModalDigitsDataModule(root=str(data_root), text_noise=0.3)
    again.setup()
    assert again.cache_hit and again.splits["test"].texts == dm.splits["test"].texts
    assert torch.equal(again.splits["train"].paired.recording, train.paired.recording)


def test_missing_modalities_are_marked_and_blanked(data_root: Path) -> None:
    dm = TriModalDigitsDataModule(root=str(data_root), missing_prob=0.3, missing_splits=["test"])
    dm.setup()
    train = dm.splits["train"].get_batch(torch.arange(256))
    assert all(p.all() for p in train["present"].values())  # train untouched
    b = dm.splits["test"].get_batch(torch.arange(2000))
    present = torch.stack([b["present"][m] for m in ("image", "audio", "text")], dim=1)
    assert present.any(dim=1).all()  # never all modalities missing
    assert 0.2 < (~present).float().mean() < 0.35
    assert (b["image"][~b["present"]["image"]] == 0).all() and (b["audio"][~b["present"]["audio"]] == 0).all()
    assert (b["text"]["attention_mask"][~b["present"]["text"]] == 0).all()
    assert (b["image"][b["present"]["image"]].abs().sum(dim=(1, 2, 3)) > 0).all()
    again = TriModalDigitsDataModule(root=str(data_root), missing_prob=0.3, missing_splits=["test"])
    again.setup()
    assert torch.equal(again.splits["test"].get_batch(torch.arange(2000))["present"]["audio"], b["present"]["audio"])


def test_plain_dataloader_over_a_split(data_root: Path) -> None:
    """A user's own DataLoader works with fusegen's collate, and without it says what to do."""
    from datamodules import collate

    dm = MNISTDataModule(root=str(data_root))
    dm.setup()
    split = dm.splits["test"]
    batch = next(iter(torch.utils.data.DataLoader(split, batch_size=8, collate_fn=collate)))
    assert type(batch) is dict and batch["image"].shape == (8, 1, 28, 28)
    assert torch.equal(batch["image"][3], split[3]["image"]) and batch["label"][3] == split[3]["label"]
    with pytest.raises(KeyError, match=r"collate_fn=datamodules.collate"):
        next(iter(torch.utils.data.DataLoader(split, batch_size=8)))


def test_fsdd_speaker_label_matches_file_names_and_is_learnable(data_root: Path) -> None:
    dm = FSDDDataModule(root=str(data_root), label="speaker", split="recording", audio_format="waveform")
    assert dm.num_classes == 6  # known before setup, for models built from the config
    dm.setup()
    assert dm.class_names == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"] and dm.num_classes == 6
    for s, ds in dm.splits.items():  # label = index of the speaker named in each file
        assert [dm.class_names[y] for y in ds.label.tolist()] == [Path(p).stem.split("_")[1] for p in dm.paths[s]]
        assert set(ds.label.tolist()) == set(range(6)), s  # every voice in every split (recording split)

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:  # long-term average spectrum, 80 bands
        b = dm.splits[split].get_batch(torch.arange(len(dm.splits[split])))
        power = torch.fft.rfft(b["audio"]).abs().pow(2)[:, :4000]
        return power.reshape(len(power), 80, 50).mean(2).clamp_min(1e-8).log(), b["label"]

    # A linear probe trained on these labels tells the six voices apart on unseen takes (chance: 1/6).
    (x, y), (xt, yt) = features("train"), features("test")
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], 6)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe((x - mean) / std), y).backward()
        opt.step()
    acc = (probe((xt - mean) / std).argmax(1) == yt).float().mean().item()
    assert acc > 0.8, acc
    with pytest.raises(ValueError, match="label: speaker needs split: recording"):
        FSDDDataModule(label="speaker")
    with pytest.raises(ValueError, match="label must be one of"):
        FSDDDataModule(label="gender")


def test_every_datamodule_names_its_classes_and_modalities() -> None:
    from datamodules import AVMNISTDataModule, SyntheticMultimodalDataModule

    want = {
        AVMNISTDataModule(): (10, ("image", "audio")),
        TriModalDigitsDataModule(): (10, ("image", "audio", "text")),
        MNISTDataModule(): (10, ("image",)),
        FSDDDataModule(): (10, ("audio",)),
        SST2DataModule(tokenizer="byte"): (2, ("text",)),
        SyntheticMultimodalDataModule(): (10, ("image", "audio", "text")),
    }
    for dm, (n, modalities) in want.items():
        names = dm.class_names
        assert dm.num_classes == n and len(names) == n and all(isinstance(c, str) for c in names), type(dm)
        assert dm.modalities == modalities, type(dm)
        names.append("x")  # a caller's copy: the datamodule's names stay intact
        assert len(dm.class_names) == n
    assert SST2DataModule(tokenizer="byte").class_names == ["negative", "positive"]
    assert MNISTDataModule().class_names == [str(d) for d in range(10)]
    batch = next(iter(SyntheticMultimodalDataModule(num_train=8, num_val=8, num_test=8).train_dataloader()))
    assert set(batch["present"]) == set(SyntheticMultimodalDataModule.modalities)
