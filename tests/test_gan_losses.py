"""GAN loss terms and switches, each against values computed by hand.

softplus(x) = log(1 + e^x); BCE(logit, 1) = softplus(-logit), BCE(logit, 0) = softplus(logit).
softplus(0) = 0.693147, softplus(-1) = 0.313262, softplus(1) = 1.313262, softplus(-2) = 0.126928,
softplus(-4) = 0.018150, softplus(-8) = 0.000335.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from datamodules import SyntheticMultimodalDataModule
from generative import GAN, Discriminator, Generator, discriminator_loss, generator_loss, gradient_penalty
from generative.ema import ema_decay_at, get_ema_warmup_multi_avg_fn

T = torch.tensor


# ---------------------------------------------------------------- pure loss functions
def test_discriminator_losses_by_hand() -> None:
    # bce: mean(softplus(-[0, 2])) + mean(softplus([0, -1])) = (0.693147 + 0.126928) / 2 + (0.693147 + 0.313262) / 2
    assert discriminator_loss(T([0.0, 2.0]), T([0.0, -1.0]), "bce").item() == pytest.approx(0.913242, abs=1e-5)
    # hinge: mean(relu(1 - [0.5, 2])) + mean(relu(1 + [-2, 0.5])) = 0.25 + 0.75
    assert discriminator_loss(T([0.5, 2.0]), T([-2.0, 0.5]), "hinge").item() == pytest.approx(1.0)
    # wgan-gp critic (without the penalty): mean(fake) - mean(real) = -0.25 - 2
    assert discriminator_loss(T([1.0, 3.0]), T([-1.0, 0.5]), "wgan-gp").item() == pytest.approx(-2.25)


def test_generator_losses_by_hand() -> None:
    # non-saturating bce: mean(softplus(-[0, -1])) = (0.693147 + 1.313262) / 2
    assert generator_loss(T([0.0, -1.0]), "bce").item() == pytest.approx(1.003204, abs=1e-5)
    # hinge and wgan-gp: -mean(D(G(z))) = -(-1 + 0.5) / 2
    assert generator_loss(T([-1.0, 0.5]), "hinge").item() == pytest.approx(0.25)
    assert generator_loss(T([-1.0, 0.5]), "wgan-gp").item() == pytest.approx(0.25)


def test_unknown_loss_is_named() -> None:
    with pytest.raises(ValueError, match="loss='lsgan'"):
        discriminator_loss(T([0.0]), T([0.0]), "lsgan")
    with pytest.raises(ValueError, match="loss='lsgan'"):
        generator_loss(T([0.0]), "lsgan")


class LinearCritic(nn.Module):
    """D(x) = sum(w * x) with w = 2 on 1x2x2 images: its input gradient is w, of norm 4."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 2, 2), 2.0))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_by_hand() -> None:
    real, fake = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    # Linear critic: gradient w everywhere, ||w|| = sqrt(4 * 2^2) = 4 -> (4 - 1)^2 = 9, whatever eps.
    assert gradient_penalty(LinearCritic(), real, fake).item() == pytest.approx(9.0)

    def quadratic(x, cond):  # D(x) = 0.5 ||x||^2: gradient x_hat, so the penalty sees where x_hat lies
        return 0.5 * (x ** 2).flatten(1).sum(1)

    # x_hat = eps * real + (1 - eps) * fake: eps = 0.5 -> all pixels 0.5, norm 1, penalty 0;
    # eps = 1 -> x_hat = real, norm 2, penalty 1; eps = 0 -> x_hat = fake, norm 0, penalty 1.
    assert gradient_penalty(quadratic, real, fake, eps=T([0.5, 0.5, 0.5])).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_penalty(quadratic, real, fake, eps=T([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    assert gradient_penalty(quadratic, real, fake, eps=T([0.5, 1.0, 0.0])).item() == pytest.approx(2 / 3)
    # The penalty is differentiable in the critic's weights (create_graph): d/dw (||w|| - 1)^2 = 2 (4 - 1) w / 4
    critic = LinearCritic()
    gradient_penalty(critic, real, fake).backward()
    torch.testing.assert_close(critic.w.grad, torch.full((1, 2, 2), 3.0))


# ---------------------------------------------------------------- the module's use of them
def _gan(**kw) -> GAN:
    kw = {"metrics": False, "grid_every_n_epochs": 0, "ema_decay": None, **kw}
    return GAN(Generator(ngf=8), Discriminator(ndf=8), **kw)


@pytest.mark.parametrize("loss,gp_weight,expected", [
    ("wgan-gp", 10.0, 0 - 8 + 10 * 9),   # mean D(fake) - mean D(real) + gp_weight * 9
    ("wgan-gp", 3.0, 0 - 8 + 3 * 9),
    ("wgan-gp", 0.0, -8.0),
    ("bce", 10.0, 0.000335 + 0.693147),  # softplus(-8) + softplus(0): no penalty outside wgan-gp
    ("hinge", 10.0, 0.0 + 1.0),          # relu(1 - 8) + relu(1 + 0)
])
def test_module_discriminator_loss_and_gp_weight(loss: str, gp_weight: float, expected: float) -> None:
    model = _gan(loss=loss, gp_weight=gp_weight)
    model.discriminator = LinearCritic()
    real, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)  # D(real) = 8, D(fake) = 0
    value, stats = model.d_loss(real, fake, None)
    assert value.item() == pytest.approx(expected, abs=1e-5)
    assert stats["d_real"].item() == 8.0 and stats["d_fake"].item() == 0.0
    assert ("gp" in stats) == (loss == "wgan-gp")


@pytest.mark.parametrize("loss,expected", [("bce", 0.018150), ("hinge", -4.0), ("wgan-gp", -4.0)])
def test_module_generator_loss(loss: str, expected: float) -> None:
    model = _gan(loss=loss)
    model.discriminator = LinearCritic()
    assert model.g_loss(torch.full((2, 1, 2, 2), 0.5), None).item() == pytest.approx(expected, abs=1e-5)  # D = 4


def test_n_critic_schedule() -> None:
    model = _gan(n_critic=5)
    assert [i for i in range(12) if model.is_generator_step(i)] == [4, 9]
    assert all(_gan(n_critic=1).is_generator_step(i) for i in range(4))
    # In training: 10 batches with n_critic 3 -> G steps after batches 2, 5, 8: 10 + 3 optimizer steps.
    pl.seed_everything(0)
    model = GAN(Generator(ngf=8), Discriminator(ndf=8, batch_norm=False), loss="wgan-gp", n_critic=3,
                metrics=None, grid_every_n_epochs=0, ema_decay=0.9)
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=SyntheticMultimodalDataModule(num_train=160, num_val=16, num_test=16, batch_size=16))
    assert model.iteration == 10 and trainer.global_step == 13
    assert int(model.generator_ema.n_averaged) == 3  # one EMA update per G step


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.init_args.n_critic = 0 is not allowed"):
        _gan(n_critic=0)
    with pytest.raises(ValueError, match=r"model.init_args.gp_weight = -1.0 is not allowed"):
        _gan(gp_weight=-1.0)
    with pytest.raises(ValueError, match=r"model.init_args.data_range = \[1.0, 0.0\] is not allowed"):
        _gan(data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"model.init_args.labels = \[1\] is not allowed.*condition: label"):
        _gan(labels=[1])


# ---------------------------------------------------------------- EMA numbers
def test_ema_warmup_numbers() -> None:
    # min(decay, (1 + t) / (10 + t)): t = 0 -> 0.1, t = 8 -> 0.5, t = 90 -> 0.91; capped at decay
    assert ema_decay_at(0, 0.99) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.99) == pytest.approx(0.5)
    assert ema_decay_at(90, 0.99) == pytest.approx(0.91)
    assert ema_decay_at(80, 0.9) == pytest.approx(0.9) and ema_decay_at(1000, 0.9) == 0.9
    net = nn.Linear(2, 1)
    ema = AveragedModel(net, multi_avg_fn=get_ema_warmup_multi_avg_fn(0.99), use_buffers=True)
    ema.update_parameters(net)  # first update: a copy
    ema.n_averaged.fill_(8)  # the 9th update uses decay 0.5
    with torch.no_grad():
        before = [p.clone() for p in ema.module.parameters()]
        for p in net.parameters():
            p.add_(1.0)
    ema.update_parameters(net)
    for a, b in zip(ema.module.parameters(), before):
        torch.testing.assert_close(a, b + 0.5)  # 0.5 * old + 0.5 * (old + 1)


