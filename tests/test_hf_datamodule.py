"""datamodules.HFDataModule on files the tests write themselves: manifests (CSV/JSON/Parquet),
save_to_disk and imagefolder datasets, PNG images, WAV audio, captions; the batch contract,
splits, labels, caching, streaming across 2 processes, bad input, and a fit through the CLI."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from datamodules import HFDataModule
from datamodules.hf import DataError

N_PER_CLASS = 6
CLASSES = ("cat", "dog", "eel")
WORDS = {"cat": "a small cat", "dog": "a loud dog", "eel": "an eel"}


def pixel(i: int, c: int) -> int:
    """The grey value of row i's image (class c): distinct per row, so a test can find its image."""
    return 40 * c + 3 * (i % 10) + 10


def write_rows(folder: Path, n_per_class: int = N_PER_CLASS, rgb: bool = False, audio_rate: int = 16000,
               blanks: bool = True) -> list[dict]:
    """PNGs + WAVs under ``folder`` and the manifest rows referencing them by relative path.
    Every 4th row has no caption, every 5th no audio."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_per_class * len(CLASSES)):
        c = i % len(CLASSES)
        name = CLASSES[c]
        value = pixel(i, c)
        img = np.full((20, 24), value, dtype=np.uint8)
        (Image.fromarray(np.stack([img] * 3, -1), "RGB") if rgb else Image.fromarray(img, "L")).save(
            folder / "img" / f"{i}.png")
        t = np.arange(audio_rate // 4) / audio_rate  # 0.25 s
        sf.write(folder / "wav" / f"{i}.wav", (0.1 * (c + 1) * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                 audio_rate, subtype="FLOAT")
        rows.append({"picture": f"img/{i}.png", "sound": "" if blanks and i % 5 == 4 else f"wav/{i}.wav",
                     "caption": "" if blanks and i % 4 == 3 else WORDS[name], "animal": name, "row_id": i,
                     "owner": "ann" if i % 2 else "bob"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


COLUMNS = {"image": "picture", "audio": "sound", "text": "caption"}


def make_dm(data_files, **kw) -> HFDataModule:
    kw = {"path": "csv", "data_files": data_files, "columns": COLUMNS, "label_column": "animal",
          "tokenizer": "byte", "max_length": 16, "batch_size": 8, **kw}
    dm = HFDataModule(**kw)
    dm.setup()
    return dm


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A CSV in its own folder, next to img/ and wav/ (paths in it are relative to it)."""
    rows = write_rows(tmp_path / "data")
    return write_csv(tmp_path / "data" / "all.csv", rows)


def whole(dm: HFDataModule, split: str) -> dict:
    ds = dm.splits[split]
    return ds.get_batch(torch.arange(len(ds)))


# ------------------------------------------------------------------------------ batch contract

