"""Any image data: a conditional GAN on a tiny RGB image folder learns the class colours; a
datamodule whose images do not fit the networks is refused naming both keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules import HFDataModule
from experiments.make_shapes_example import CLASSES, make_shapes_example
from generative import GAN, Discriminator, Generator

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
         "devices": 1, "enable_checkpointing": False, "num_sanity_val_steps": 0, "limit_val_batches": 0}


def _hue_channel(colour: tuple[int, int, int]) -> int:
    return int(torch.tensor(colour).argmax())


def _class_hues(model: GAN, num_classes: int, n: int = 60) -> list[int]:
    """For each class: the channel by which its samples' mean colour most exceeds all samples' mean."""
    torch.manual_seed(1)
    labels = torch.arange(n) % num_classes
    images = model.sample(torch.randn(n, model.nz), F.one_hot(labels, num_classes).float())
    overall = images.mean(dim=(0, 2, 3))
    return [int((images[labels == k].mean(dim=(0, 2, 3)) - overall).argmax()) for k in range(num_classes)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_example(tmp_path_factory.mktemp("shapes"), n=240, size=16, test_fraction=0.25)


def test_conditional_gan_learns_the_colours_of_an_rgb_folder(shapes: Path, tmp_path: Path) -> None:
    """HFDataModule(imagefolder, RGB) + label-conditional DCGAN with data_range [0, 1]: after 200 steps
    each class's samples lean toward that class's colour (red disc, green square, blue triangle).
    Before the discriminator's class embedding was initialised at the convs' scale, samples stayed grey."""
    pl.seed_everything(0)
    dm = HFDataModule(path="imagefolder", data_dir=str(shapes), image_size=16, image_channels=3, batch_size=30)
    kw = {"channels": 3, "image_size": 16, "cond_dim": 3}
    model = GAN(Generator(nz=32, ngf=16, **kw), Discriminator(ndf=16, **kw), condition="label", num_classes=3,
                data_range=(0.0, 1.0), ema_decay=None, grid_every_n_epochs=0)
    wanted = [_hue_channel(CLASSES[name][0]) for name in sorted(CLASSES)]  # imagefolder sorts class folders
    trainer = pl.Trainer(max_steps=2 * 200, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, datamodule=dm)
    assert dm.class_names == sorted(CLASSES)
    assert _class_hues(model, 3) == wanted
    images = model.sample(torch.randn(30, model.nz), F.one_hot(torch.arange(30) % 3, 3).float())
    assert images.mean() < -0.1, float(images.mean())  # darker than the initial mid-grey (0): dark backgrounds


def test_datamodule_and_networks_must_agree_on_channels_and_size(shapes: Path, tmp_path: Path) -> None:
    dm = HFDataModule(path="imagefolder", data_dir=str(shapes), image_size=16, image_channels=3, batch_size=8)
    grey = GAN(Generator(ngf=8, channels=1, image_size=16), Discriminator(ndf=8, channels=1, image_size=16),
               grid_every_n_epochs=0)
    with pytest.raises(ValueError, match=r"data.init_args.image_channels is 3 but model.init_args.generator"
                                         r".init_args.channels is 1"):
        pl.Trainer(max_steps=1, default_root_dir=tmp_path, **QUIET).fit(grey, datamodule=dm)
    big = GAN(Generator(ngf=8, channels=3, image_size=32), Discriminator(ndf=8, channels=3, image_size=32),
              grid_every_n_epochs=0)
    with pytest.raises(ValueError, match=r"data.init_args.image_size is 16 but model.init_args.generator"
                                         r".init_args.image_size is 32"):
        pl.Trainer(max_steps=1, default_root_dir=tmp_path, **QUIET).fit(big, datamodule=dm)
