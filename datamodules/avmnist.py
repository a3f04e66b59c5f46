"""AV-MNIST: each MNIST image paired with a spoken recording (FSDD) of the same digit.

The benchmark of CentralNet (Vielzeuf et al., 2018) and MultiBench (Liang et al., 2021):

- splits as MultiBench: train = first 55,000 MNIST training images, val = last 5,000,
  test = the 10,000 MNIST test images;
- ``split="speaker"`` (default): test audio comes only from the held-out speaker ``yweweler``
  (as the original AV-MNIST generator), train/val audio from the other five speakers, val
  recordings (takes 0-4) disjoint from train recordings (takes 5-49);
  with ``val_speaker`` set, val audio comes from that second held-out speaker instead (train
  from the remaining four), so model choices can be made on an unseen voice without the test;
  ``split="recording"``: FSDD's official split (takes 0-4 of every speaker are test),
  val = takes 5-9, train = takes 10-49. No recording is ever in two splits;
- image: 28x28 in [0, 1]; with ``reduce_image`` it is projected onto the principal components
  (fitted on the 55,000 training images only) that keep ``image_energy`` (25%) of the variance,
  so neither modality alone is enough;
- audio: ``"spectrogram"`` -> ``[B, 1, 112, 112]`` (see ``datamodules.audio``) or
  ``"waveform"`` -> ``[B, audio_length]`` at 8 kHz; optional additive Gaussian noise with RMS
  ``audio_noise`` x the clip's RMS, drawn per sample from the seed (same noise every epoch);
- labels: ``label`` (the digit) and ``speaker`` (index into ``speaker_names``, the sorted FSDD
  speakers: who spoke the paired recording; with ``split="speaker"`` the test speaker is never
  seen in training, so a speaker task needs ``split="recording"``);
- label budget: ``labels_per_class`` or ``label_fraction`` keep a seeded, class-stratified subset
  of the training pairs (``datamodules.budget``); the other rows (``unlabelled_rows``) are for
  label-free pretraining only, which uses the datamodule without a budget;
- pairing: within each split and digit, the split's recordings are cycled in a seeded random
  order, so each recording is used about equally often; deterministic from ``seed``.

The expensive part is built once and cached as safetensors in ``cache_dir("avmnist", <hash of
root, source-file stats, audio_length, skip_bad_files>)``: MNIST, the 3,000 clips and their
spectrograms (each computed once, then indexed by every pair), plus one small PCA basis file per
``image_energy``. Every cached file is verified against its manifest (size + sha256, written
last) and rebuilt with a warning naming it when it does not match (``datamodules.cache``).
Pairings depend on split and seed and take milliseconds, so they are recomputed at setup; a
second run loads everything in one or two seconds. ``export_multibench(out_dir)`` writes
MultiBench's ``.npy`` layout so its code can run on exactly the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from datamodules.audio import AudioBank, SpectrogramFeatures
from datamodules.base import DIGIT_NAMES, BatchedDataset, RealDataModule, presence_masks
from datamodules.budget import check_budget, label_budget
from datamodules.cache import load_or_build, problem, remove_old_temp_files, repair_warning, write_verified
from datamodules.paths import cache_dir, resolve_data_root
from datamodules.sources import download_root, find_fsdd_folder, fsdd_folder, load_mnist, mnist_raw_folder, read_fsdd

BUILD_VERSION = 1
SPLITS = ("train", "val", "test")
NUM_TRAIN, NUM_VAL = 55_000, 5_000


# ----------------------------------------------------------------------------------------------
# Build (once per parameter set, then cached)
# ----------------------------------------------------------------------------------------------
def recording_pools(speaker: list[str], take: torch.Tensor, split: str, test_speaker: str,
                    val_speaker: str | None = None) -> dict[str, np.ndarray]:
    """Recording indices available to each split (disjoint by construction)."""
    speaker_arr, take = np.asarray(speaker), take.numpy()
    if split == "speaker":
        for arg, name in (("test_speaker", test_speaker), ("val_speaker", val_speaker)):
            if name is not None and name not in set(speaker):
                raise ValueError(f"{arg} {name!r} has no FSDD recordings; speakers: {sorted(set(speaker))}")
        if val_speaker == test_speaker:
            raise ValueError(f"val_speaker and test_speaker are both {test_speaker!r}; pick another val_speaker "
                             f"from {sorted(set(speaker) - {test_speaker})}")
        held = speaker_arr == test_speaker
        if val_speaker is None:
            masks = {"train": ~held & (take >= 5), "val": ~held & (take < 5), "test": held}
        else:  # validation on a second unseen voice, so choices are made on speaker generalisation
            val_held = speaker_arr == val_speaker
            masks = {"train": ~held & ~val_held, "val": val_held, "test": held}
    elif split == "recording":
        if val_speaker is not None:
            raise ValueError("val_speaker needs split='speaker' (the recording split mixes every speaker)")
        masks = {"train": take >= 10, "val": (take >= 5) & (take < 10), "test": take < 5}
    else:
        raise ValueError(f"split must be 'speaker' or 'recording', got {split!r}")
    return {s: np.flatnonzero(m) for s, m in masks.items()}


def pair_recordings(labels: np.ndarray, pool: np.ndarray, rec_digit: np.ndarray, rng: np.random.Generator,
                    split: str) -> np.ndarray:
    """For every image, a recording of the same digit from ``pool``: cycle the digit's recordings
    in seeded random order so usage is balanced."""
    out = np.empty(len(labels), dtype=np.int64)
    for d in range(10):
        where = np.flatnonzero(labels == d)
        candidates = pool[rec_digit[pool] == d]
        if len(where) and not len(candidates):
            raise ValueError(f"no FSDD recording of digit {d} available for the {split} split")
        reps = -(-len(where) // max(len(candidates), 1))
        order = np.concatenate([rng.permutation(candidates) for _ in range(reps)]) if reps else candidates
        out[where] = order[: len(where)]
    return out


def fit_pca(images: torch.Tensor, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[784]`` and the top-k components ``[k, 784]`` keeping ``energy`` of the variance."""
    x = images.reshape(len(images), -1).float() / 255.0
    mean = x.mean(dim=0)
    xc = x - mean
    # float32 Gram matrix (the 55k x 784 product is the slow part), float64 eigendecomposition.
    evals, evecs = torch.linalg.eigh((xc.T @ xc).double())  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    k = int(torch.searchsorted(evals.cumsum(0) / evals.sum(), torch.tensor(energy, dtype=torch.float64))) + 1
    return mean, evecs[:, :k].T.contiguous().float()


