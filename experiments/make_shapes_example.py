"""Write a small RGB image folder of coloured shapes, one class per subfolder.

    python -m experiments.make_shapes_example --out runs/shapes-data --n 1500 --size 32

It is laid out as ``datasets``' ``imagefolder`` (and torchvision's ``ImageFolder``) expect, and read by
``experiments/gan/imagefolder-example.yaml`` through ``datamodules.HFDataModule``::

    runs/shapes-data/
      train/red-disc/00000.png       32x32 RGB PNGs
      train/green-square/00000.png
      train/blue-triangle/00000.png
      test/...                       the same classes, other random draws

Each class has its own shape and hue; position, size, exact colour and the grey background's
brightness vary, so a GAN must learn colour, shape and placement. Procedural: no download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# name -> (RGB colour, shape)
CLASSES = {
    "red-disc": ((220, 40, 40), "disc"),
    "green-square": ((40, 200, 60), "square"),
    "blue-triangle": ((40, 80, 230), "triangle"),
}


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 image: a jittered ``colour`` ``shape`` on a dark grey background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(0.22, 0.38) * size
    cy, cx = rng.uniform(r, size - r, 2)
    if shape == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        mask = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    else:  # upward triangle: inside the three half-planes
        top, base = cy - r, cy + r * 0.8
        half = (yy - top) / (base - top) * r
        mask = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
    background = rng.uniform(20, 60)
    image = np.full((size, size, 3), background, dtype=np.float32)
    jitter = rng.uniform(-25, 25, 3)
    image[mask] = np.clip(np.asarray(colour, dtype=np.float32) + jitter, 0, 255)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_shapes_example(out: str | Path, n: int = 1500, size: int = 32, test_fraction: float = 0.2,
                        seed: int = 0) -> Path:
    """Write ``n`` images (train + test, classes balanced) under ``out``; returns the folder."""
    from PIL import Image

    from datamodules.files import atomic_path

    out = Path(out)
    rng = np.random.default_rng(seed)
    per_class = max(1, n // len(CLASSES))
    n_test = int(round(test_fraction * per_class))
    for name, (colour, shape) in CLASSES.items():
        for split, count in (("train", per_class - n_test), ("test", n_test)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                with atomic_path(folder / f"{i:05d}.png") as tmp:
                    Image.fromarray(draw_shape(shape, colour, size, rng)).save(tmp, format="PNG")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/shapes-data", help="folder to write (train/<class>/, test/<class>/)")
    parser.add_argument("--n", type=int, default=1500, help="images in all (train + test)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = make_shapes_example(args.out, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} coloured-shape images ({len(CLASSES)} classes) to {folder}")


if __name__ == "__main__":
    main()
