"""EMA of the generator with a warm-up decay (schedule, first updates, GAN integration) and the
conditioning augmentation of encoder conditions."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from datamodules import SyntheticMultimodalDataModule
from generative import GAN, Discriminator, Generator
from generative.ema import ema_decay_at, get_ema_warmup_multi_avg_fn


def test_warmup_decay_rises_to_ema_decay() -> None:
    schedule = [ema_decay_at(t, 0.99) for t in range(3000)]
    assert schedule[1] == pytest.approx(2 / 11)
    assert all(a <= b for a, b in zip(schedule, schedule[1:]))  # never falls
    assert max(schedule) == 0.99 and schedule[889] < 0.99 and schedule[890] == 0.99  # (10 d - 1) / (1 - d)
    assert ema_decay_at(5000, 0.999) < 0.999 == ema_decay_at(9000, 0.999)
    assert [ema_decay_at(t, 0.99, warmup=False) for t in (0, 1, 100)] == [0.99] * 3
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        get_ema_warmup_multi_avg_fn(1.5)


def _shifted(net: nn.Module, delta: float) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(delta)
    return out


@pytest.mark.parametrize("warmup", [True, False])
def test_averaged_model_follows_the_schedule(warmup: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = AveragedModel(net, multi_avg_fn=get_ema_warmup_multi_avg_fn(0.999, warmup), use_buffers=True)
    first = _shifted(net, 1.0)
    ema.update_parameters(first)  # the first update copies the weights
    for a, b in zip(ema.module.parameters(), first.parameters()):
        assert torch.equal(a, b)
    second = _shifted(first, 1.0)
    ema.update_parameters(second)  # t = 1: decay 2/11 with warm-up, 0.999 without
    d = 2 / 11 if warmup else 0.999
    for a, b, c in zip(ema.module.parameters(), first.parameters(), second.parameters()):
        torch.testing.assert_close(a, d * b + (1 - d) * c)
    assert int(ema.n_averaged) == 2


def test_gan_ema_tracks_young_generator_with_warmup() -> None:
    """After a few batches the warm-up EMA sits close to G; a constant 0.999 EMA is still near
    G's first weights."""
    dists = {}
    for warmup in (True, False):
        pl.seed_everything(0)
        model = GAN(Generator(ngf=8), Discriminator(ndf=8), metrics=None, grid_every_n_epochs=0, ema_decay=0.999,
                    ema_warmup=warmup)
        trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1)
        trainer.fit(model, datamodule=SyntheticMultimodalDataModule(num_train=128, num_val=16, num_test=16,
                                                                     batch_size=16))
        assert model.iteration == 8 and int(model.generator_ema.n_averaged) == 8
        g = torch.cat([p.flatten() for p in model.generator.parameters()])
        e = torch.cat([p.flatten() for p in model.generator_ema.module.parameters()])
        dists[warmup] = (g - e).norm().item()
    assert dists[True] < 0.5 * dists[False], dists


class _TinyAudioEncoder(nn.Module):
    """[B, L] waveforms -> one 8-d token (a stand-in for a fusion audio encoder)."""

    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4000, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).unsqueeze(1)


def test_condition_noise_perturbs_encoder_conditions_in_training_only() -> None:
    with pytest.raises(ValueError, match=r"model.init_args.condition_noise = -0.1 is not allowed"):
        GAN(Generator(ngf=8, cond_dim=8), Discriminator(ndf=8, cond_dim=8), condition="audio",
            condition_encoder=_TinyAudioEncoder(), condition_noise=-0.1, metrics=None)
    pl.seed_everything(0)
    model = GAN(Generator(ngf=8, cond_dim=8), Discriminator(ndf=8, cond_dim=8), condition="audio",
                condition_encoder=_TinyAudioEncoder(), condition_noise=0.1, metrics=None, grid_every_n_epochs=0,
                ema_decay=None)
    seen, clean_conds = [], []
    model.generator.register_forward_hook(lambda mod, args, out: seen.append(args[1].detach().clone()))
    condition_of = model.condition_of
    model.condition_of = lambda batch: clean_conds.append(condition_of(batch)) or clean_conds[-1]
    dm = SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    clean, noisy = clean_conds[0], seen[0]
    assert torch.allclose(noisy.norm(dim=1), torch.ones(len(noisy)), atol=1e-5)  # still unit norm
    assert 0.01 < (noisy - clean).norm(dim=1).mean() < 1.0  # perturbed around the clean condition
    seen.clear()
    model.sample(torch.randn(4, model.nz), clean[:4])  # sampling uses the condition as given
    assert torch.equal(seen[0], clean[:4])