def test_csv_manifest_batches_follow_the_contract(manifest: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(manifest.parents[1])  # cwd is NOT the manifest's folder: paths resolve against the CSV
    dm = make_dm(str(manifest.relative_to(manifest.parents[1])), val_fraction=0.2, test_fraction=0.2)
    assert dm.class_names == ["cat", "dog", "eel"] and dm.num_classes == 3
    assert dm.modalities == ("image", "audio", "text")
    assert dm.kinds == {"image": "image", "audio": "audio", "text": "text"}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "audio", "text", "label", "index", "present"}
    assert batch["image"].shape == (8, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["audio"].shape == (8, 8000)
    assert batch["text"]["input_ids"].shape == (8, 16)
    b = whole(dm, "train")
    rows = b["index"].tolist()
    for j, i in enumerate(rows):
        c = i % 3
        assert b["label"][j] == c
        # a uniform PNG stays uniform through the resize: value / 255 everywhere
        assert torch.allclose(b["image"][j], torch.full((1, 28, 28), pixel(i, c) / 255.0), atol=1e-6)
        assert b["present"]["audio"][j] == (i % 5 != 4)
        assert b["present"]["text"][j] == (i % 4 != 3)
        if i % 5 == 4:  # absent audio is blanked, not an error
            assert not b["audio"][j].any()
        else:
            # 0.25 s at 16 kHz -> resampled to 2000 samples at 8 kHz, zero-padded to 8000
            assert b["audio"][j, :1900].abs().max() == pytest.approx(0.1 * (c + 1), rel=0.05)
            assert not b["audio"][j, 2010:].any()
        if i % 4 == 3:
            assert not b["text"]["attention_mask"][j].any() and not b["text"]["input_ids"][j].any()
        else:
            text = WORDS[CLASSES[c]]
            assert b["text"]["attention_mask"][j].sum() == len(text) + 2  # [CLS] bytes [SEP]
            assert bytes((b["text"]["input_ids"][j, 1:1 + len(text)] - 3).tolist()).decode() == text


def test_seeded_fraction_splits_are_disjoint_and_repeatable(manifest: Path):
    a = make_dm(str(manifest), val_fraction=0.25, test_fraction=0.25, seed=3, cache=False)
    b = make_dm(str(manifest), val_fraction=0.25, test_fraction=0.25, seed=3, cache=False)
    c = make_dm(str(manifest), val_fraction=0.25, test_fraction=0.25, seed=4, cache=False)
    parts = {s: set(whole(a, s)["index"].tolist()) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [10, 4, 4]
    assert set.union(*parts.values()) == set(range(18)) and sum(map(len, parts.values())) == 18
    assert all(torch.equal(whole(a, s)["index"], whole(b, s)["index"]) for s in parts)
    assert not torch.equal(whole(a, "val")["index"], whole(c, "val")["index"])


def test_splits_come_from_the_dataset_when_it_has_them(tmp_path: Path):
    rows = write_rows(tmp_path)
    files = {"train": str(write_csv(tmp_path / "train.csv", rows[:12])),
             "validation": str(write_csv(tmp_path / "val.csv", rows[12:15])),
             "test": str(write_csv(tmp_path / "test.csv", rows[15:]))}
    dm = make_dm(files)
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 12, "val": 3, "test": 3}
    assert whole(dm, "val")["index"].tolist() == [0, 1, 2]  # row numbers within the split's file


def test_class_names_cover_every_split_and_integer_labels_keep_their_value(tmp_path: Path):
    rows = write_rows(tmp_path)
    no_eel = [r for r in rows if r["animal"] != "eel"]
    files = {"train": str(write_csv(tmp_path / "train.csv", no_eel)),
             "test": str(write_csv(tmp_path / "test.csv", [r for r in rows if r["animal"] == "eel"]))}
    dm = make_dm(files, columns={"image": "picture"}, cache=False)
    assert dm.class_names == ["cat", "dog", "eel"] and whole(dm, "test")["label"].unique().tolist() == [2]
    for r in no_eel:
        r["animal"] = 7 if r["animal"] == "dog" else 2  # digits 2 and 7 only
    ints = make_dm(str(write_csv(tmp_path / "ints.csv", no_eel)), columns={"image": "picture"}, id_column="row_id",
                   cache=False)
    assert ints.class_names == [str(d) for d in range(8)]
    b = whole(ints, "train")
    assert b["label"].tolist() == [7 if i % 3 == 1 else 2 for i in b["index"].tolist()]


def test_json_manifest_in_another_folder_and_relabelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rows = write_rows(tmp_path / "deep" / "set")
    path = tmp_path / "deep" / "set" / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    dm = make_dm("deep/set/rows.jsonl", path="json", label_column="owner", columns={"image": "picture"},
                 val_fraction=0.2, test_fraction=0.2)
    assert dm.class_names == ["ann", "bob"] and dm.modalities == ("image",)
    b = whole(dm, "train")
    assert set(b) == {"image", "label", "index", "present"}
    assert b["label"].tolist() == [0 if i % 2 else 1 for i in b["index"].tolist()]


def test_parquet_and_save_to_disk_with_class_label_and_id_column(tmp_path: Path):
    import datasets

    rows = write_rows(tmp_path, blanks=False)
    for r in rows:  # absolute paths, as a dataset built in Python would hold them
        r["picture"], r["sound"] = str(tmp_path / r["picture"]), str(tmp_path / r["sound"])
    features = datasets.Features({"picture": datasets.Value("string"), "sound": datasets.Value("string"),
                                  "caption": datasets.Value("string"), "row_id": datasets.Value("int64"),
                                  "owner": datasets.Value("string"),
                                  "animal": datasets.ClassLabel(names=["eel", "dog", "cat"])})
    ds = datasets.Dataset.from_list([{**r, "animal": ["eel", "dog", "cat"].index(r["animal"])} for r in rows],
                                    features=features)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    datasets.DatasetDict({"train": ds.select(range(12)), "test": ds.select(range(12, 18))}).save_to_disk(
        str(tmp_path / "saved"))
    pq = make_dm(str(tmp_path / "rows.parquet"), path="parquet", id_column="row_id", class_names=["eel", "dog", "cat"])
    saved = make_dm(None, path=str(tmp_path / "saved"), id_column="row_id", val_fraction=0.25)
    assert saved.class_names == ["eel", "dog", "cat"]  # from the ClassLabel feature
    assert {s: len(d) for s, d in saved.splits.items()} == {"train": 9, "val": 3, "test": 6}
    for dm in (pq, saved):
        b = whole(dm, "train")
        expected = [["eel", "dog", "cat"].index(CLASSES[i % 3]) for i in b["index"].tolist()]
        assert b["label"].tolist() == expected


def test_image_and_audio_folders_and_two_image_columns(tmp_path: Path):
    for c, name in enumerate(CLASSES):
        (tmp_path / "train" / name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((10, 10, 3), (50 * c, 7, 200), dtype=np.uint8), "RGB").save(
                tmp_path / "train" / name / f"{k}.png")
    dm = HFDataModule(path="imagefolder", data_dir=str(tmp_path), image_size=[16, 12], image_channels=3,
                      val_fraction=0.2, test_fraction=0.2, batch_size=4)
    dm.setup()
    assert dm.class_names == list(CLASSES) and dm.modalities == ("image",)
    b = whole(dm, "train")
    assert b["image"].shape[1:] == (3, 16, 12)
    assert torch.allclose(b["image"][:, 0, 0, 0], b["label"].float() * 50 / 255)
    assert torch.allclose(b["image"][:, 2], torch.full_like(b["image"][:, 2], 200 / 255))

    for c, name in enumerate(("no", "yes")):  # audiofolder: [split/]label/clip.wav, read without FFmpeg
        (tmp_path / "sounds" / name).mkdir(parents=True)
        for k in range(3):
            sf.write(tmp_path / "sounds" / name / f"{k}.wav", np.full(400, 0.5 - c, np.float32), 8000,
                     subtype="FLOAT")
    af = HFDataModule(path="audiofolder", data_dir=str(tmp_path / "sounds"), val_fraction=0.2, test_fraction=0.2)
    af.setup()
    assert af.class_names == ["no", "yes"] and af.kinds == {"audio": "audio"}
    b = whole(af, "train")
    assert torch.allclose(b["audio"][:, 0], 0.5 - b["label"].float()) and not b["audio"][:, 400:].any()

    rows = write_rows(tmp_path / "two")
    for r in rows:
        r["side"] = r["picture"]
    two = make_dm(str(write_csv(tmp_path / "two" / "m.csv", rows)), columns={"front": "picture", "side": "side"},
                  val_fraction=0.2, test_fraction=0.2)
    assert two.kinds == {"front": "image", "side": "image"}  # inferred from the .png paths
    b = whole(two, "train")
    assert torch.equal(b["front"], b["side"]) and b["front"].shape[1:] == (1, 28, 28)


def test_spectrogram_augment_and_workers(manifest: Path):
    dm = make_dm(str(manifest), audio_format="spectrogram", augment=True, num_workers=2, cache=False,
                 columns={"image": "picture", "audio": "sound"})
    assert dm.splits["train"][0]["audio"].shape == (1, 112, 112)
    seen = [torch.cat([b["index"] for b in dm.train_dataloader()]) for _ in range(2)]
    assert sorted(seen[0].tolist()) == sorted(whole(dm, "train")["index"].tolist())  # every row, once
    train = dm.splits["train"]
    first, second = train.get_batch(torch.arange(4))["image"], train.get_batch(torch.arange(4))["image"]
    assert not torch.equal(first, second)  # a new random affine each time, for training only
    val = dm.splits["val"]
    assert torch.equal(val.get_batch(torch.arange(2))["image"], val.get_batch(torch.arange(2))["image"])


def test_default_tokenizer_matches_the_default_text_encoder(manifest: Path):
    from fusion import TransformerTextEncoder

    dm = make_dm(str(manifest), tokenizer="minilm", max_length=12, columns={"text": "caption"}, cache=False)
    assert HFDataModule.__init__.__defaults__ is not None and dm.hparams.tokenizer == "minilm"
    b = whole(dm, "train")
    encoder = TransformerTextEncoder()
    assert encoder.model.config.vocab_size == 30522 and int(b["text"]["input_ids"].max()) < 30522
    assert encoder(b["text"]).shape[:2] == (len(b["label"]), 12)


# ------------------------------------------------------------------------------ cache

def test_cache_is_reused_and_keyed_on_options_and_files(manifest: Path, monkeypatch: pytest.MonkeyPatch):
    from datamodules.hf import Preparer

    first = make_dm(str(manifest))
    key = first.cache_path
    assert (key / "train.safetensors").is_file() and (key / "meta.json").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache was valid")

    monkeypatch.setattr(Preparer, "image", no_decoding)
    again = make_dm(str(manifest))
    assert again.cache_path == key and torch.equal(whole(again, "train")["image"], whole(first, "train")["image"])
    monkeypatch.undo()
    assert make_dm(str(manifest), image_size=14).cache_path != key  # an option
    png = manifest.parent / "img" / "0.png"
    Image.fromarray(np.zeros((20, 24), dtype=np.uint8), "L").save(png)
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    edited = make_dm(str(manifest))  # a referenced image changed
    assert edited.cache_path != key


def test_a_damaged_cache_file_is_rebuilt_with_one_warning_naming_it(manifest: Path):
    import re
    import warnings

    from datamodules.cache import CacheRepairWarning, problem

    first = make_dm(str(manifest), id_column="row_id")
    folder, expected = first.cache_path, whole(first, "train")
    train = folder / "train.safetensors"
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in folder.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"train.safetensors", "train.safetensors.manifest.json", "meta.json",
                                       "meta.json.manifest.json", "train.ids.json", "train.ids.json.manifest.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}  # not private (0600)
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    for damage in ("truncate", "same-size"):
        if damage == "truncate":  # a full disk, a killed copy
            os.truncate(train, train.stat().st_size // 2)
        else:  # bit rot: the size is right, the sha256 is not
            data = bytearray(train.read_bytes())
            data[-10:] = bytes(10)
            train.write_bytes(bytes(data))
        with pytest.warns(CacheRepairWarning) as record:
            again = make_dm(str(manifest), id_column="row_id")
        repairs = [str(w.message) for w in record if issubclass(w.category, CacheRepairWarning)]
        assert len(repairs) == 1 and re.search(rf"cache file {re.escape(str(train))} is .*rebuilding it", repairs[0])
        assert again.cache_path == folder and problem(train, full_hash=True) is None
        for key in ("image", "audio", "label", "index"):
            assert torch.equal(whole(again, "train")[key], expected[key]), key
        assert whole(again, "train")["id"] == expected["id"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)  # repaired: the next run reads it silently
        make_dm(str(manifest), id_column="row_id")


def test_failure_leaves_nothing_in_the_cache(manifest: Path):
    from datamodules.paths import cache_dir

    rows = list(csv.DictReader(open(manifest)))
    rows[7]["picture"] = "img/missing.png"
    write_csv(manifest, rows)
    before = set(cache_dir("hf").iterdir())
    with pytest.raises(DataError, match=r"row 7 of .*all\.csv.*line 9.*image file not found.*img/missing\.png"):
        make_dm(str(manifest))
    assert set(cache_dir("hf").iterdir()) - before == set()  # no half-built folder, no temp folder


# ------------------------------------------------------------------------------ bad input

def test_missing_column_lists_the_available_ones(manifest: Path):
    with pytest.raises(DataError, match=r"'audio': 'voice'.*available columns: \['picture', 'sound', 'caption'"):
        make_dm(str(manifest), columns={"image": "picture", "audio": "voice"})
    with pytest.raises(DataError, match=r"'label_column': 'kind'"):
        make_dm(str(manifest), label_column="kind")


def test_unreadable_file_names_row_and_path(manifest: Path):
    (manifest.parent / "wav" / "2.wav").write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match=r"row 2 of .*all\.csv.*audio.*unreadable audio"):
        make_dm(str(manifest), cache=False)
    (manifest.parent / "img" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"row 1 of .*all\.csv.*unreadable image"):
        make_dm(str(manifest), cache=False)


def test_label_not_in_class_names(manifest: Path):
    with pytest.raises(DataError, match=r"row 2 of .*label 'eel' \(column 'animal'\) is not in class_names "
                                        r"\['cat', 'dog'\]"):
        make_dm(str(manifest), class_names=["cat", "dog"], cache=False)


def test_empty_split_is_an_error(tmp_path: Path):
    rows = write_rows(tmp_path)
    with pytest.raises(DataError, match=r"the val split is empty \(val_fraction is 0.0.*data_files"):
        make_dm(str(write_csv(tmp_path / "m.csv", rows)), val_fraction=0.0, cache=False)
    write_csv(tmp_path / "t.csv", rows[:1])
    (tmp_path / "t.csv").write_text((tmp_path / "t.csv").read_text().splitlines()[0] + "\n")  # header only
    with pytest.raises(DataError, match=r"the test split is empty: .*t\.csv' has no rows"):
        make_dm({"train": str(tmp_path / "m.csv"), "test": str(tmp_path / "t.csv")}, cache=False)


def test_image_channels_must_match(tmp_path: Path):
    rows = write_rows(tmp_path, rgb=True)
    path = str(write_csv(tmp_path / "m.csv", rows))
    with pytest.raises(DataError, match=r"row 0 of .*image has 3 channel\(s\).*image_channels is 1.*image_convert"):
        make_dm(path, cache=False)
    grey = make_dm(path, image_convert=True, cache=False)
    assert grey.splits["train"][0]["image"].shape == (1, 28, 28)


def test_image_channels_must_match_the_model_encoder(tmp_path: Path):
    from types import SimpleNamespace

    from fusion import LeNetImageEncoder

    rows = write_rows(tmp_path, rgb=True)
    dm = HFDataModule(path="csv", data_files=str(write_csv(tmp_path / "m.csv", rows)), columns={"image": "picture"},
                      label_column="animal", image_channels=3)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(encoders={"image": LeNetImageEncoder()}))
    with pytest.raises(DataError, match=r"'image' \(column 'picture'\) gives \[B, 3, 28, 28\].*LeNetImageEncoder "
                                        r"expects \[B, 1, \*, \*\]"):
        dm.setup()


