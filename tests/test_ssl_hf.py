"""SSL pieces on a user's own data through HFDataModule, on files the tests write themselves:
several label columns feeding a multi-task model (by config, through the CLI), the errors that
name a missing label column, and zero-shot classification with class prompts tokenised by the
datamodule's own tokenizer (``tokenizer`` / ``max_length``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image
from test_hf_datamodule import write_csv
from tiny_encoders import Pixels, TokenBag

from datamodules import HFDataModule
from datamodules.hf import DataError
from fusion import ConcatFusion, ContrastivePretrainer, MultiTaskClassifier

COLOURS = ("red", "green", "blue")
SIZES = ("small", "large")
TEMPLATES = ("a {c} {s} one", "{s} and {c}", "it is {c}, {s}", "{c} {s}")


def two_label_rows(n: int, seed: int) -> list[dict]:
    """A caption naming a colour (string labels) and a size (integer labels 0/1), drawn
    independently, in varied word order; ``owner`` is a column that is no label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c, s = int(rng.integers(3)), int(rng.integers(2))
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        rows.append({"caption": template.format(c=COLOURS[c], s=SIZES[s]), "colour": COLOURS[c], "size": s,
                     "owner": "ann" if i % 2 else "bob"})
    return rows


@pytest.fixture
def two_label_csvs(tmp_path: Path) -> dict[str, str]:
    return {"train": str(write_csv(tmp_path / "mine" / "train.csv", two_label_rows(240, 0))),
            "test": str(write_csv(tmp_path / "mine" / "test.csv", two_label_rows(120, 1)))}


def two_label_dm(files: dict[str, str], **kw) -> HFDataModule:
    kw = {"path": "csv", "data_files": files, "columns": {"text": "caption"}, "label_column": "colour",
          "tokenizer": "byte", "max_length": 24, "batch_size": 32, "val_fraction": 0.2, **kw}
    return HFDataModule(**kw)


# ---------------------------------------------------------------------------------------------- label columns
def test_label_columns_give_one_batch_key_each_with_its_classes(two_label_csvs: dict[str, str]) -> None:
    dm = two_label_dm(two_label_csvs, label_columns={"size": "size", "who": "owner"})
    dm.setup()
    assert dm.label_keys == ("label", "size", "who")
    assert dm.label_classes == {"label": ["blue", "green", "red"], "size": ["0", "1"], "who": ["ann", "bob"]}
    assert dm.modalities == ("text",)  # label keys are no modalities
    batch = dm.splits["test"].get_batch(torch.arange(120))
    rows = two_label_rows(120, 1)
    assert batch["label"].tolist() == [dm.class_names.index(r["colour"]) for r in rows]
    assert batch["size"].tolist() == [r["size"] for r in rows]
    assert batch["who"].tolist() == [1 - i % 2 for i in range(120)]
    assert batch["size"].dtype == batch["who"].dtype == torch.int64
    # The cached arrays serve the same keys and classes to a second datamodule (what DDP ranks read).
    again = two_label_dm(two_label_csvs, label_columns={"size": "size", "who": "owner"})
    again.setup()
    assert again.label_classes == dm.label_classes
    assert torch.equal(again.splits["train"].get_batch(torch.arange(8))["who"],
                       dm.splits["train"].get_batch(torch.arange(8))["who"])


def test_a_list_serves_each_column_under_its_name_and_single_label_is_unchanged(two_label_csvs) -> None:
    listed = two_label_dm(two_label_csvs, label_columns=["size"])
    single = two_label_dm(two_label_csvs)
    listed.setup()
    single.setup()
    b_listed, b_single = (d.splits["train"].get_batch(torch.arange(16)) for d in (listed, single))
    assert set(b_listed) - set(b_single) == {"size"}
    assert set(b_single) == {"text", "label", "index", "present"}
    assert torch.equal(b_listed["label"], b_single["label"]) and single.label_keys == ("label",)
    assert single.label_classes == {"label": ["blue", "green", "red"]}


def test_a_missing_label_column_is_named_with_the_columns_the_data_has(two_label_csvs) -> None:
    dm = two_label_dm(two_label_csvs, label_columns={"size": "sise"})
    with pytest.raises(DataError, match=r"\{'label_columns.size': 'sise'\} not in the dataset; available columns: "
                                        r"\['caption', 'colour', 'size', 'owner'\]"):
        dm.setup()
    with pytest.raises(ValueError, match=r"data.init_args.label_columns.label = 'colour' is not allowed.*'label'"):
        two_label_dm(two_label_csvs, label_columns={"label": "colour"})
    with pytest.raises(ValueError, match=r"label_class_names has \['age'\].*its keys: \['size'\]"):
        two_label_dm(two_label_csvs, label_columns=["size"], label_class_names={"age": ["0", "1"]})
    clash = two_label_dm(two_label_csvs, label_columns={"text": "size"})
    with pytest.raises(DataError, match=r"label_columns key\(s\) \['text'\] are also modalities"):
        clash.setup()
    bad = two_label_dm(two_label_csvs, label_columns=["size"], label_class_names={"size": ["0"]})
    with pytest.raises(DataError, match=r"label 1 \(column 'size'\) is not in class_names \['0'\]"):
        bad.setup()


