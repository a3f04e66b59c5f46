"""DCGAN networks: shapes for every supported size and channel count, conditioning, spectral norm, init,
errors."""

from __future__ import annotations

import pytest
import torch

from generative import Discriminator, Generator


@pytest.mark.parametrize("size,channels", [(16, 3), (28, 1), (32, 1), (32, 3), (64, 1), (64, 3), (128, 3)])
@pytest.mark.parametrize("cond_dim", [0, 10])
def test_shapes(size: int, channels: int, cond_dim: int) -> None:
    g = Generator(ngf=8, channels=channels, image_size=size, cond_dim=cond_dim)
    d = Discriminator(ndf=8, channels=channels, image_size=size, cond_dim=cond_dim, spectral_norm=bool(cond_dim))
    cond = torch.randn(3, cond_dim) if cond_dim else None
    x = g(torch.randn(3, 100), cond)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # tanh output, the datamodules' "tanh" range
    assert d(x, cond).shape == (3,)


def test_dcgan_defaults_and_init() -> None:
    g, d = Generator(image_size=64, channels=3), Discriminator(image_size=64, channels=3)
    # pytorch/examples' 64x64 DCGAN sizes (nz 100, ngf/ndf 64): 3,576,704 and 2,765,568 parameters
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568
    w = g.main[0].weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_condition_changes_output_and_is_required() -> None:
    torch.manual_seed(0)
    g, d = Generator(ngf=8, cond_dim=10).eval(), Discriminator(ndf=8, cond_dim=10).eval()
    z = torch.randn(2, 100).repeat(2, 1)
    cond = torch.eye(10)[[0, 0, 7, 7]]
    x = g(z, cond)
    assert not torch.allclose(x[0], x[2])  # same z, different digit -> different image
    assert not torch.allclose(d(x[:1].repeat(2, 1, 1, 1), cond[1:3])[0], d(x[:1].repeat(2, 1, 1, 1), cond[1:3])[1])
    with pytest.raises(ValueError, match="cond"):
        g(z)
    with pytest.raises(ValueError, match="cond"):
        d(x)


def test_spectral_norm_and_bad_size() -> None:
    d = Discriminator(ndf=8, spectral_norm=True)
    assert any("parametrizations" in n or "weight_orig" in n for n, _ in d.named_parameters())
    with pytest.raises(ValueError, match="image_size=48"):
        Generator(image_size=48)
    with pytest.raises(ValueError, match="image_size=100"):
        Discriminator(image_size=100)
    with pytest.raises(ValueError, match="channels=0"):
        Generator(channels=0)


def test_discriminator_names_a_shape_mismatch() -> None:
    d = Discriminator(ndf=8, channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"takes \[B, 3, 32, 32\] images but got \[2, 1, 28, 28\]"):
        d(torch.randn(2, 1, 28, 28))


def test_stage_plan_doubles_per_stage() -> None:
    from generative.networks import stages

    assert stages(28) == [(3, 1, 0), (3, 2, 0), (4, 2, 1), (4, 2, 1)]  # 1 -> 3 -> 7 -> 14 -> 28
    assert stages(64) == [(4, 1, 0)] + [(4, 2, 1)] * 4  # 1 -> 4 -> 8 -> 16 -> 32 -> 64 (DCGAN)
    assert len(stages(256)) == 7