def test_bad_files_are_named_with_the_users_column_and_the_file(tmp_path: Path):
    rows = write_rows(tmp_path / "data")
    (tmp_path / "data" / "wav" / "3.wav").write_bytes(b"RIFF not really")
    with pytest.raises(DataError, match=r"row 3 of .*m\.csv.*column 'sound' \(audio\), file '.*wav/3\.wav': "
                                        r"unreadable audio") as err:
        make_dm(str(write_csv(tmp_path / "data" / "m.csv", rows)), cache=False)
    assert "column for" not in str(err.value)
    folder = tmp_path / "folder"  # imagefolder: the row names only the folder, the message the image too
    for label, mode in (("a", "L"), ("b", "RGB")):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            Image.new(mode, (8, 8), 100).save(folder / label / f"{label}{i}.png")
    with pytest.raises(DataError, match=r"row \d+ of .*folder', column 'image', file '.*folder/b/b\d\.png': "
                                        r"image has 3 channel\(s\).*image_channels is 1"):
        HFDataModule(path="imagefolder", data_dir=str(folder), columns={"image": "image"}, cache=False,
                     val_fraction=0.2, test_fraction=0.2).setup()


def test_string_ids_are_carried_into_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ids are whatever the file holds ('ex1' or 17): batches carry them and predictions.csv names them."""
    import pytorch_lightning as pl

    from fusion import ConcatFusion, FusionClassifier, LeNetImageEncoder

    rows = write_rows(tmp_path / "data", blanks=False)
    for r in rows:
        r["row_id"] = f"ex{r['row_id']}"
    path = str(write_csv(tmp_path / "data" / "m.csv", rows))
    dm = make_dm({"train": path, "test": path}, id_column="row_id", columns={"image": "picture"}, val_fraction=0.2)
    batch = next(iter(dm.test_dataloader()))
    assert batch["id"][:3] == ["ex0", "ex1", "ex2"] and batch["index"].tolist()[:3] == [0, 1, 2]
    int_path = str(write_csv(tmp_path / "data" / "i.csv", write_rows(tmp_path / "data", blanks=False)))
    ints = make_dm({"train": int_path, "test": int_path}, id_column="row_id", columns={"image": "picture"},
                   val_fraction=0.2)
    int_batch = next(iter(ints.test_dataloader()))
    assert int_batch["id"][:3] == [0, 1, 2] and int_batch["index"].tolist()[:3] == [0, 1, 2]
    monkeypatch.chdir(tmp_path)
    for data, expected in ((dm, [f"ex{i}" for i in range(len(rows))]), (ints, [str(i) for i in range(len(rows))])):
        torch.manual_seed(0)
        model = FusionClassifier(encoders={"image": LeNetImageEncoder(out_dim=8)}, fusion=ConcatFusion, num_classes=3)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(tmp_path / "runs"))
        trainer.predict(model, datamodule=data)
        written = next(c for c in trainer.callbacks if type(c).__name__ == "PredictionWriter").path
        with open(written) as f:
            got = list(csv.DictReader(f))
        assert list(got[0])[0] == "row_id" and [r["row_id"] for r in got] == expected
        assert [r["label_name"] for r in got] == [CLASSES[i % 3] for i in range(len(rows))]


def test_missing_data_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"data_files\['train'\]: 'nope.csv' not found"):
        make_dm(str(tmp_path / "nope.csv").replace(str(tmp_path) + "/", ""), data_dir=str(tmp_path))


# ------------------------------------------------------------------------------ streaming

def _stream_rank(rank: int, world: int, folder: str, port: int, out: str) -> None:
    import datasets

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # see test_streaming_shards_by_rank_and_worker
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = HFDataModule(path="parquet", data_files={"train": f"{folder}/shard-*.parquet"}, streaming=True,
                          columns={"image": "picture", "text": "caption"}, label_column="animal",
                          class_names=list(CLASSES), id_column="row_id", tokenizer="byte", max_length=8,
                          batch_size=4, shuffle_buffer=8, num_workers=2)
        dm.setup()
        seen, shapes = [], set()
        for batch in dm.train_dataloader():
            seen += batch["index"].tolist()
            shapes.add(tuple(batch["image"].shape[1:]))
            assert batch["label"].tolist() == [i % 3 for i in batch["index"].tolist()]
        Path(out).write_text(json.dumps({"seen": seen, "shapes": [list(s) for s in shapes]}))
    finally:
        torch.distributed.destroy_process_group()


def write_shards(folder: Path) -> None:
    import datasets

    rows = write_rows(folder, n_per_class=8)  # 24 rows -> 4 shards of 6
    for k in range(4):
        datasets.Dataset.from_list(rows[6 * k:6 * k + 6]).to_parquet(str(folder / f"shard-{k}.parquet"))


def test_streaming_shards_by_rank_and_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sharding logic in one process: RANK/WORLD_SIZE as torchrun sets them, 2 loader workers."""
    import datasets

    # datasets waits 5 s after each multi-shard pass (an Arrow thread-shutdown workaround); not needed here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    write_shards(tmp_path)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = make_dm({"train": str(tmp_path / "shard-*.parquet")}, path="parquet", streaming=True,
                     class_names=list(CLASSES), id_column="row_id", columns={"image": "picture", "audio": "sound"},
                     batch_size=4, num_workers=2)
        assert dm.num_classes == 3 and dm.modalities == ("image", "audio")
        loader = dm.train_dataloader()  # persistent workers: one pool for both epochs
        epochs = [list(loader) for _ in range(2)]
        ids = [torch.cat([b["index"] for b in e]).tolist() for e in epochs]
        # datasets reshuffles the shard order every epoch before splitting by rank, so a rank's rows
        # may change between epochs; within an epoch each rank reads 12 distinct rows.
        assert all(len(e) == len(set(e)) == 12 for e in ids)
        batch = epochs[0][0]
        assert batch["image"].shape[1:] == (1, 28, 28) and batch["audio"].shape[1:] == (8000,)
        assert batch["label"].tolist() == [i % 3 for i in batch["index"].tolist()]
        assert batch["present"]["audio"].tolist() == [i % 5 != 4 for i in batch["index"].tolist()]
        seen.append([set(e) for e in ids])
    for epoch in range(2):  # the ranks split every epoch into disjoint halves
        assert not seen[0][epoch] & seen[1][epoch] and seen[0][epoch] | seen[1][epoch] == set(range(24))