def build_avmnist(root: str | None, *, audio_length: int, download: bool, skip_bad_files: bool) -> tuple[dict, dict]:
    """Read MNIST and every FSDD clip once and compute the 3,000 spectrograms; returns
    (tensors, metadata). Split-, seed- and PCA-dependent arrays are derived from these cheaply."""
    mnist = load_mnist(root, download=download)
    rec = read_fsdd(root, length=audio_length, download=download, skip_bad_files=skip_bad_files)
    tensors = {
        "train_images": mnist["train_images"].contiguous(), "train_labels": mnist["train_labels"],
        "test_images": mnist["test_images"].contiguous(), "test_labels": mnist["test_labels"],
        "waveforms": rec.waveforms.contiguous(), "spectrograms": SpectrogramFeatures()(rec.waveforms).half(),
        "rec_digit": rec.digit, "rec_take": rec.index,
    }
    meta = {"rec_speaker": rec.speaker, "rec_path": rec.paths, "bad_files": rec.bad_files}
    return tensors, meta


def source_folders(root: Path) -> list[Path | None]:
    """The MNIST and FSDD folders a build reads (data root first, else the download root)."""
    mnist = root / "MNIST" / "raw"
    if not (mnist.is_dir() and any(mnist.iterdir())):
        mnist = download_root() / "MNIST" / "raw"
    return [mnist if mnist.is_dir() else None, find_fsdd_folder(root)]


