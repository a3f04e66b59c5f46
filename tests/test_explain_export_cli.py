"""``fusegen explain`` and ``fusegen export`` on a tiny checkpoint this module trains, and their bad input."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fusion.export import onnx_session

CONFIG = """\
experiment: tiny-ship
trainer: {max_epochs: 1, limit_val_batches: 1, enable_progress_bar: false, enable_model_summary: false}
model:
  class_path: fusion.FusionClassifier
  init_args:
    num_classes: 10
    encoders:
      image: {class_path: fusion.LeNetImageEncoder, init_args: {channels: 2, additional_layers: 1, out_dim: 8}}
      audio: {class_path: fusion.AudioEncoder, init_args: {width: 2, blocks: 1, out_dim: 8}}
    fusion: {class_path: fusion.AttentionFusion, init_args: {d_model: 8, num_heads: 2}}
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 96, num_val: 32, num_test: 64, batch_size: 32}
"""

IMAGE_ONLY = """\
from datamodules import SyntheticMultimodalDataModule


class ImageOnly(SyntheticMultimodalDataModule):
    modalities = ("image",)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding tiny.yaml and runs/tiny-ship/checkpoints/last.ckpt, trained for one epoch."""
    from experiments.cli import main

    folder = tmp_path_factory.mktemp("ship")
    (folder / "tiny.yaml").write_text(CONFIG)
    (folder / "imageonly.py").write_text(textwrap.dedent(IMAGE_ONLY))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", "tiny.yaml"])
            raise SystemExit(0)
    assert done.value.code == 0 and (folder / "runs/tiny-ship/checkpoints/last.ckpt").is_file()
    return folder


def test_explain_writes_contributions_and_pictures(trained, monkeypatch, cli_exit):
    monkeypatch.chdir(trained)
    code, out, err = cli_exit("explain", "--config", "tiny.yaml", "--ckpt_path", "last")
    assert code == 0, err
    folder = trained / "runs/tiny-ship/explanations"
    with open(folder / "modality_contributions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows][0] == "all" and len(rows) >= 3
    assert {"image", "audio", "loo_image", "loo_audio"} <= set(rows[0])
    total = float(rows[0]["image"]) + float(rows[0]["audio"])
    assert total == pytest.approx(float(rows[0]["accuracy"]) - float(rows[0]["accuracy_none"]), abs=1e-5)
    for name in ("modality_contributions", "attention_by_class", "attention_samples", "attributions"):
        assert (folder / f"{name}.png").stat().st_size > 1000
    assert "Shapley" in out and "completeness gap" in out


def test_export_writes_a_checked_program(trained, monkeypatch, cli_exit):
    monkeypatch.chdir(trained)
    code, out, err = cli_exit("export", "--config", "tiny.yaml", "--ckpt_path", "last", "--batch_size", "4",
                              "--format", "torch-export")
    assert code == 0, err
    assert "max abs difference from PyTorch on a real batch of 4" in out
    assert float(out.split("real batch of 4: ")[1].split()[0]) <= 1e-4
    assert (trained / "runs/tiny-ship/export/model.pt2").stat().st_size > 0


@pytest.mark.slow  # the ONNX exporter takes ~30 s on this model (log-mel front end + attention); ONNX parity
def test_export_writes_a_checked_onnx_graph(trained, monkeypatch, cli_exit):  # itself: tests/test_export.py
    monkeypatch.chdir(trained)
    code, out, err = cli_exit("export", "--config", "tiny.yaml", "--ckpt_path", "last", "--batch_size", "4")
    assert code == 0, err
    assert "max abs difference from PyTorch on a real batch of 4" in out
    diff = float(out.split("real batch of 4: ")[1].split()[0])
    assert diff <= 1e-4
    session = onnx_session(trained / "runs/tiny-ship/export/model.onnx")
    names = [i.name for i in session.get_inputs()]
    assert names == ["image", "audio", "present_image", "present_audio"]
    logits = session.run(None, {"image": np.zeros((2, 1, 28, 28), np.float32),
                                "audio": np.zeros((2, 4000), np.float32),  # the synthetic clips
                                "present_image": np.ones(2, bool), "present_audio": np.zeros(2, bool)})[0]
    assert logits.shape == (2, 10)


def test_missing_checkpoint_and_missing_modality_are_named(trained, monkeypatch, cli_exit):
    monkeypatch.chdir(trained)
    code, _, err = cli_exit("export", "--config", "tiny.yaml", "--ckpt_path", "runs/nope.ckpt")
    assert code == 1 and "runs/nope.ckpt: no such file" in err and "fusegen fit" in err
    code, _, err = cli_exit("explain", "--config", "tiny.yaml", "--ckpt_path", "last",
                            "--data.class_path", "imageonly.ImageOnly")
    assert code == 1 and "the model uses ['audio']" in err and "ImageOnly.modalities" in err