@pytest.mark.slow  # two spawned processes each import torch + datasets: ~2 minutes on 2 busy cores
def test_streaming_parquet_shards_are_split_across_two_ranks(tmp_path: Path):
    import torch.multiprocessing as mp

    write_shards(tmp_path)
    port = 29500 + os.getpid() % 1000
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_stream_rank, args=(r, 2, str(tmp_path), port, str(tmp_path / f"rank{r}.json")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    a, b = set(seen[0]["seen"]), set(seen[1]["seen"])
    assert len(seen[0]["seen"]) == len(a) == 12 and len(b) == 12  # 2 shards each, every row once
    assert not a & b and a | b == set(range(24))
    assert seen[0]["shapes"] == [[1, 28, 28]]


def write_unequal_shards(folder: Path) -> list[dict]:
    """Two Parquet shards of 100 and 37 rows (row_id 0..136), and a validation file."""
    import datasets

    rows = write_rows(folder, n_per_class=46, blanks=False)[:137]
    datasets.Dataset.from_list(rows[:100]).to_parquet(str(folder / "shard-0.parquet"))
    datasets.Dataset.from_list(rows[100:]).to_parquet(str(folder / "shard-1.parquet"))
    datasets.Dataset.from_list(rows[:12]).to_parquet(str(folder / "val.parquet"))
    return rows


def test_streaming_unequal_shards_give_the_ranks_disjoint_halves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    write_unequal_shards(tmp_path)
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = make_dm({"train": str(tmp_path / "shard-*.parquet")}, path="parquet", streaming=True,
                     class_names=list(CLASSES), id_column="row_id", columns={"image": "picture"}, batch_size=4,
                     num_workers=2)
        loader = dm.train_dataloader()
        per_rank.append([[i for b in loader for i in b["index"].tolist()] for _ in range(3)])
    for epoch in range(3):
        a, b = per_rank[0][epoch], per_rank[1][epoch]
        assert len(a) == len(set(a)) and len(b) == len(set(b))
        assert sorted((len(a), len(b))) == [68, 69]  # row by row, not 100 + 37 shard by shard
        assert not set(a) & set(b) and set(a) | set(b) == set(range(137))
    assert per_rank[0][0] != per_rank[0][1]  # a new shuffle order each epoch


def test_even_stream_stops_every_rank_when_the_first_runs_out(monkeypatch: pytest.MonkeyPatch):
    """EvenStream's agreement, with the other rank played by the all-reduce: it has 3 batches, this one 5."""
    from datamodules.hf import EvenStream

    other = iter([1, 1, 1, 0, 0, 0])
    calls = []

    def all_reduce(flag, op=None, group=None):
        calls.append(int(flag.item()))
        flag.fill_(min(int(flag.item()), next(other)))

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)

    class Stream:
        class ds:
            epochs: list[int] = []

            @classmethod
            def set_epoch(cls, epoch: int) -> None:
                cls.epochs.append(epoch)

    loader = [{"index": torch.tensor([i])} for i in range(5)]
    got = list(EvenStream(loader, Stream, shuffle=True, epoch=lambda: 7, group=object()))
    assert [b["index"].item() for b in got] == [0, 1, 2] and calls == [1, 1, 1, 1]
    assert Stream.ds.epochs == [7]  # the trainer's epoch, set before the workers start
    other = iter([1] * 5 + [0])
    assert len(list(EvenStream(loader, Stream, shuffle=False, group=object()))) == 5  # equal: nothing dropped


