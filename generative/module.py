"""The ``GAN`` LightningModule: adversarial losses, two optimisers, EMA sampling, validation metrics.

Lightning 2.x *manual* optimisation (``automatic_optimization = False``): one ``training_step``
does a discriminator (critic) update and, every ``n_critic`` batches, a generator update, each
inside ``toggle_optimizer``/``untoggle_optimizer`` so the other network's parameters are frozen
and get no gradients. The step order follows pytorch/examples' dcgan ``main.py``: the fake batch
is generated once, the discriminator sees it detached, the generator step reuses it.

Notes:
- ``trainer.global_step`` counts *optimizer* steps: with ``n_critic=1`` it advances by 2 per
  batch (D and G). ``self.iteration`` counts batches (it is saved in checkpoints).
- Gradient clipping: the Trainer's ``gradient_clip_val`` is not allowed with manual
  optimisation; set this module's ``gradient_clip_val`` (applied via ``self.clip_gradients``).
- Checkpoints hold G, D, EMA weights, both optimiser states, the step counters and (for a
  bit-exact resume on one process) the CPU random state.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.optim.swa_utils import AveragedModel

from generative.conditioning import FrozenEncoder, load_encoder

log = logging.getLogger(__name__)

LossName = Literal["bce", "hinge", "wgan-gp"]


def _dcgan_adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def ema_decay_at(num_averaged: int, decay: float, warmup: bool = True) -> float:
    """The EMA decay used for the update after ``num_averaged`` earlier updates.

    With ``warmup`` the decay is ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``, as in many GAN codebases): early on the average
    follows the young generator closely instead of dragging its first, near-random weights along;
    it reaches ``decay`` after ``(10 * decay - 1) / (1 - decay)`` updates (890 for 0.99, 8990 for
    0.999)."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


def get_ema_warmup_multi_avg_fn(decay: float = 0.999, warmup: bool = True):
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: an EMA with decay
    ``ema_decay_at(num_averaged, decay, warmup)``. The update count is ``AveragedModel.n_averaged``,
    a buffer, so it is checkpointed and a resumed run continues the same schedule."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_decay={decay}: must be in [0, 1]")

    @torch.no_grad()
    def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = ema_decay_at(int(num_averaged), decay, warmup)
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)  # ema += (1 - d) * (p - ema)
        else:  # integer buffers (BatchNorm's num_batches_tracked)
            for p_ema, p in zip(ema_params, params):
                p_ema.copy_(p_ema * d + p * (1.0 - d))

    return ema_update