def source_fingerprint(root: Path) -> list:
    """(folder, count, digest of (name, size, mtime)) of the MNIST and FSDD files: a stat per
    file (milliseconds), so edited or replaced source data gives a new cache key."""
    out = []
    for folder, pattern in zip(source_folders(root), ("*", "*.wav")):
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob(pattern))
                 if p.is_file() and not p.name.endswith(".manifest.json")] if folder is not None else []
        digest = hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:12]
        out.append([str(folder), len(stats), digest])
    return out


def _read_pca(path: Path) -> dict[str, torch.Tensor]:
    pca = load_file(str(path))
    if set(pca) != {"mean", "components"} or pca["mean"].shape != (784,) or pca["components"].shape[1:] != (784,):
        raise ValueError(f"unexpected contents {({k: tuple(v.shape) for k, v in pca.items()})}")
    return pca


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class PairedDigits(BatchedDataset):
    """One split of AV-MNIST: images, the recording paired with each, labels."""

    def __init__(self, image: torch.Tensor, recording: torch.Tensor, label: torch.Tensor, *, bank: AudioBank,
                 stream: int, present: dict[str, torch.Tensor] | None = None,
                 speaker: torch.Tensor | None = None) -> None:
        self.image, self.recording, self.label, self.bank, self.stream = image, recording, label, bank, stream
        self.present = present  # None: every modality present
        self.speaker = speaker  # per pair: the speaker of its recording (index into speaker_names)

    def __len__(self) -> int:
        return len(self.label)

    def presence(self, index: torch.Tensor, modality: str) -> torch.Tensor:
        if self.present is None:
            return torch.ones(len(index), dtype=torch.bool)
        return self.present[modality][index]

    def get_batch(self, index: torch.Tensor) -> dict:
        batch = {
            "image": self.image[index],
            "audio": self.bank.get(self.recording[index], index, self.stream),
            "label": self.label[index],
            "present": {m: self.presence(index, m) for m in ("image", "audio")},
        }
        if self.speaker is not None:
            batch["speaker"] = self.speaker[index]
        if self.present is not None:  # absent modalities are blanked, so a model cannot peek
            for m in ("image", "audio"):
                batch[m][~batch["present"][m]] = 0.0
        return batch


