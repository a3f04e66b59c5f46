"""DCGAN generator and discriminator (Radford et al. 2016), as in pytorch/examples' ``dcgan``.

Defaults follow that example: ``nz=100``, ``ngf=ndf=64``, BatchNorm in both nets except D's
first layer, LeakyReLU(0.2) in D, weights from N(0, 0.02) (BatchNorm scale N(1, 0.02)).
Image sizes: 28 (MNIST) and powers of two from 16 to 256 (one more up/down-sampling stage per
doubling, as DCGAN's 64x64 nets), any number of channels (1 grey, 3 RGB), so ``image_size`` and
``channels`` are the only things a config must change for a user's images.

Conditioning: both nets take an optional condition vector ``cond: Tensor[B, cond_dim]``:
a one-hot label (the linear layer applied to it *is* a label embedding) or a frozen encoder's
pooled embedding (fusion encoders return ``[B, T, D]``; the GAN module mean-pools over T).
The generator concatenates the embedded condition to ``z``; the discriminator uses the
projection trick (Miyato & Koyama 2018): ``D(x, c) = w.h(x) + <embed(c), h(x)>``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm as _sn

SIZES = (16, 28, 32, 64, 128, 256)


def dcgan_init(module: nn.Module) -> None:
    """pytorch/examples dcgan ``weights_init``: conv N(0, 0.02), BatchNorm N(1, 0.02) / 0."""
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def stages(image_size: int) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of each up-sampling stage, from 1x1 to ``image_size``.

    The generator uses them in order; the discriminator mirrors them, so both stay exact inverses
    in shape. 28 (MNIST): 1 -> 3 -> 7 -> 14 -> 28; a power of two S: 1 -> 4 -> 8 -> ... -> S (DCGAN)."""
    if image_size not in SIZES:
        raise ValueError(f"image_size={image_size} is not supported; choose one of {SIZES} (resize the images in "
                         "the datamodule, e.g. image_size: 64)")
    if image_size == 28:
        return [(3, 1, 0), (3, 2, 0), (4, 2, 1), (4, 2, 1)]
    return [(4, 1, 0)] + [(4, 2, 1)] * (image_size.bit_length() - 3)


def _check_channels(channels: int) -> None:
    if channels < 1:
        raise ValueError(f"channels={channels}: must be >= 1 (1 for grey, 3 for RGB)")


class Generator(nn.Module):
    """DCGAN generator: ``z [B, nz]`` (+ condition) -> image ``[B, channels, S, S]`` in [-1, 1].

    Args:
        nz: latent size.
        ngf: width of the last hidden stage (earlier stages are 2x, 4x, 8x wider).
        channels: image channels (1 for MNIST, 3 for RGB).
        image_size: 28 or a power of two from 16 to 256 (``SIZES``).
        cond_dim: size of the condition vector (0: unconditional).
        cond_embed: width of the learned condition embedding concatenated to ``z``.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1, image_size: int = 28,
                 cond_dim: int = 0, cond_embed: int = 50) -> None:
        super().__init__()
        _check_channels(channels)
        plan = stages(image_size)
        self.nz, self.cond_dim, self.image_size, self.channels = nz, cond_dim, image_size, channels
        self.embed = nn.Linear(cond_dim, cond_embed) if cond_dim else None
        widths = [ngf * 2 ** i for i in reversed(range(len(plan) - 1))]  # e.g. [4ngf, 2ngf, ngf]
        layers: list[nn.Module] = []
        c_in = nz + (cond_embed if cond_dim else 0)
        for (k, s, p), c_out in zip(plan[:-1], widths):
            layers += [nn.ConvTranspose2d(c_in, c_out, k, s, p, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            c_in = c_out
        k, s, p = plan[-1]
        layers += [nn.ConvTranspose2d(c_in, channels, k, s, p, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if cond is None:
                raise ValueError("this generator is conditional (cond_dim > 0): pass `cond`")
            z = torch.cat([z, self.embed(cond)], dim=1)
        return self.main(z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    """DCGAN discriminator: image (+ condition) -> one logit / critic score per sample ``[B]``.

    Args:
        ndf: width of the first stage (later stages are 2x, 4x, 8x wider).
        channels, image_size: as the generator's.
        cond_dim: size of the condition vector (0: unconditional); projection conditioning.
        spectral_norm: wrap every conv/linear in spectral normalisation (Miyato et al. 2018).
        batch_norm: BatchNorm in the hidden stages (DCGAN). Turn off for WGAN-GP, whose gradient
            penalty is per-sample and is broken by batch statistics (Gulrajani et al. 2017).
    """

    def __init__(self, ndf: int = 64, channels: int = 1, image_size: int = 28, cond_dim: int = 0,
                 spectral_norm: bool = False, batch_norm: bool = True) -> None:
        super().__init__()
        _check_channels(channels)
        plan = list(reversed(stages(image_size)))
        self.cond_dim, self.image_size, self.channels = cond_dim, image_size, channels
        sn = _sn if spectral_norm else (lambda m: m)
        widths = [ndf * 2 ** i for i in range(len(plan) - 1)]  # e.g. [ndf, 2ndf, 4ndf]
        layers: list[nn.Module] = []
        c_in = channels
        for i, ((k, s, p), c_out) in enumerate(zip(plan[:-1], widths)):
            layers.append(sn(nn.Conv2d(c_in, c_out, k, s, p, bias=False)))
            if i > 0 and batch_norm and not spectral_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        k, s, p = plan[-1]
        self.head = sn(nn.Conv2d(c_in, 1, k, s, p, bias=False))
        self.embed = sn(nn.Linear(cond_dim, c_in, bias=False)) if cond_dim else None
        self.apply(dcgan_init)
        if self.embed is not None:
            # At nn.Linear's default scale (uniform ±1/sqrt(cond_dim): ±0.58 for 3 classes) the class
            # term would dwarf the N(0, 0.02) image path: D's logits start near ±20, saturate, and an
            # RGB GAN learns nothing for hundreds of steps. Start it at the convs' scale instead.
            nn.init.normal_(getattr(self.embed, "weight_orig", self.embed.weight), 0.0, 0.02)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.channels, self.image_size, self.image_size):
            size = self.image_size
            raise ValueError(f"the discriminator takes [B, {self.channels}, {size}, {size}] images but got "
                             f"{list(x.shape)}: set channels/image_size of the generator and discriminator to the "
                             "data's (or resize the images in the datamodule)")
        h = self.features(x)
        out = self.head(h).flatten(1).sum(1)
        if self.embed is not None:
            if cond is None:
                raise ValueError("this discriminator is conditional (cond_dim > 0): pass `cond`")
            out = out + (self.embed(cond) * h.sum(dim=(2, 3))).sum(1)
        return out