class GAN(pl.LightningModule):
    """Unconditional or conditional GAN.

    Args:
        generator / discriminator: networks (e.g. ``generative.Generator``/``Discriminator``);
            for a conditional GAN both must have ``cond_dim`` equal to the condition size.
        loss: ``bce`` (non-saturating), ``hinge`` or ``wgan-gp`` (critic + gradient penalty).
        n_critic: discriminator updates per generator update (5 is usual for WGAN-GP).
        gp_weight: gradient-penalty weight (WGAN-GP).
        optimizer_g / optimizer_d: injected from the config; default Adam(2e-4, betas 0.5/0.999).
        condition: ``None`` (unconditional), ``"label"`` (one-hot digit) or a batch key such as
            ``"audio"`` embedded by ``condition_encoder`` (mean-pooled over its tokens, frozen).
        condition_encoder: any fusion encoder (``forward(x) -> [B, T, D]``, ``out_dim``).
        encoder_checkpoint: fusion checkpoint whose ``encoders.<condition>.*`` weights are loaded
            into ``condition_encoder``; ``"auto"`` trains an audio-only fusion classifier on the
            datamodule once and caches it (see ``generative.conditioning``).
        gradient_clip_val: clip each network's gradient norm to this (``None``: no clipping).
        ema_decay: keep an exponential moving average of G's weights and sample from it
            (``None``: sample from G itself).
        condition_noise: "conditioning augmentation" (StackGAN, Zhang et al. 2017) for encoder
            conditions: during training add N(0, condition_noise^2) to each unit-norm condition vector
            and renormalise, so G also draws clean digits near (not only at) the training
            recordings' embeddings, where an unseen speaker's embeddings land. 0: off; labels never.
        ema_warmup: ramp the EMA decay up as ``min(ema_decay, (1 + t) / (10 + t))`` after ``t``
            updates (see ``ema_decay_at``); ``False``: constant ``ema_decay`` from the first update.
        metrics: compute the Fréchet classifier distance (and, if conditional, the classifier's
            agreement with the requested digit) at validation time.
        classifier_epochs / classifier_train_limit: recipe of the cached digit classifier.
        grid_every_n_epochs: sample-grid PNG cadence (0: no grids).
        image_key: the batch key of the images to generate.
        data_range: value range of the dataset's images (AV-MNIST: ``[0, 1]``); they are mapped
            to the generator's tanh range [-1, 1], which the metrics' classifier also expects.
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
        metrics: bool = True,
        classifier_epochs: int = 2,
        classifier_train_limit: int | None = None,
        grid_every_n_epochs: int = 1,
        image_key: str = "image",
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "discriminator", "condition_encoder"])
        self.automatic_optimization = False
        if loss not in ("bce", "hinge", "wgan-gp"):
            raise ValueError(f"loss={loss!r}: choose 'bce', 'hinge' or 'wgan-gp'")
        if n_critic < 1:
            raise ValueError(f"n_critic={n_critic}: must be >= 1")
        if condition_noise < 0:
            raise ValueError(f"condition_noise={condition_noise}: must be >= 0")
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g or _dcgan_adam, optimizer_d or _dcgan_adam

        self.condition_encoder = None
        if condition is None:
            cond_dim = 0
        elif condition == "label":
            cond_dim = num_classes
        else:
            if condition_encoder is None:
                raise ValueError(f"condition={condition!r} needs a `condition_encoder` (e.g. fusion.MelCNNAudioEncoder) "
                                 "to embed that input; use condition: label for class-conditional GANs")
            self.condition_encoder = FrozenEncoder(condition_encoder)
            cond_dim = condition_encoder.out_dim
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            have = getattr(net, "cond_dim", 0)
            if have != cond_dim:
                raise ValueError(f"model.{name}.init_args.cond_dim is {have} but condition={condition!r} gives "
                                 f"{cond_dim}-dim condition vectors: set cond_dim: {cond_dim}")
        self.cond_dim = cond_dim

        # The EMA copy is never trained, so its parameters must not require grad: DDP would
        # otherwise wait for their gradients.
        self.generator_ema = None
        if ema_decay:
            self.generator_ema = AveragedModel(generator, multi_avg_fn=get_ema_warmup_multi_avg_fn(ema_decay, ema_warmup),
                                               use_buffers=True)
            self.generator_ema.requires_grad_(False)
        self.iteration = 0  # batches trained; saved in checkpoints
        self._eval: dict[str, Any] | None = None  # classifier + metrics, built on first validation
        self._grid_cond: torch.Tensor | None = None  # fixed conditions for sample grids (encoder case)

    # ------------------------------------------------------------------ conditioning / sampling
    @property
    def nz(self) -> int:
        return self.generator.nz

    def real_images(self, batch: dict) -> torch.Tensor:
        """The batch's images mapped from ``data_range`` to [-1, 1]."""
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
        return self.condition_encoder(batch[cond])

    @property
    def sampler(self) -> nn.Module:
        """The network used for samples and metrics: the EMA generator if there is one."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        net = self.sampler
        was_training = net.training
        net.eval()
        images = net(z.to(self.device), None if cond is None else cond.to(self.device))
        net.train(was_training)
        return images

    # ------------------------------------------------------------------ losses
    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        d_real, d_fake = self.discriminator(real, cond), self.discriminator(fake, cond)
        kind = self.hparams.loss
        if kind == "bce":
            loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                    + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        elif kind == "hinge":
            loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            loss = d_fake.mean() - d_real.mean() + self.hparams.gp_weight * self._gradient_penalty(real, fake, cond)
        return loss, {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}

    def _g_loss(self, fake: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        d_fake = self.discriminator(fake, cond)
        if self.hparams.loss == "bce":  # non-saturating: maximise log D(G(z))
            return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        return -d_fake.mean()

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(mixed, cond).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def _check_finite(self, name: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"GAN training diverged at global step {self.global_step} (iteration {self.iteration}, "
                f"epoch {self.current_epoch}): {name} = {value.item()}. Lower the learning rates, set "
                "model.init_args.gradient_clip_val, or use spectral_norm in the discriminator.")

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        opt_g, opt_d = self.optimizers()
        real = self.real_images(batch)
        cond = self.condition_of(batch)
        if cond is not None and self.hparams.condition_noise and self.hparams.condition != "label":
            cond = F.normalize(cond + self.hparams.condition_noise * torch.randn_like(cond), dim=-1)
        z = torch.randn(real.shape[0], self.nz, device=real.device, dtype=real.dtype)
        g_step = (self.iteration + 1) % self.hparams.n_critic == 0
        # Generate once; the graph to G is kept only if this batch also updates G.
        with torch.set_grad_enabled(g_step):
            fake = self.generator(z, cond)

        # Discriminator / critic.
        self.toggle_optimizer(opt_d)
        loss_d, stats = self._d_loss(real, fake.detach(), cond)
        self._check_finite("loss_d", loss_d)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        if self.hparams.gradient_clip_val:
            self.clip_gradients(opt_d, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        out = {"loss_d": loss_d.detach(), **stats}

        # Generator.
        if g_step:
            self.toggle_optimizer(opt_g)
            loss_g = self._g_loss(fake, cond)
            self._check_finite("loss_g", loss_g)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            if self.hparams.gradient_clip_val:
                self.clip_gradients(opt_g, gradient_clip_val=self.hparams.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            opt_g.step()
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

    def setup(self, stage: str) -> None:
        # Each manual backward touches only one network (the other is toggled off), so DDP must
        # be told to expect parameters without gradients in a backward pass.
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)
        if self.condition_encoder is not None and self.hparams.encoder_checkpoint and stage == "fit":
            load_encoder(self, self.hparams.encoder_checkpoint)
        # Built here, not in a validation hook: validation runs under inference mode, and the
        # first use may have to train the classifier.
        if self.hparams.metrics and self._eval is None:
            self._eval = self._build_eval()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_iteration"] = self.iteration
        checkpoint["gan_cpu_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = checkpoint.get("gan_iteration", 0)
        if "gan_cpu_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["gan_cpu_rng_state"])

    # ------------------------------------------------------------------ validation metrics
    def _build_eval(self) -> dict[str, Any]:
        from generative.metrics import load_digit_classifier, frechet_distance

        classifier = load_digit_classifier(epochs=self.hparams.classifier_epochs,
                                           train_limit=self.hparams.classifier_train_limit)
        # Kept out of the module tree on purpose: the fixed extractor is not part of the GAN's
        # checkpoint, and a run with metrics off can resume one with metrics on.
        return {"classifier": classifier, "fid": frechet_distance(classifier),
                "agreement": torchmetrics.classification.MulticlassAccuracy(self.hparams.num_classes, average="micro")}

    def on_validation_epoch_start(self) -> None:
        if self._eval is not None:
            for key in ("classifier", "fid", "agreement"):
                self._eval[key] = self._eval[key].to(self.device)
            # Fresh, normal (non-inference) metric states: `trainer.validate` runs under inference
            # mode and `fit`'s validation under no_grad; states made in one must work in the other.
            with torch.inference_mode(False):
                self._eval["fid"].reset()
                self._eval["agreement"].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = self.real_images(batch)
        cond = self.condition_of(batch)
        if batch_idx == 0 and cond is not None and self.hparams.condition != "label":
            # Sample grids of an encoder-conditioned GAN use real validation inputs, sorted by label.
            order = torch.argsort(batch["label"], stable=True)
            self._grid_cond = cond[order].detach().cpu()
            self._grid_labels = batch["label"][order].cpu()
        if self._eval is None:
            return
        z = torch.randn(real.shape[0], self.nz, device=real.device)
        fake = self.sample(z, cond)
        self._eval["fid"].update(real, real=True)
        self._eval["fid"].update(fake, real=False)
        if cond is not None:
            self._eval["agreement"].update(self._eval["classifier"](fake).argmax(1), batch["label"])

    def on_validation_epoch_end(self, stage: str = "val") -> None:
        if self._eval is None:
            return
        # torchmetrics already synced the states across ranks: every rank holds the same value.
        self.log(f"{stage}/fid", self._eval["fid"].compute(), prog_bar=True, sync_dist=True)
        if self.hparams.condition is not None:
            self.log(f"{stage}/agreement", self._eval["agreement"].compute(), prog_bar=True, sync_dist=True)

    # Test = validation on the test split (for AV-MNIST: the held-out speaker's recordings).
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end(stage="test")

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[pl.Callback]:
        from generative.callbacks import InterpolationGrid, SampleGrid

        if not self.hparams.grid_every_n_epochs:
            return []
        return [SampleGrid(every_n_epochs=self.hparams.grid_every_n_epochs), InterpolationGrid()]

    def grid_conditions(self, n: int) -> torch.Tensor | None:
        """Conditions for an ``n``-sample grid with 10 columns: column c shows digit c."""
        if self.hparams.condition is None:
            return None
        if self.hparams.condition == "label":
            return F.one_hot(torch.arange(n) % self.hparams.num_classes, self.hparams.num_classes).float()
        if self._grid_cond is None:
            return None
        # One real recording per digit (first of each label in the stored batch), one per column.
        per_digit = []
        for digit in range(self.hparams.num_classes):
            idx = (self._grid_labels == digit).nonzero()
            per_digit.append(self._grid_cond[idx[0, 0]] if len(idx) else self._grid_cond[0])
        bank = torch.stack(per_digit)
        return bank[torch.arange(n) % self.hparams.num_classes]
