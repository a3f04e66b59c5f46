"""What a user takes away from a trained classifier: ``fusegen predict``'s predictions.csv and
``fusion.features.extract_features`` (pooled features + labels, a file a probe can read)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datamodules import SyntheticMultimodalDataModule
from experiments.cli import FusegenCLI
from fusion import FusionClassifier, SmallCNNImageEncoder
from fusion.features import extract_features
from fusion.prediction import prediction_rows

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments/fusion/synthetic-concat.yaml"
TINY = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.num_train", "256", "--data.init_args.num_val", "32", "--data.init_args.num_test", "40",
        "--data.init_args.batch_size", "16",
        "--model.init_args.encoders.image.init_args.width", "8",
        "--model.init_args.encoders.audio.init_args.width", "8"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """synthetic-concat trained for one short epoch through the CLI; returns the root folder."""
    root = tmp_path_factory.mktemp("runs")
    FusegenCLI(args=["fit", "--config", str(CONFIG), *TINY, "--trainer.default_root_dir", str(root),
                     "--trainer.max_epochs", "1"])
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_one_csv_row_per_input(fitted, capsys):
    ckpt = fitted / "synthetic-concat" / "checkpoints" / "last.ckpt"
    cli = FusegenCLI(args=["predict", "--config", str(CONFIG), *TINY, "--trainer.default_root_dir", str(fitted),
                           "--ckpt_path", str(ckpt)])
    out = fitted / "synthetic-concat" / "predictions" / "predictions.csv"
    assert f"to {out}" in capsys.readouterr().out  # says where it wrote
    rows = read_csv(out)
    assert len(rows) == 40  # the predict split (the test split: 40 samples, last batch partial)
    assert [int(r["index"]) for r in rows] == list(range(40))
    names = getattr(cli.datamodule, "class_names", None) or [str(i) for i in range(10)]
    prob_columns = [f"p_{n}" for n in names]
    assert list(rows[0]) == ["index", "predicted", "predicted_name", "label", "label_name", *prob_columns]
    probs = torch.tensor([[float(r[c]) for c in prob_columns] for r in rows])
    torch.testing.assert_close(probs.sum(1), torch.ones(40), atol=1e-4, rtol=0)
    assert [int(r["predicted"]) for r in rows] == probs.argmax(1).tolist()
    assert all(r["predicted_name"] == names[int(r["predicted"])] for r in rows)
    # The rows are the model's own predictions on those inputs, in dataset order.
    model = FusionClassifier.load_from_checkpoint(ckpt).eval()
    dm = cli.datamodule
    labels = []
    with torch.no_grad():
        expected = torch.cat([model(b).softmax(-1) for b in dm.predict_dataloader()])
        labels = torch.cat([b["label"] for b in dm.predict_dataloader()])
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert not list(out.parent.glob(".*"))  # no temp file left behind


def test_prediction_rows_use_batch_ids_and_class_names():
    outs = [{"probs": torch.tensor([[0.9, 0.1], [0.2, 0.8]]), "id": ["a.wav", "b.wav"]},
            {"probs": torch.tensor([[0.4, 0.6]]), "id": ["c.wav"]}]
    header, rows = prediction_rows(outs, [[0, 1], [2]], ["cat", "dog"])
    assert header == ["id", "predicted", "predicted_name", "p_cat", "p_dog"]
    assert [r[:3] for r in rows] == [["a.wav", 0, "cat"], ["b.wav", 1, "dog"], ["c.wav", 1, "dog"]]
    # Without ids: the dataset indices Lightning tracked; without names: the class index.
    header, rows = prediction_rows([{"probs": torch.tensor([[0.3, 0.7]])}], [[17]], None)
    assert header == ["index", "predicted", "predicted_name", "p_0", "p_1"] and rows[0][:3] == [17, 1, "1"]


def test_extract_features_from_an_encoder_and_a_whole_model_support_a_probe(fitted, tmp_path):
    model = FusionClassifier.load_from_checkpoint(fitted / "synthetic-concat" / "checkpoints" / "last.ckpt")
    dm = SyntheticMultimodalDataModule(num_train=300, num_val=16, num_test=200, batch_size=64, seed=3)
    encoder = model.encoders["image"]
    x, y = extract_features(encoder, dm, split="train", modality="image")
    assert x.shape == (300, encoder.out_dim) and y.shape == (300,)
    assert encoder.training  # the caller's mode is restored
    xt, yt = extract_features(encoder, dm, split="test", modality="image", out=tmp_path / "probe")
    saved = load_file(tmp_path / "probe" / "features.safetensors")
    torch.testing.assert_close(saved["features"], xt)
    assert torch.equal(saved["labels"], yt)
    probe = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(probe.parameters(), lr=0.02)
    mean, std = x.mean(0), x.std(0) + 1e-6
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe((x - mean) / std), y).backward()
        opt.step()
    acc = (probe((xt - mean) / std).argmax(1) == yt).float().mean().item()
    assert acc > 0.2, f"linear probe on image features: {acc:.2f} (chance 0.10)"
    fused, labels = extract_features(model, dm, split="test")
    assert fused.shape == (200, model.fusion.out_dim) and torch.equal(labels, yt)
    # Samples whose modality is absent are left out of an encoder's features.
    missing = SyntheticMultimodalDataModule(num_train=16, num_val=16, num_test=100, batch_size=50, missing_prob=0.3)
    xm, ym = extract_features(encoder, missing, split="test", modality="image", pooling="max")
    assert 40 < len(xm) < 100 and len(xm) == len(ym)
    with pytest.raises(ValueError, match="name the modality"):
        extract_features(SmallCNNImageEncoder(width=8), dm)
