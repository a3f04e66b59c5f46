"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

With little data the discriminator memorises the training images and the GAN stops learning.
DiffAugment applies the same family of random, *differentiable* transforms to every image the
discriminator sees, real and generated, in both the D and the G step, so D cannot memorise and
G still gets gradients through the transform. The three policies of the paper, as its reference
implementation (``DiffAugment_pytorch.py``):

- ``color``: random brightness (±0.5), saturation (x0-2) and contrast (x0.5-1.5);
- ``translation``: shift by up to 1/8 of the image side, zero padding;
- ``cutout``: zero one random square of half the image side.

Images are in [-1, 1] ``[B, C, H, W]``. Each sample draws its own parameters; passing a
``torch.Generator`` makes the draw reproducible (the same seed gives the same transform).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _rand(x: torch.Tensor, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device if generator else x.device).to(x)


def _randint(x: torch.Tensor, low: int, high: int, shape: tuple[int, ...],
             generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator else x.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(x.device)


def rand_brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + (_rand(x, x.shape[0], 1, 1, 1, generator=generator) - 0.5)


def rand_saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, x.shape[0], 1, 1, 1, generator=generator) * 2) + mean


def rand_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, x.shape[0], 1, 1, 1, generator=generator) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(x, -sh, sh + 1, (b, 1, 1), generator)
    tx = _randint(x, -sw, sw + 1, (b, 1, 1), generator)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gy, gx].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(x, 0, h + (1 - ch % 2), (b, 1, 1), generator)
    ox = _randint(x, 0, w + (1 - cw % 2), (b, 1, 1), generator)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


_OPS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


def parse_policy(policy: str | None) -> list[str]:
    """``"color,translation,cutout"`` -> ``["color", "translation", "cutout"]`` (checked; ``None``/"" -> [])."""
    names = [p.strip() for p in (policy or "").split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise ValueError(f"model.init_args.diffaugment: unknown polic{'ies' if len(bad) > 1 else 'y'} {bad}; "
                         f"use a comma-separated subset of {', '.join(POLICIES)} (e.g. \"color,translation,cutout\")")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` through the policies' random transforms, in order (differentiable in ``x``)."""
    for name in parse_policy(policy):
        for op in _OPS[name]:
            x = op(x, generator=generator)
    return x