# ---------------------------------------------------------------- data range, conditions, modes
def test_data_range_maps_to_tanh_range() -> None:
    images = T([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(_gan(data_range=(0.0, 1.0)).real_images({"image": images}).flatten(),
                               T([-1.0, -0.5, 1.0]))
    torch.testing.assert_close(_gan(data_range=(0.0, 255.0)).real_images({"image": T([0.0, 51.0, 255.0])}),
                               T([-1.0, -0.6, 1.0]))
    assert _gan().real_images({"image": images}) is images  # already [-1, 1]
    assert _gan(image_key="front").real_images({"front": images}) is images


class TinyEncoder(nn.Module):
    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x)).unsqueeze(1)


def _audio_gan(noise: float) -> GAN:
    return GAN(Generator(ngf=8, cond_dim=8), Discriminator(ndf=8, cond_dim=8), condition="audio",
               condition_encoder=TinyEncoder(), condition_noise=noise, metrics=None, grid_every_n_epochs=0)


def test_condition_noise_only_in_training_and_only_for_encoders() -> None:
    torch.manual_seed(0)
    model = _audio_gan(0.1)
    cond = model.condition_of({"audio": torch.randn(6, 4)})
    torch.testing.assert_close(cond.norm(dim=1), torch.ones(6))  # pooled and unit-norm
    model.train()
    noisy = model.augment_condition(cond)
    assert not torch.allclose(noisy, cond) and torch.allclose(noisy.norm(dim=1), torch.ones(6))
    model.eval()
    assert model.augment_condition(cond) is cond  # validation, test, predictions: clean
    model.train()
    assert _audio_gan(0.0).train().augment_condition(cond) is cond
    onehot = torch.eye(10)[:3]
    labelled = GAN(Generator(ngf=8, cond_dim=10), Discriminator(ndf=8, cond_dim=10), condition="label",
                   condition_noise=0.1, metrics=None).train()
    assert labelled.augment_condition(onehot) is onehot  # labels never