def test_streamed_label_columns_need_their_classes_and_then_carry_their_keys(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    datasets.Dataset.from_list(two_label_rows(40, 0)).to_parquet(str(tmp_path / "s.parquet"))
    files = {"train": str(tmp_path / "s.parquet")}
    common = dict(path="parquet", streaming=True, class_names=list(COLOURS), label_columns={"big": "size"})
    with pytest.raises(DataError, match=r"column 'size'.*label_class_names: \{big: \[...\]\}"):
        two_label_dm(files, **common).setup()
    dm = two_label_dm(files, **common, label_class_names={"big": ["1", "0"]})  # "1" (large) is class 0
    dm.setup()
    assert dm.label_classes["big"] == ["1", "0"]
    seen = 0
    for batch in dm.train_dataloader():
        for ids, mask, big in zip(batch["text"]["input_ids"], batch["text"]["attention_mask"], batch["big"].tolist()):
            caption = bytes((ids[mask.bool()][1:-1] - 3).tolist()).decode()  # the byte tokenizer's ids
            assert ("large" in caption) == (big == 0), (caption, big)
            seen += 1
    assert seen == 40


def test_a_label_budget_on_hf_data_is_stratified_seeded_and_keeps_every_label_key(two_label_csvs) -> None:
    full = two_label_dm(two_label_csvs, label_columns=["size"])
    full.setup()
    whole = full.splits["train"].get_batch(torch.arange(len(full.splits["train"])))
    dm = two_label_dm(two_label_csvs, label_columns=["size"], labels_per_class=10, budget_seed=5)
    dm.setup()
    train = dm.splits["train"].get_batch(torch.arange(len(dm.splits["train"])))
    assert len(train["label"]) == 30 and torch.bincount(train["label"]).tolist() == [10, 10, 10]
    keep = np.setdiff1d(np.arange(len(whole["label"])), dm.unlabelled_rows.numpy())
    assert len(keep) + len(dm.unlabelled_rows) == len(whole["label"]) == 192  # 240 rows less 20 % for val
    for key in ("label", "size", "index"):  # every key of a kept row travels with it
        assert torch.equal(train[key], whole[key][keep]), key
    assert torch.equal(train["text"]["input_ids"], whole["text"]["input_ids"][keep])
    assert len(dm.splits["val"]) == len(full.splits["val"]) and len(dm.splits["test"]) == 120
    same = two_label_dm(two_label_csvs, label_columns=["size"], labels_per_class=10, budget_seed=5)
    other = two_label_dm(two_label_csvs, label_columns=["size"], labels_per_class=10, budget_seed=6)
    tenth = two_label_dm(two_label_csvs, label_fraction=0.1)
    for d in (same, other, tenth):
        d.setup()
    assert torch.equal(same.unlabelled_rows, dm.unlabelled_rows)
    assert not torch.equal(other.unlabelled_rows, dm.unlabelled_rows)
    assert len(tenth.splits["train"]) == 19  # round(0.1 * 192)
    with pytest.raises(ValueError, match=r"label_fraction need every training label.*streaming: false"):
        two_label_dm(two_label_csvs, streaming=True, labels_per_class=3)


def test_hf_label_columns_train_both_heads_of_a_multitask_model_by_config(two_label_csvs, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The config's tasks read the datamodule's label keys; each head learns its own label."""
    from experiments.cli import FusegenCLI

    config = {
        "experiment": "hf-multitask", "seed_everything": 0,
        "trainer": {"max_epochs": 6, "accelerator": "cpu", "enable_progress_bar": False},
        "model": {"class_path": "fusion.MultiTaskClassifier", "init_args": {
            "encoders": {"text": {"class_path": "fusion.RNNEncoder", "init_args": {
                "cell": "gru", "vocab_size": 259, "embed_dim": 16, "hidden_size": 32}}},
            "fusion": {"class_path": "fusion.ConcatFusion"},
            "tasks": [{"name": "colour", "num_classes": 3, "label_key": "label"},
                      {"name": "size", "num_classes": 2, "label_key": "size"}],
            "dropout": 0.0,
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}},
        "data": {"class_path": "datamodules.HFDataModule", "init_args": {
            "path": "csv", "data_files": two_label_csvs, "columns": {"text": "caption"}, "label_column": "colour",
            "label_columns": {"size": "size"}, "tokenizer": "byte", "max_length": 24, "batch_size": 32}},
    }
    path = tmp_path / "multitask.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = FusegenCLI(args=["fit", "--config", str(path)])
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["test/colour/acc"] > 0.85 and metrics["test/size/acc"] > 0.85, metrics  # chance 0.33 / 0.5
    assert (tmp_path / "runs" / "hf-multitask" / "pictures" / "confusion_matrix_size.png").is_file()


def test_a_task_the_datamodule_cannot_serve_fails_before_training(two_label_csvs, tmp_path: Path) -> None:
    def fit(tasks: list[dict]) -> None:
        model = MultiTaskClassifier({"text": TokenBag()}, ConcatFusion, tasks)
        trainer = pl.Trainer(max_steps=1, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
                             enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(model, datamodule=two_label_dm(two_label_csvs, label_columns=["size"]))

    with pytest.raises(KeyError, match=r"task 'who' reads batch\['owner'\], which HFDataModule does not serve; its "
                                       r"label keys: \['label', 'size'\]"):
        fit([{"name": "colour", "num_classes": 3}, {"name": "who", "num_classes": 2, "label_key": "owner"}])
    with pytest.raises(ValueError, match=r"task 'colour' has num_classes = 2 but HFDataModule's 'label' has 3 "
                                         r"classes \['blue', 'green', 'red'\]"):
        fit([{"name": "colour", "num_classes": 2}, {"name": "size", "num_classes": 2, "label_key": "size"}])


# ---------------------------------------------------------------------------------------------- zero-shot
SHAPES = ("bar", "dot", "ring")


def shape_image(c: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grey picture of class ``c`` (a bar, a dot or a ring) at a random brightness, with noise."""
    img = np.zeros((8, 8))
    if c == 0:
        img[3:5, 1:7] = 1
    elif c == 1:
        img[3:5, 3:5] = 1
    else:
        img[1:7, 1:7], img[2:6, 2:6] = 1, 0
    img = img * rng.uniform(0.6, 1.0) + 0.15 * rng.random((8, 8))
    return (255 * img.clip(0, 1)).astype(np.uint8)


def captioned_images(folder: Path, n: int, seed: int) -> Path:
    """PNGs and a manifest: each image captioned ``a photo of a <shape>``; a quarter of the
    captions are empty (the image is still a test sample)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = int(rng.integers(3))
        Image.fromarray(shape_image(c, rng), "L").save(folder / "img" / f"{seed}-{i}.png")
        rows.append({"picture": f"img/{seed}-{i}.png", "caption": "" if i % 4 == 3 else f"a photo of a {SHAPES[c]}",
                     "shape": SHAPES[c]})
    return write_csv(folder / f"{seed}.csv", rows)


def test_zero_shot_through_an_hf_caption_column(tmp_path: Path) -> None:
    """Class prompts ``a photo of a <class name>`` go through the datamodule's byte tokenizer at its
    ``max_length`` and the text encoder; images are classified by the nearest prompt."""
    files = {"train": str(captioned_images(tmp_path / "data", 300, 0)),
             "validation": str(captioned_images(tmp_path / "data", 150, 1))}
    dm = HFDataModule(path="csv", data_files=files, columns={"image": "picture", "text": "caption"},
                      label_column="shape", image_size=8, tokenizer="byte", max_length=24, batch_size=50)
    torch.manual_seed(0)
    model = ContrastivePretrainer({"image": Pixels(64), "text": TokenBag()}, embed_dim=16,
                                  prompt_template="a photo of a {}", picture_points=0,
                                  optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(max_epochs=6, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    before = model.last_metrics["val/zero_shot/image/acc"]
    assert model.class_prompts() == ["a photo of a bar", "a photo of a dot", "a photo of a ring"]
    tokens = model._tokenize(model.class_prompts())
    assert tokens["input_ids"].shape == (3, 24)  # the datamodule's max_length
    trainer.fit(model, datamodule=dm)
    m = model.last_metrics
    assert m["val/zero_shot/chance"] < 0.45 and m["val/zero_shot/image/acc"] > 0.9 > before + 0.2, (before, m)
    # The prompts decide the class: the same words in another order make every image a wrong class.
    model.class_words = ["dot", "ring", "bar"]
    trainer.validate(model, datamodule=dm, verbose=False)
    assert model.last_metrics["val/zero_shot/image/acc"] < 0.1, model.last_metrics
