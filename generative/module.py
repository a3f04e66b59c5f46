"""The ``GAN`` LightningModule: adversarial training, EMA sampling, validation metrics, predictions.

Lightning 2.x *manual* optimisation (``automatic_optimization = False``): one ``training_step``
does a discriminator (critic) update and, every ``n_critic`` batches, a generator update, each
inside ``toggle_optimizer``/``untoggle_optimizer`` so the other network's parameters are frozen
and get no gradients. The step order follows pytorch/examples' dcgan ``main.py``: the fake batch
is generated once, the discriminator sees it detached, the generator step reuses it. The loss
terms are the pure functions of ``generative.losses``.

Notes:
- ``trainer.global_step`` counts *optimizer* steps: with ``n_critic=1`` it advances by 2 per
  batch (D and G). ``self.iteration`` counts batches (it is saved in checkpoints).
- Gradient clipping: the Trainer's ``gradient_clip_val`` is not allowed with manual
  optimisation; set this module's ``gradient_clip_val`` (applied via ``self.clip_gradients``).
- Checkpoints hold G, D, EMA weights, the frozen condition encoder, both optimiser states, the
  step counters and (for a bit-exact resume on one process) the CPU random state.
- Under DDP each backward pass reaches only one network, so DDP must be told to expect unused
  parameters: ``strategy: ddp_find_unused_parameters_true`` (checked at fit start).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from datamodules.checks import check_choice, check_int, check_real, check_value
from fusion.artifacts import FrozenModule
from fusion.module import is_plain_data
from generative.augment import diff_augment, parse_policy
from generative.conditioning import load_condition_encoder, pooled_unit_norm
from generative.ema import get_ema_warmup_multi_avg_fn
from generative.losses import LOSSES, LossName, discriminator_loss, generator_loss, gradient_penalty
from generative.metrics.sample_metrics import SampleMetrics


def _dcgan_adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class GAN(pl.LightningModule):
    """Unconditional or conditional GAN.

    Args:
        generator / discriminator: networks (e.g. ``generative.Generator``/``Discriminator``);
            for a conditional GAN both must have ``cond_dim`` equal to the condition size.
        loss: ``bce`` (non-saturating), ``hinge`` or ``wgan-gp`` (critic + gradient penalty);
            see ``generative.losses``.
        n_critic: discriminator updates per generator update (5 is usual for WGAN-GP).
        gp_weight: gradient-penalty weight (WGAN-GP only).
        optimizer_g / optimizer_d: injected from the config; default Adam(2e-4, betas 0.5/0.999).
        condition: ``None`` (unconditional), ``"label"`` (one-hot class) or a batch key such as
            ``"audio"`` embedded by ``condition_encoder`` (frozen; mean-pooled, unit norm).
        num_classes: classes of a label-conditional GAN (and of the metrics' agreement).
        condition_encoder: any fusion encoder (``forward(x) -> [B, T, D]``, ``out_dim``).
        encoder_checkpoint: fusion checkpoint whose ``encoders.<condition>.*`` weights are loaded
            into ``condition_encoder`` at construction (``experiments/gan/speech-encoder.yaml``
            writes one); ``None``: keep random weights (smoke tests only; a warning says so).
        gradient_clip_val: clip each network's gradient norm to this (``None``: no clipping).
        ema_decay: keep an exponential moving average of G's weights and sample from it
            (``None``: sample from G itself).
        ema_warmup: ramp the EMA decay up as ``min(ema_decay, (1 + t) / (10 + t))`` after ``t``
            updates (``generative.ema.ema_decay_at``); ``False``: constant ``ema_decay``.
        condition_noise: "conditioning augmentation" (StackGAN, Zhang et al. 2017) for encoder
            conditions: during training add N(0, condition_noise^2) to each unit-norm condition
            vector and renormalise, so G also draws clean images near (not only at) the training
            inputs' embeddings, where an unseen speaker's embeddings land. 0: off; labels never.
        metrics: the evaluation at validation and test time, e.g. ``generative.metrics.SampleMetrics(
            features=DigitFeatures(), metrics=[fid, kid, precision_recall, density_coverage])``;
            ``None``: none (losses only). Not saved in checkpoints: it is an evaluation choice.
        diffaugment: DiffAugment policies (Zhao et al. 2020) applied to every image D sees, real and
            fake, in both steps, e.g. ``"color,translation,cutout"`` (``None``: off); for small data.
        grid_every_n_epochs: sample-grid PNG cadence (0: no sample or interpolation grids).
        image_key: the batch key of the images to generate.
        data_range: value range of the dataset's images (AV-MNIST: ``[0, 1]``); they are mapped
            to the generator's tanh range [-1, 1], which the metrics' classifier also expects.
        num_predictions: how many images ``fusegen predict`` generates (at most one per row of
            the datamodule's predict split).
        labels: classes to generate in ``fusegen predict`` (label-conditional GANs), cycled, e.g.
            ``[3, 3, 7]``; ``None``: the predict batch's own labels.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: LossName = "bce",
        n_critic: int = 1,
        gp_weight: float = 10.0,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        condition: str | None = None,
        num_classes: int = 10,
        condition_encoder: nn.Module | None = None,
        encoder_checkpoint: str | None = None,
        gradient_clip_val: float | None = None,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
        condition_noise: float = 0.0,
        metrics: SampleMetrics | None = None,
        diffaugment: str | None = None,
        grid_every_n_epochs: int = 1,
        image_key: str = "image",
        data_range: tuple[float, float] = (-1.0, 1.0),
        num_predictions: int = 100,
        labels: list[int] | None = None,
    ) -> None:
        super().__init__()
        self._save_config_hyperparameters(inspect.currentframe())
        self.automatic_optimization = False
        check_choice("loss", loss, LOSSES)
        check_int("n_critic", n_critic)
        check_real("gp_weight", gp_weight, 0.0)
        check_real("condition_noise", condition_noise, 0.0)
        check_value("data_range", list(data_range), len(data_range) == 2 and data_range[0] < data_range[1],
                    "[low, high] with low < high")
        check_int("num_predictions", num_predictions)
        self.diffaugment = parse_policy(diffaugment)
        self.metrics = metrics  # a plain attribute: its extractor is no part of the GAN's state
        if labels is not None:
            if condition != "label":
                check_value("labels", labels, False, f"null: labels need condition: label (condition is {condition!r})")
            bad = [c for c in labels if not 0 <= c < num_classes]
            if bad or not labels:
                check_value("labels", labels, False, f"class indices in [0, {num_classes - 1}]")
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g or _dcgan_adam, optimizer_d or _dcgan_adam

        self.condition_encoder: FrozenModule | None = None
        if condition is None:
            cond_dim = 0
        elif condition == "label":
            cond_dim = num_classes
        else:
            if condition_encoder is None:
                raise ValueError(f"condition={condition!r} needs a `condition_encoder` (e.g. fusion.AudioEncoder) "
                                 "to embed that input; use condition: label for class-conditional GANs")
            encoder = load_condition_encoder(encoder_checkpoint, condition_encoder, condition)
            self.condition_encoder = FrozenModule(encoder)
            cond_dim = condition_encoder.out_dim
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            have = getattr(net, "cond_dim", 0)
            if have != cond_dim:
                raise ValueError(f"model.init_args.{name}.init_args.cond_dim is {have} but condition={condition!r} "
                                 f"gives {cond_dim}-dim condition vectors: set cond_dim: {cond_dim}")
        self.cond_dim = cond_dim

        # The EMA copy is never trained, so its parameters must not require grad: DDP would
        # otherwise wait for their gradients.
        self.generator_ema = None
        if ema_decay:
            ema = get_ema_warmup_multi_avg_fn(ema_decay, ema_warmup)
            self.generator_ema = AveragedModel(generator, multi_avg_fn=ema, use_buffers=True)
            self.generator_ema.requires_grad_(False)
        self.iteration = 0  # batches trained; saved in checkpoints
        self._grid_cond: torch.Tensor | None = None  # fixed conditions for sample grids (encoder case)
        self._grid_labels: torch.Tensor | None = None
        self._predict_left = self._predicted = 0

    def _save_config_hyperparameters(self, frame: Any) -> None:
        """Save the arguments that are plain data, so ``GAN.load_from_checkpoint(path)`` rebuilds the GAN.

        Through ``fusegen``/LightningCLI the networks arrive as their config (class path + init
        args, plain data) and are saved; built in Python they are modules and are dropped (pass them
        again: ``load_from_checkpoint(path, generator=..., discriminator=...)``). ``metrics`` is never
        saved: a loaded GAN samples without building (or training) a feature extractor."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["metrics"], frame=frame)
        for key in [k for k, v in self.hparams.items() if not k.startswith("_") and not is_plain_data(v)]:
            del self.hparams[key]

    # ------------------------------------------------------------------ conditioning / sampling
    @property
    def nz(self) -> int:
        return self.generator.nz

    def real_images(self, batch: dict) -> torch.Tensor:
        """The batch's images mapped linearly from ``data_range`` to [-1, 1]."""
        lo, hi = self.hparams.data_range
        images = batch[self.hparams.image_key]
        return images if (lo, hi) == (-1.0, 1.0) else (images - lo) * (2.0 / (hi - lo)) - 1.0

    def condition_of(self, batch: dict) -> torch.Tensor | None:
        """The condition vector ``[B, cond_dim]`` of a batch (``None`` if unconditional)."""
        cond = self.hparams.condition
        if cond is None:
            return None
        if cond == "label":
            return F.one_hot(batch["label"], self.hparams.num_classes).float()
        if cond not in batch:
            raise KeyError(f"condition={cond!r} but the batch has no {cond!r} key; batch keys: {sorted(batch)}")
        return pooled_unit_norm(self.condition_encoder(batch[cond]))

    def augment_condition(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning augmentation (``condition_noise``): encoder conditions, training mode only."""
        sigma = self.hparams.condition_noise
        if cond is None or not sigma or self.hparams.condition == "label" or not self.training:
            return cond
        return F.normalize(cond + sigma * torch.randn_like(cond), dim=-1)

    @property
    def sampling_generator(self) -> nn.Module:
        """The network used for samples, metrics and predictions: the EMA generator if there is one."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] from the sampling generator in eval mode (its mode is restored)."""
        net = self.sampling_generator
        was_training = net.training
        net.eval()
        images = net(z.to(self.device), None if cond is None else cond.to(self.device))
        net.train(was_training)
        return images

    # ------------------------------------------------------------------ losses
    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator's loss (with ``gp_weight`` times the gradient penalty for WGAN-GP)."""
        real, fake = self.augment(real), self.augment(fake)
        d_real, d_fake = self.discriminator(real, cond), self.discriminator(fake, cond)
        loss = discriminator_loss(d_real, d_fake, self.hparams.loss)
        stats = {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if self.hparams.loss == "wgan-gp":
            gp = gradient_penalty(self.discriminator, real, fake, cond)
            loss = loss + self.hparams.gp_weight * gp
            stats["gp"] = gp.detach()
        return loss, stats

    def g_loss(self, fake: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return generator_loss(self.discriminator(self.augment(fake), cond), self.hparams.loss)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment (``diffaugment``) of what D sees, real or fake alike; identity when off."""
        return diff_augment(images, ",".join(self.diffaugment)) if self.diffaugment else images

    def is_generator_step(self, iteration: int) -> bool:
        """Whether batch ``iteration`` (0-based) also updates G: every ``n_critic``-th batch."""
        return (iteration + 1) % self.hparams.n_critic == 0

    # ------------------------------------------------------------------ training
    def _backward_and_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        opt_g, opt_d = self.optimizers()
        real = self.real_images(batch)
        cond = self.augment_condition(self.condition_of(batch))
        z = torch.randn(real.shape[0], self.nz, device=real.device, dtype=real.dtype)
        g_step = self.is_generator_step(self.iteration)
        # Generate once; the graph to G is kept only if this batch also updates G.
        with torch.set_grad_enabled(g_step):
            fake = self.generator(z, cond)

        # Discriminator / critic.
        self.toggle_optimizer(opt_d)
        loss_d, stats = self.d_loss(real, fake.detach(), cond)
        self._backward_and_step(opt_d, loss_d)
        self.untoggle_optimizer(opt_d)
        out = {"loss_d": loss_d.detach(), **stats}

        if g_step:
            self.toggle_optimizer(opt_g)
            loss_g = self.g_loss(fake, cond)
            self._backward_and_step(opt_g, loss_g)
            self.untoggle_optimizer(opt_g)
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)
            out["loss_g"] = loss_g.detach()

        self.iteration += 1
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False, batch_size=real.shape[0])
        return out

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        # Order matters: self.optimizers() returns (opt_g, opt_d).
        return [self.optimizer_g(self.generator.parameters()), self.optimizer_d(self.discriminator.parameters())]

    def on_fit_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise RuntimeError(
                "GAN under DDP: each backward pass reaches only one of the two networks, so DDP must expect unused "
                "parameters. Set `trainer.strategy: ddp_find_unused_parameters_true`, or with a DDPStrategy preset "
                "`--trainer.strategy.init_args.find_unused_parameters true`.")
        batches = self.trainer.estimated_stepping_batches
        if self.trainer.max_steps not in (-1, None):  # max_steps counts optimizer steps (D and G)
            batches = self.trainer.max_steps / (1 + 1 / self.hparams.n_critic)
        g_steps = int(batches // self.hparams.n_critic)
        if g_steps < 300:
            warnings.warn(f"this fit makes only {g_steps} generator updates: a DCGAN's samples stay near-uniform grey "
                          "for the first few hundred; train longer (more epochs or max_steps) before judging them",
                          stacklevel=2)

    def setup(self, stage: str) -> None:
        self.check_datamodule(getattr(self.trainer, "datamodule", None))

    def check_datamodule(self, datamodule: Any) -> None:
        """The datamodule's image channels/size must be the networks' (both keys named if not)."""
        hp = getattr(datamodule, "hparams", {}) or {}
        if "image_channels" in hp:
            data_channels = int(hp["image_channels"])
        elif hasattr(datamodule, "image_shape"):
            data_channels = int(datamodule.image_shape[0])
        else:
            return
        size = getattr(datamodule, "image_size", None) or hp.get("image_size")
        data_size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size)) if size else None
        for name, net in (("generator", self.generator), ("discriminator", self.discriminator)):
            channels, net_size = getattr(net, "channels", None), getattr(net, "image_size", None)
            if channels is not None and channels != data_channels:
                raise ValueError(f"data.init_args.image_channels is {data_channels} but model.init_args.{name}."
                                 f"init_args.channels is {channels}: set both to the same (1 grey, 3 RGB)")
            if net_size is not None and data_size is not None and data_size != (net_size, net_size):
                shown = data_size[0] if data_size[0] == data_size[1] else list(data_size)
                raise ValueError(f"data.init_args.image_size is {shown} but model.init_args.{name}.init_args."
                                 f"image_size is {net_size}: set both to the same (the networks take square "
                                 "images of 16, 28, 32, 64, 128 or 256 px)")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_iteration"] = self.iteration
        checkpoint["gan_cpu_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = checkpoint.get("gan_iteration", 0)
        if "gan_cpu_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["gan_cpu_rng_state"])

    # ------------------------------------------------------------------ validation metrics
    def on_validation_epoch_start(self) -> None:
        if self.metrics is not None:
            self.metrics.to(self.device).reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = self.real_images(batch)
        cond = self.condition_of(batch)
        if batch_idx == 0 and cond is not None and self.hparams.condition != "label":
            # Sample grids of an encoder-conditioned GAN use real validation inputs, sorted by label.
            order = torch.argsort(batch["label"], stable=True)
            self._grid_cond = cond[order].detach().cpu()
            self._grid_labels = batch["label"][order].cpu()
        if self.metrics is None:
            return
        z = torch.randn(real.shape[0], self.nz, device=real.device)
        fake = self.sample(z, cond)
        self.metrics.update(real, fake, batch.get("label") if cond is not None else None)

    def on_validation_epoch_end(self, stage: str = "val") -> None:
        if self.metrics is None or self.trainer.sanity_checking:
            return
        gather = self.all_gather if self.trainer.world_size > 1 else None
        scores = self.metrics.compute(gather)
        # Every rank holds the same gathered features, hence the same scores.
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("fid", "kid", "agreement"), sync_dist=False)
        sampler = "EMA generator" if self.generator_ema is not None else "generator"
        if self.trainer.is_global_zero:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in scores.items() if k != "kid_std")
            print(f"fusegen: {stage} {shown}  [{self.metrics.protocol(stage, sampler)}]")

    # Test = validation on the test split (for AV-MNIST: the held-out speaker's recordings).
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end(stage="test")

    # ------------------------------------------------------------------ predictions
    def on_predict_start(self) -> None:
        # Each process generates its share; with several processes the total is rounded up.
        self._predict_left = math.ceil(self.hparams.num_predictions / self.trainer.world_size)
        self._predicted = 0

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any] | None:
        """Generated images for the first rows of a predict batch, until ``num_predictions``:
        label-conditional GANs draw ``labels`` (cycled) or the batch's labels, encoder-conditioned
        ones the batch's inputs (e.g. recordings), unconditional ones one image per row.

        Returns ``{"images": [n, C, H, W] in [0, 1], "labels": [n] or None}`` (``None`` when done);
        ``generative.callbacks.PredictionWriter`` saves them."""
        size = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
        n = min(size, self._predict_left)
        if n <= 0:
            return None
        # Conditional images are named by their class; an unconditional one has none.
        labels = batch["label"][:n] if self.hparams.condition is not None and "label" in batch else None
        if self.hparams.condition == "label" and self.hparams.labels:
            wanted = self.hparams.labels
            labels = torch.tensor([wanted[(self._predicted + i) % len(wanted)] for i in range(n)], device=self.device)
        cond = self.condition_of({**batch, "label": labels} if labels is not None else batch)
        cond = None if cond is None else cond[:n]
        z = torch.randn(n, self.nz, device=self.device)
        images = ((self.sample(z, cond) + 1) / 2).clamp(0, 1).cpu()
        self._predict_left -= n
        self._predicted += n
        return {"images": images, "labels": None if labels is None else labels.cpu()}

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[pl.Callback]:
        from generative.callbacks import InterpolationGrid, PredictionWriter, SampleGrid

        callbacks: list[pl.Callback] = [PredictionWriter()]
        if self.hparams.grid_every_n_epochs:
            # Conditional grids show one class per column (up to 20 classes; else 10 columns cycling).
            k = self.hparams.num_classes
            cols = k if self.hparams.condition is not None and k <= 20 else 10
            callbacks += [SampleGrid(every_n_epochs=self.hparams.grid_every_n_epochs, num_samples=10 * cols, nrow=cols),
                          InterpolationGrid()]
        return callbacks

    def grid_conditions(self, n: int) -> torch.Tensor | None:
        """Conditions for an ``n``-sample grid with ``num_classes`` columns: column c shows class c."""
        if self.hparams.condition is None:
            return None
        if self.hparams.condition == "label":
            return F.one_hot(torch.arange(n) % self.hparams.num_classes, self.hparams.num_classes).float()
        if self._grid_cond is None:
            return None
        # One real input per class (first of each label in the stored batch), one per column.
        per_class = []
        for c in range(self.hparams.num_classes):
            idx = (self._grid_labels == c).nonzero()
            per_class.append(self._grid_cond[idx[0, 0]] if len(idx) else self._grid_cond[0])
        bank = torch.stack(per_class)
        return bank[torch.arange(n) % self.hparams.num_classes]