def test_frozen_encoder_and_sampler_modes() -> None:
    torch.manual_seed(0)
    model = _audio_gan(0.0)
    model.train()  # what Lightning does every epoch
    assert not model.condition_encoder.training and not model.condition_encoder.module.norm.training
    assert not any(p.requires_grad for p in model.condition_encoder.parameters())
    x = torch.randn(4, 4)
    torch.testing.assert_close(model.condition_of({"audio": x}), model.condition_of({"audio": x}))  # no batch stats
    # Sampling runs the EMA generator in eval mode and restores its mode afterwards.
    assert model.sampling_generator is model.generator_ema.module
    modes = []
    model.sampling_generator.register_forward_hook(lambda m, a, o: modes.append(m.training))
    z = torch.randn(3, 100)
    first, second = model.sample(z, model.condition_of({"audio": x[:3]})), model.sample(z, model.condition_of(
        {"audio": x[:3]}))
    assert modes == [False, False] and model.sampling_generator.training
    torch.testing.assert_close(first, second)
    plain = _gan(ema_decay=None)
    assert plain.sampling_generator is plain.generator


def test_predict_step_cycles_requested_labels() -> None:
    torch.manual_seed(0)
    model = GAN(Generator(ngf=8, cond_dim=10), Discriminator(ndf=8, cond_dim=10), condition="label", labels=[3, 7],
                metrics=None, grid_every_n_epochs=0)
    model._predict_left, model._predicted = 5, 0
    batch = {"image": torch.zeros(4, 1, 28, 28), "label": torch.zeros(4, dtype=torch.long)}
    first = model.predict_step(batch, 0)
    assert first["labels"].tolist() == [3, 7, 3, 7] and first["images"].shape == (4, 1, 28, 28)
    assert 0 <= first["images"].min() and first["images"].max() <= 1  # [0, 1] for PNGs
    assert model.predict_step(batch, 1)["labels"].tolist() == [3]  # num_predictions = 5 reached
    assert model.predict_step(batch, 2) is None


def test_predict_step_unconditional_and_encoder_conditioned() -> None:
    torch.manual_seed(0)
    batch = {"image": torch.zeros(4, 1, 28, 28), "audio": torch.randn(4, 4), "label": torch.tensor([5, 1, 2, 9])}
    plain = _gan(num_predictions=3)
    plain._predict_left = 3
    out = plain.predict_step(batch, 0)
    assert out["labels"] is None and out["images"].shape == (3, 1, 28, 28)  # no class to name them by
    spoken = _audio_gan(0.1)
    spoken._predict_left = 10
    out = spoken.predict_step(batch, 0)
    assert out["labels"].tolist() == [5, 1, 2, 9]  # each image is named by its recording's digit
    spoken.eval()
    z_state = torch.get_rng_state()
    cond = spoken.condition_of(batch)
    torch.set_rng_state(z_state)
    spoken._predict_left = 10
    again = spoken.predict_step(batch, 0)
    torch.set_rng_state(z_state)
    expected = ((spoken.sample(torch.randn(4, 100), cond) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(again["images"], expected)  # clean conditions, [-1, 1] -> [0, 1]
