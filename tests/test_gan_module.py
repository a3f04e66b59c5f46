"""GAN LightningModule: learning on real MNIST, exact resume, config checks, DDP flag check."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules import SyntheticMultimodalDataModule
from generative import GAN, Discriminator, Generator
from generative.metrics import DigitFeatures, SampleMetrics

# One small classifier recipe for every test, so the session cache trains it once (seconds).
TEST_CLASSIFIER = {"epochs": 1, "train_limit": 2048}  # a quick digit classifier, trained once per session
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
         "devices": 1}


class SimulatedKill(RuntimeError):
    pass


class Recorder(pl.Callback):
    """Records each iteration's losses; optionally 'kills' the run at a given iteration."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.losses: dict[int, tuple[float, float]] = {}
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration == self.crash_at:
            raise SimulatedKill(f"killed at iteration {self.crash_at}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss_g = outputs.get("loss_g", torch.tensor(0.0))
        self.losses[pl_module.iteration - 1] = (outputs["loss_d"].item(), loss_g.item())


def _tiny_gan(**kw) -> GAN:
    return GAN(Generator(ngf=8), Discriminator(ndf=8), metrics=None, grid_every_n_epochs=0, ema_decay=0.9, **kw)


def _fit(tmp_path, max_epochs: int, crash_at: int | None = None, ckpt_path: str | None = None):
    pl.seed_everything(0)
    model, rec = _tiny_gan(), Recorder(crash_at)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(max_epochs=max_epochs, limit_val_batches=0, callbacks=[rec, ckpt],
                         default_root_dir=tmp_path, **QUIET)
    dm = SyntheticMultimodalDataModule(num_train=128, num_val=32, num_test=32, batch_size=32)
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    except SimulatedKill:
        pass
    return model, trainer, rec


def test_kill_and_resume_continues_exactly(tmp_path) -> None:
    # Uninterrupted: 4 epochs x 4 batches.
    full, full_trainer, full_rec = _fit(tmp_path / "a", max_epochs=4)
    # Killed mid-epoch 2 (iteration 10); the last checkpoint is from the end of epoch 1.
    _, killed_trainer, killed_rec = _fit(tmp_path / "b", max_epochs=4, crash_at=10)
    assert max(killed_rec.losses) == 9 and killed_trainer.current_epoch == 2
    resumed, resumed_trainer, resumed_rec = _fit(tmp_path / "b", max_epochs=4,
                                                 ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    # The resumed run picks up at iteration 8 and its losses continue the uninterrupted run's.
    assert min(resumed_rec.losses) == 8
    for it in range(8, 16):
        assert resumed_rec.losses[it] == pytest.approx(full_rec.losses[it], rel=1e-5, abs=1e-6), it
    assert resumed_trainer.global_step == full_trainer.global_step == 32  # D + G step per batch
    assert resumed.iteration == full.iteration == 16
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name  # G, D and EMA weights (+ n_averaged)
    for opt_a, opt_b in zip(full_trainer.optimizers, resumed_trainer.optimizers):
        for sa, sb in zip(opt_a.state_dict()["state"].values(), opt_b.state_dict()["state"].values()):
            assert torch.allclose(sa["exp_avg"], sb["exp_avg"], atol=1e-6) and sa["step"] == sb["step"]


def test_bad_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="cond_dim: 10"):
        GAN(Generator(ngf=8), Discriminator(ndf=8), condition="label")
    with pytest.raises(ValueError, match="model.init_args.loss = 'wasserstein' is not allowed"):
        GAN(Generator(ngf=8), Discriminator(ndf=8), loss="wasserstein")
    with pytest.raises(ValueError, match="condition_encoder"):
        GAN(Generator(ngf=8, cond_dim=64), Discriminator(ndf=8, cond_dim=64), condition="audio")


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_losses_train_and_clip(tmp_path, loss: str) -> None:
    pl.seed_everything(0)
    model = GAN(Generator(ngf=8), Discriminator(ndf=8, batch_norm=loss != "wgan-gp"), loss=loss,
                n_critic=2 if loss == "wgan-gp" else 1, gradient_clip_val=0.5, metrics=None, grid_every_n_epochs=0)
    rec = Recorder()
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, callbacks=[rec], default_root_dir=tmp_path,
                         enable_checkpointing=False, **{k: v for k, v in QUIET.items()})
    with pytest.MonkeyPatch.context() as mp:  # record the clipped norm that reaches each optimizer
        norms = []
        orig = model.clip_gradients

        def spy(opt, gradient_clip_val=None, gradient_clip_algorithm=None):
            orig(opt, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
            params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item())

        mp.setattr(model, "clip_gradients", spy)
        trainer.fit(model, datamodule=SyntheticMultimodalDataModule(num_train=128, num_val=32, batch_size=32))
    assert norms and max(norms) <= 0.5 + 1e-4
    steps_g = (model.iteration // model.hparams.n_critic)
    assert trainer.global_step == model.iteration + steps_g
    assert len({round(v[0], 4) for v in rec.losses.values()}) > 3  # losses move


def test_conditional_dcgan_learns_mnist(data_root, in_tmp) -> None:
    """A tiny class-conditional DCGAN, 300 batches of real MNIST (lr 1e-3 for speed): FID and KID on
    the digit-classifier features fall and the classifier reads the requested digit above chance."""
    from datamodules import MNISTDataModule

    pl.seed_everything(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    model = GAN(Generator(ngf=16, cond_dim=10), Discriminator(ndf=16, cond_dim=10), loss="bce", condition="label",
                ema_decay=None, optimizer_g=adam, optimizer_d=adam,
                metrics=SampleMetrics(DigitFeatures(**TEST_CLASSIFIER), metrics=["fid", "kid"], kid_subsets=10))
    dm = MNISTDataModule(batch_size=64, train_limit=64 * 50)
    trainer = pl.Trainer(max_epochs=6, limit_val_batches=4, num_sanity_val_steps=0, enable_checkpointing=False,
                         default_root_dir=in_tmp, **QUIET)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert after["val/fid"] < 0.75 * before["val/fid"], (before, after)
    assert after["val/kid"] < before["val/kid"], (before, after)
    # 256 samples at chance (0.1) have a standard deviation of 0.019: above 0.2 is > 5 of them. Measured
    # (seed 0): agreement 0.11 -> 0.28 after 300 batches with D's class embedding at N(0, 0.02) (0.15-0.21
    # after 150; nn.Linear's default init learns MNIST faster but leaves an RGB GAN grey: docs/generative.md).
    assert before["val/agreement"] < 0.15 and after["val/agreement"] > 0.2, (before, after)
    # The per-epoch sample grids and the interpolation grid, in the run folder's pictures/.
    pictures = in_tmp / "pictures"
    assert sorted(p.name for p in (pictures / "samples").glob("*.png")) == [f"epoch_{e:03d}.png" for e in range(6)]
    assert (pictures / "interpolation.png").is_file()
    from PIL import Image

    with Image.open(pictures / "samples" / "epoch_005.png") as grid:  # 10 x 10 digits of 28 px, 2 px padding
        assert grid.size == (10 * 30 + 2, 10 * 30 + 2)


DDP_SCRIPT = """
import pytorch_lightning as pl
from datamodules import SyntheticMultimodalDataModule
from generative import GAN, Discriminator, Generator

for strategy in ("ddp", "ddp_find_unused_parameters_true"):
    pl.seed_everything(0)
    model = GAN(Generator(ngf=8), Discriminator(ndf=8), metrics=None, grid_every_n_epochs=0, ema_decay=0.9)
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_steps=4, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    try:
        trainer.fit(model, datamodule=SyntheticMultimodalDataModule(num_train=64, num_val=16, num_test=16,
                                                                     batch_size=16))
        print(strategy, "trained", trainer.global_step)
    except RuntimeError as err:
        print(strategy, "refused:", err)
"""


def test_ddp_without_unused_parameters_flag_is_refused_with_the_fix(tmp_path) -> None:
    """A one-process gloo DDP run: plain `ddp` stops at fit start naming the strategy to use; the
    registered `ddp_find_unused_parameters_true` trains."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", DDP_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ddp refused: GAN under DDP" in out.stdout and "strategy: ddp_find_unused_parameters_true" in out.stdout
    assert "ddp_find_unused_parameters_true trained 4" in out.stdout
