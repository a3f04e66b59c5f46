"""`fusegen predict` on a GAN writes PNG files a user can open, plus a grid, under the run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

CONFIG = """
experiment: tiny-gan
trainer:
  max_steps: 4
  limit_val_batches: 0
  enable_progress_bar: false
model:
  class_path: generative.GAN
  init_args:
    condition: label
    generator: {class_path: generative.Generator, init_args: {ngf: 8, cond_dim: 10}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8, cond_dim: 10}}
    metrics: null
    ema_decay: 0.9
    num_predictions: 12
    labels: [3, 7]
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 64, num_val: 16, num_test: 32, batch_size: 8}
"""


def _fusegen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_predict_writes_requested_images_and_grid(tmp_path: Path) -> None:
    config = tmp_path / "tiny-gan.yaml"
    config.write_text(CONFIG)
    fit = _fusegen("fit", "--config", str(config), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = tmp_path / "runs" / "tiny-gan" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # Pictures of the fit: the same pictures/ folder as every family.
    assert (tmp_path / "runs" / "tiny-gan" / "pictures" / "samples" / "epoch_000.png").is_file()
    assert (tmp_path / "runs" / "tiny-gan" / "pictures" / "interpolation.png").is_file()

    # A user samples from the trained GAN in a few lines: the networks are rebuilt from the saved config.
    import torch

    from generative import GAN

    gan = GAN.load_from_checkpoint(ckpt, map_location="cpu")
    images = gan.sample(torch.randn(6, gan.nz), torch.nn.functional.one_hot(torch.tensor([7] * 6), 10).float())
    assert images.shape == (6, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(gan.generator.main[0].weight, torch.load(ckpt, weights_only=True)["state_dict"][
        "generator.main.0.weight"])

    out = _fusegen("predict", "--config", str(config), "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "runs" / "tiny-gan" / "predictions"
    assert f"wrote 12 generated images and grid.png to {folder.relative_to(tmp_path)}" in out.stdout
    pngs = sorted(p for p in folder.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 12
    # Row index, then the requested class, cycling 3, 7, 3, ...
    suffixes = [p.stem.split("_", 1)[1] for p in pngs]
    assert [p.stem.split("_")[0] for p in pngs] == [f"{i:05d}" for i in range(12)]
    assert suffixes[0::2] == [suffixes[0]] * 6 and suffixes[1::2] == [suffixes[1]] * 6 and suffixes[0] != suffixes[1]
    assert "3" in suffixes[0] and "7" in suffixes[1]
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (28, 28)
    with Image.open(folder / "grid.png") as grid:  # 12 images, 10 per row: 2 rows of 28 px, 2 px padding
        assert grid.size == (10 * 30 + 2, 2 * 30 + 2)