# ----------------------------------------------------------------------------------------------
# DataModule
# ----------------------------------------------------------------------------------------------
class AVMNISTDataModule(RealDataModule):
    """AV-MNIST (MNIST image + FSDD spoken digit) with MultiBench's splits; see the module doc.

    Args:
        root: data root holding ``MNIST/raw`` and ``fsdd/recordings`` (default: FUSEGEN_DATA or
            ``../shared/data``). Never written to.
        split: ``"speaker"`` (test audio from the held-out ``test_speaker``) or ``"recording"``.
        reduce_image / image_energy: PCA energy reduction of the images (fitted on train only).
        audio_format: ``"spectrogram"`` ([B, 1, 112, 112]) or ``"waveform"`` ([B, audio_length]).
        audio_noise: additive noise RMS relative to each clip's RMS (0 = clean).
        seed: pairing and noise seed.
        batch_size / num_workers: DataLoader settings.
        download: fetch missing MNIST / FSDD files into the cache (needs internet).
        cache_dir: where built arrays go (default ``cache_dir("avmnist")``, i.e. FUSEGEN_CACHE).
        train_limit: use only the first N training pairs (quick runs).
        test_speaker: held-out speaker of the ``speaker`` split.
        val_speaker: optional second held-out speaker whose recordings form the val audio
            (``speaker`` split only); the train audio then comes from the other four speakers.
        audio_length: clip length in samples at 8 kHz (centre-crop / zero-pad).
        skip_bad_files: skip unreadable wavs with a warning instead of failing.
        missing_prob: per-sample probability that each modality is absent (marked False in
            ``present`` and blanked to zeros; never all modalities of a sample), seeded, applied
            to the splits in ``missing_splits`` -- for robustness-to-missing-modality studies.
        labels_per_class / label_fraction: label budget on the training pairs (one of them):
            N pairs of every digit, or a fraction of the training pairs, class-stratified and
            seeded by ``budget_seed`` (default ``seed``); ``unlabelled_rows`` holds the others.
    """

    num_classes = 10
    sample_rate = 8000
    modalities = ("image", "audio")
    label_keys = ("label", "speaker")  # batch keys holding a label (see MultiTaskClassifier)

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES)

    @property
    def label_classes(self) -> dict[str, list[str]]:
        """Label key -> class names (the speakers after ``setup``)."""
        return {"label": self.class_names, "speaker": list(self.speaker_names)}

    def __init__(
        self,
        root: str | None = None,
        split: str = "speaker",
        reduce_image: bool = True,
        image_energy: float = 0.25,
        audio_format: str = "spectrogram",
        audio_noise: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        download: bool = False,
        cache_dir: str | None = None,
        train_limit: int | None = None,
        test_speaker: str = "yweweler",
        audio_length: int = 8000,
        skip_bad_files: bool = False,
        missing_prob: float = 0.0,
        missing_splits: list[str] | None = None,
        val_speaker: str | None = None,
        labels_per_class: int | None = None,
        label_fraction: float | None = None,
        budget_seed: int | None = None,
    ) -> None:
        super().__init__()
        check_budget(labels_per_class, label_fraction)
        if not 0.0 <= missing_prob < 1.0:
            raise ValueError(f"missing_prob must be in [0, 1), got {missing_prob}")
        bad_splits = set(missing_splits or ()) - set(SPLITS)
        if bad_splits:
            raise ValueError(f"missing_splits: unknown split(s) {sorted(bad_splits)}; choose from {list(SPLITS)}")
        if split not in ("speaker", "recording"):
            raise ValueError(f"split must be 'speaker' or 'recording', got {split!r}")
        if audio_format not in ("spectrogram", "waveform"):
            raise ValueError(f"audio_format must be 'spectrogram' or 'waveform', got {audio_format!r}")
        if not 0.0 < image_energy <= 1.0:
            raise ValueError(f"image_energy must be in (0, 1], got {image_energy}")
        self.save_hyperparameters()
        self.cache_hit: bool | None = None
        self.cache_path: Path | None = None
        self.build_seconds: float | None = None
        self.arrays: dict[str, torch.Tensor] = {}
        self.meta: dict = {}
        self.pca: dict[str, torch.Tensor] = {}
        self.speaker_names: list[str] = []
        self.unlabelled_rows: torch.Tensor = torch.zeros(0, dtype=torch.long)

    # -- build / cache ------------------------------------------------------------------------
    def build_key(self) -> str:
        """Hash of what the cached arrays depend on (split / seed / PCA are derived at setup),
        including a cheap fingerprint of the source files so edited data is rebuilt."""
        hp = self.hparams
        root = resolve_data_root(hp.root, must_exist=False).resolve()
        params = {"version": BUILD_VERSION, "root": str(root), "sources": source_fingerprint(root),
                  "audio_length": hp.audio_length, "skip_bad_files": hp.skip_bad_files}
        return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cache_folder(self) -> Path:
        hp = self.hparams
        if hp.cache_dir:
            return Path(hp.cache_dir).expanduser() / self.build_key()
        return cache_dir("avmnist", self.build_key())

    def prepare_data(self) -> None:
        """Build the arrays once (rank 0) so DDP ranks only load them."""
        self._load_or_build()

    def _load_or_build(self) -> None:
        if self.arrays:
            return
        hp = self.hparams
        if hp.download:  # fetch first, so the cache key already sees the downloaded files
            mnist_raw_folder(hp.root, download=True)
            fsdd_folder(hp.root, download=True)
        folder = self.cache_folder
        folder.mkdir(parents=True, exist_ok=True)
        remove_old_temp_files(folder)
        path, meta_path = folder / "arrays.safetensors", folder / "meta.json"
        start = time.perf_counter()
        self.cache_hit = False
        reasons = {p: problem(p) for p in (path, meta_path)}
        if not any(reasons.values()):
            try:
                self.arrays, self.meta = load_file(str(path)), json.loads(meta_path.read_text())
                if len(self.meta["rec_speaker"]) != len(self.arrays["rec_digit"]):
                    raise ValueError("meta.json and arrays.safetensors disagree on the number of recordings")
                self.cache_hit = True
            except Exception as err:  # matches its manifest yet unreadable (e.g. from another version)
                reasons[path] = f"unreadable ({type(err).__name__}: {err})"
        if not self.cache_hit:
            for p, reason in reasons.items():
                if reason not in (None, "missing"):
                    repair_warning(p, reason)
            self.arrays, self.meta = build_avmnist(hp.root, audio_length=hp.audio_length, download=hp.download,
                                                   skip_bad_files=hp.skip_bad_files)
            write_verified(path, lambda tmp: save_file(self.arrays, str(tmp)))
            write_verified(meta_path, lambda tmp: tmp.write_text(json.dumps(self.meta)))
        if hp.reduce_image:
            self.pca = self._pca(folder / self.pca_file_name(hp.image_energy))
        self.cache_path, self.build_seconds = path, time.perf_counter() - start

    @staticmethod
    def pca_file_name(energy: float) -> str:
        return f"pca-{float(energy)!r}.safetensors"  # repr: 0.25 and 0.2500001 never share a file

    def _pca(self, path: Path) -> dict[str, torch.Tensor]:
        def fit() -> dict[str, torch.Tensor]:
            mean, components = fit_pca(self.arrays["train_images"][:NUM_TRAIN], self.hparams.image_energy)
            return {"mean": mean, "components": components}

        return load_or_build(path, _read_pca, fit, lambda pca, tmp: save_file(pca, str(tmp)))[0]

    def pairings(self) -> dict[str, torch.Tensor]:
        """Recording index paired with each image, per split (seeded; milliseconds to compute)."""
        hp, a = self.hparams, self.arrays
        pools = recording_pools(self.meta["rec_speaker"], a["rec_take"], hp.split, hp.test_speaker, hp.val_speaker)
        labels, rec_digit = self.labels(), a["rec_digit"].numpy()
        return {s: torch.from_numpy(pair_recordings(labels[s].numpy(), pools[s], rec_digit,
                                                    np.random.default_rng([hp.seed, code]), s))
                for code, s in enumerate(SPLITS)}

    # -- splits -------------------------------------------------------------------------------
    def images(self) -> dict[str, torch.Tensor]:
        """Float images ``[N, 1, 28, 28]`` in [0, 1] per split (PCA-reduced when asked)."""
        a = self.arrays
        flat = torch.cat([a["train_images"], a["test_images"]]).reshape(-1, 784).float() / 255.0
        if self.hparams.reduce_image:
            c, mean = self.pca["components"], self.pca["mean"]
            flat = (flat - mean) @ c.T @ c + mean
        img = flat.reshape(-1, 1, 28, 28)
        n_train = len(a["train_images"])
        return {"train": img[:NUM_TRAIN], "val": img[NUM_TRAIN:n_train], "test": img[n_train:]}

    def labels(self) -> dict[str, torch.Tensor]:
        a = self.arrays
        return {"train": a["train_labels"][:NUM_TRAIN], "val": a["train_labels"][NUM_TRAIN:], "test": a["test_labels"]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self._load_or_build()
        hp, a = self.hparams, self.arrays
        self.bank = AudioBank(a["waveforms"].float(), a["spectrograms"].float(), hp.audio_format, hp.audio_noise,
                              hp.seed)
        images, labels, pairs = self.images(), self.labels(), self.pairings()
        self.speaker_names = sorted(set(self.meta["rec_speaker"]))
        rec_speaker = torch.tensor([self.speaker_names.index(p) for p in self.meta["rec_speaker"]], dtype=torch.long)
        for code, s in enumerate(SPLITS):
            image, label, recording = images[s], labels[s], pairs[s]
            if s == "train" and hp.train_limit is not None:
                image, label, recording = image[: hp.train_limit], label[: hp.train_limit], recording[: hp.train_limit]
            # .get: a subclass that saves its own hyperparameters may not take budgets
            per_class, fraction, budget_seed = (hp.get(k) for k in ("labels_per_class", "label_fraction",
                                                                      "budget_seed"))
            if s == "train" and (per_class is not None or fraction is not None):
                keep, rest = label_budget(label, per_class, fraction, hp.seed if budget_seed is None else budget_seed)
                keep = torch.from_numpy(keep)
                self.unlabelled_rows = torch.from_numpy(rest)
                image, label, recording = image[keep], label[keep], recording[keep]
            present = None
            if hp.missing_prob > 0 and s in (hp.missing_splits or SPLITS):
                present = presence_masks(len(label), self.modalities, hp.missing_prob, [hp.seed, code, 13])
            self.splits[s] = self._make_dataset(s, PairedDigits(image.contiguous(), recording, label,
                                                                bank=self.bank, stream=code, present=present,
                                                                speaker=rec_speaker[recording]))

    def _make_dataset(self, split: str, paired: PairedDigits) -> BatchedDataset:
        """Hook for subclasses that add modalities (see ``TriModalDigitsDataModule``)."""
        return paired

    # -- MultiBench export --------------------------------------------------------------------
    def export_multibench(self, out_dir: str | os.PathLike, chunk: int = 2048, limit: int | None = None) -> Path:
        """Write MultiBench's AV-MNIST layout: ``image/{train,test}_data.npy`` (N, 784) and
        ``audio/{train,test}_data.npy`` (N, 112, 112), both float32 on a 0-255 scale (MultiBench
        divides by 255), and ``{train,test}_labels.npy``. MultiBench's train file = our train then
        val (it takes the last 5,000 as validation, matching our val split). The full export is
        about 3.3 GB (float32 spectrograms); ``limit`` keeps only the first ``limit`` samples of
        each split (smoke tests only: the train file then no longer ends with 5,000 val rows)."""
        if self.hparams.audio_format != "spectrogram":
            raise ValueError("export_multibench needs audio_format='spectrogram' (MultiBench reads 112x112 arrays)")
        self.setup()
        out = Path(out_dir)
        (out / "image").mkdir(parents=True, exist_ok=True)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        groups = {"train": [self.splits["train"], self.splits["val"]], "test": [self.splits["test"]]}
        size = (lambda d: len(d)) if limit is None else (lambda d: min(len(d), limit))
        for name, datasets in groups.items():
            n = sum(size(d) for d in datasets)
            img = np.lib.format.open_memmap(out / "image" / f"{name}_data.npy", "w+", np.float32, (n, 784))
            aud = np.lib.format.open_memmap(out / "audio" / f"{name}_data.npy", "w+", np.float32, (n, 112, 112))
            labels = np.empty(n, dtype=np.int64)
            row = 0
            for ds in datasets:
                for start in range(0, size(ds), chunk):
                    b = ds.get_batch(torch.arange(start, min(start + chunk, size(ds))))
                    k = len(b["label"])
                    img[row:row + k] = (b["image"].reshape(k, 784) * 255.0).numpy()
                    aud[row:row + k] = (b["audio"].reshape(k, 112, 112) * 255.0).numpy()
                    labels[row:row + k] = b["label"].numpy()
                    row += k
            img.flush()
            aud.flush()
            del img, aud
            np.save(out / f"{name}_labels.npy", labels)
        return out
