"""The plain-PyTorch reference: pytorch/examples' ``dcgan/main.py`` training loop, verbatim in
spirit (BCE on D(real) and D(fake.detach()) with two backward calls, one D step, then the G step
on the same fake batch), on fusegen's networks and data so only the training harness differs.

Used by ``gan_throughput.py`` (steps/s, Lightning vs this loop) and ``gan_results.py`` (FID
after the same number of steps). Also the shared scorer: FID on ``generative.metrics.DigitFeatures``
(fusegen's digit classifier), real images from the MNIST validation split.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from torch import nn


def reference_dcgan(netG: nn.Module, netD: nn.Module, batches: Iterable[dict], iterations: int,
                    nz: int = 100, lr: float = 2e-4, beta1: float = 0.5,
                    on_step: Callable[[int, float, float], None] | None = None) -> float:
    """Train ``iterations`` batches as pytorch/examples dcgan does; returns wall seconds.

    ``BCEWithLogits`` replaces the example's ``Sigmoid`` + ``BCELoss`` (same maths, fusegen's D
    returns logits)."""
    criterion = nn.BCEWithLogitsLoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    netG.train()
    netD.train()
    i = 0
    start = time.perf_counter()
    while i < iterations:
        for data in batches:
            if i >= iterations:
                break
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            real = data["image"]
            b_size = real.size(0)
            label = torch.full((b_size,), 1.0)
            output = netD(real)
            errD_real = criterion(output, label)
            errD_real.backward()
            noise = torch.randn(b_size, nz)
            fake = netG(noise)
            label.fill_(0.0)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            errD = errD_real + errD_fake
            optimizerD.step()
            # (2) Update G network: maximize log(D(G(z)))
            netG.zero_grad()
            label.fill_(1.0)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            optimizerG.step()
            if on_step is not None:
                on_step(i, errD.item(), errG.item())
            i += 1
    return time.perf_counter() - start


@torch.no_grad()
def digit_scores(generate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], real_batches: Iterable[dict],
                 features: nn.Module, nz: int = 100, seed: int = 0,
                 cond_of: Callable[[dict], torch.Tensor | None] | None = None) -> dict[str, float]:
    """FID on ``features`` (e.g. ``generative.metrics.DigitFeatures``), and, when conditional, how
    often ``features.classify`` reads each batch's label in the generated image.

    ``generate(z, cond)`` returns images in [-1, 1]; one fake per real image, same labels."""
    from generative.metrics import frechet_distance

    g = torch.Generator().manual_seed(seed)
    real_feats, fake_feats, hits, asked = [], [], 0, 0
    for batch in real_batches:
        real = batch["image"]
        cond = cond_of(batch) if cond_of else None
        fake = generate(torch.randn(real.shape[0], nz, generator=g), cond)
        real_feats.append(features(real).double())
        fake_feats.append(features(fake).double())
        if cond is not None:
            hits += int((features.classify(fake).argmax(1) == batch["label"]).sum())
            asked += len(fake)
    out = {"fid": frechet_distance(torch.cat(real_feats), torch.cat(fake_feats))}
    if cond_of is not None:
        out["agreement"] = hits / max(asked, 1)
    return out
