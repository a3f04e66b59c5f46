"""Write a demo "own files" dataset: PNG digits + WAV spoken digits + captions + CSV manifests.

    python -m experiments.make_files_example --out runs/files-example-data --n 600

It is laid out the way a user's own data usually is, and read by
``experiments/fusion/files-example.yaml`` through ``datamodules.HFDataModule``::

    runs/files-example-data/
      train.csv, test.csv        columns: image, audio, caption, label, speaker (paths relative to the CSV)
      images/train/00000.png     28x28 grey MNIST digits
      audio/train/00000.wav      8 kHz FSDD recordings of the same digit (soundfile, 16-bit PCM)

Each row pairs an MNIST image and an FSDD recording of the same digit. Test rows take MNIST's
test images and FSDD's official test takes (0-4), so nothing in test.csv was seen in training.
About ``--empty_caption`` of the captions and ``--empty_audio`` of the recordings are left empty,
which HFDataModule serves as "absent" for that row. The data comes from the shared data root
(``FUSEGEN_DATA`` or ``../shared/data``; see datamodules/paths.py).
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_files_example(out: str | Path, n: int = 600, test_fraction: float = 0.2, seed: int = 0,
                       empty_caption: float = 0.5, empty_audio: float = 0.1, root: str | None = None) -> Path:
    """Write the dataset under ``out``; returns the folder. ``n`` rows in all (train + test)."""
    import soundfile as sf
    from PIL import Image

    from datamodules.files import atomic_path, atomic_write_bytes, atomic_write_text
    from datamodules.sources import fsdd_folder, list_fsdd, load_mnist

    out = Path(out)
    rng = np.random.default_rng(seed)
    mnist = load_mnist(root)
    recordings = list_fsdd(fsdd_folder(root))
    n_test = int(round(test_fraction * n))
    for split, count in (("train", n - n_test), ("test", n_test)):
        images, labels = mnist[f"{split}_images"].numpy(), mnist[f"{split}_labels"].numpy()
        # FSDD's official split: takes 0-4 are test, 5-49 train.
        pool = [r for r in recordings if (r[3] < 5) == (split == "test")]
        by_digit = {d: [r for r in pool if r[1] == d] for d in range(10)}
        picks = rng.choice(len(labels), size=count, replace=False)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, j in enumerate(picks):
            digit = int(labels[j])
            image_rel = f"images/{split}/{i:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(images[j], mode="L").save(buf, format="PNG")
            atomic_write_bytes(out / image_rel, buf.getvalue())
            audio_rel, speaker = "", ""
            if rng.random() >= empty_audio:
                path, _, speaker, _ = by_digit[digit][rng.integers(len(by_digit[digit]))]
                wave, sr = sf.read(str(path), dtype="int16")
                audio_rel = f"audio/{split}/{i:05d}.wav"
                with atomic_path(out / audio_rel) as tmp:
                    sf.write(str(tmp), wave, sr, subtype="PCM_16", format="WAV")
            caption = f"a handwritten {WORDS[digit]}" if rng.random() >= empty_caption else ""
            rows.append({"image": image_rel, "audio": audio_rel, "caption": caption, "label": digit,
                         "speaker": speaker})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["image", "audio", "caption", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / f"{split}.csv", text.getvalue())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/files-example-data", help="output folder (default: %(default)s)")
    parser.add_argument("--n", type=int, default=600, help="rows in all, train + test (default: %(default)s)")
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--empty_caption", type=float, default=0.5, help="share of rows without a caption")
    parser.add_argument("--empty_audio", type=float, default=0.1, help="share of rows without a recording")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="data root (default: FUSEGEN_DATA or ../shared/data)")
    args = parser.parse_args(argv)
    out = make_files_example(args.out, args.n, args.test_fraction, args.seed, args.empty_caption,
                             args.empty_audio, args.root)
    print(f"wrote {args.n} rows to {out}/train.csv and {out}/test.csv (images/, audio/ beside them)")


if __name__ == "__main__":
    main()