UNEQUAL_DDP_YAML = """
experiment: stream-ddp
trainer: {max_epochs: 2, enable_progress_bar: false, enable_model_summary: false}
model:
  class_path: fusion.FusionClassifier
  init_args:
    num_classes: 3
    encoders: {image: {class_path: fusion.LeNetImageEncoder, init_args: {out_dim: 8}}}
    fusion: fusion.ConcatFusion
data:
  class_path: datamodules.HFDataModule
  init_args:
    path: parquet
    data_files: {train: shard-*.parquet, validation: val.parquet}
    streaming: true
    columns: {image: picture}
    label_column: animal
    class_names: [cat, dog, eel]
    id_column: row_id
    batch_size: 4
"""

COUNT_BATCHES = '''
import json
import pytorch_lightning as pl


class CountBatches(pl.Callback):
    """Each rank writes the row ids of every training batch it ran, per epoch."""

    def on_fit_start(self, trainer, pl_module):
        self.seen = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).append(batch["index"].tolist())

    def on_fit_end(self, trainer, pl_module):
        with open(f"batches-rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.seen, f)
'''


@pytest.mark.slow  # two Lightning DDP processes on CPU: ~1-2 minutes on 2 busy cores
@pytest.mark.timeout(600)
def test_streaming_unequal_shards_train_under_two_process_ddp(tmp_path: Path):
    """Shards of 100 and 37 rows, ``streaming: true``, the ddp-cpu preset: both ranks run the same
    number of batches each epoch (a rank with one batch more would abort gloo / hang NCCL)."""
    import subprocess
    import sys

    from experiments.cli import CONFIG_DIR

    write_unequal_shards(tmp_path)
    (tmp_path / "stream.yaml").write_text(UNEQUAL_DDP_YAML)
    (tmp_path / "count_batches.py").write_text(COUNT_BATCHES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "fit", "--config", "stream.yaml",
                           "--config", str(CONFIG_DIR / "presets" / "ddp-cpu.yaml"),
                           "--trainer.callbacks+=count_batches.CountBatches"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"batches-rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        a, b = ([i for batch in r[epoch] for i in batch] for r in ranks)
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == 17  # 69 and 68 rows in batches of 4: 17 each
        assert not set(a) & set(b) and len(set(a) | set(b)) == 136  # one row of 137 waits for the next epoch


def test_streaming_needs_class_names(tmp_path: Path):
    import datasets

    datasets.Dataset.from_list(write_rows(tmp_path)).to_parquet(str(tmp_path / "s.parquet"))
    with pytest.raises(DataError, match="streaming cannot scan every label.*class_names"):
        make_dm(str(tmp_path / "s.parquet"), path="parquet", streaming=True)


# ------------------------------------------------------------------------------ CLI + example

def cli(*args: str) -> None:
    from experiments.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
        raise SystemExit(0)
    assert exit_info.value.code == 0


def test_fit_then_predict_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture):
    from experiments.cli import CONFIG_DIR

    rows = write_rows(tmp_path / "mine")
    write_csv(tmp_path / "mine" / "train.csv", rows[:14])
    write_csv(tmp_path / "mine" / "test.csv", rows[14:])
    monkeypatch.chdir(tmp_path)
    data = ["--config", str(CONFIG_DIR / "fusion" / "files-example.yaml"),
            "--data.init_args.data_files", json.dumps({"train": "mine/train.csv", "test": "mine/test.csv"}),
            "--data.init_args.columns", json.dumps(COLUMNS), "--data.init_args.label_column", "animal",
            "--data.init_args.batch_size", "4", "--data.init_args.val_fraction", "0.25",
            "--model.init_args.num_classes", "3"]
    cli("fit", *data, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1")
    run = tmp_path / "runs" / "files-example"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    cli("predict", *data, "--ckpt_path", "last")
    with open(run / "predictions" / "predictions.csv") as f:
        predicted = list(csv.DictReader(f))
    assert [int(r["index"]) for r in predicted] == [0, 1, 2, 3]  # one row per test row, in order
    assert [r["label_name"] for r in predicted] == [CLASSES[i % 3] for i in range(14, 18)]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4 for r in predicted)


def test_make_files_example_writes_a_manifest_with_relative_paths(tmp_path: Path, data_root: Path):
    """experiments/make_files_example.py writes what the two shipped configs read, as the README runs them."""
    from experiments.make_files_example import make_files_example

    out = make_files_example(tmp_path / "runs" / "files-example-data", n=40, test_fraction=0.2, root=str(data_root))
    with open(out / "train.csv") as f:
        train = list(csv.DictReader(f))
    assert len(train) == 32
    assert all(not os.path.isabs(r["image"]) and (out / r["image"]).is_file() for r in train)
    assert all((out / r["audio"]).is_file() for r in train if r["audio"])
    assert {r["caption"] for r in train} >= {""} and any(r["caption"].startswith("a handwritten ") for r in train)
    # The two shipped configs train on this folder: tests/test_configs.py::test_fast_dev_run.
