"""Feature extractors for sample metrics: images in [-1, 1] ``[B, C, H, W]`` -> features ``[B, D]``.

Each is a frozen ``nn.Module`` with ``num_features`` and a ``name`` that ``SampleMetrics`` prints
with every score (scores compare only under one extractor):

- ``InceptionFeatures``: torch-fidelity's InceptionV3 (the TF-FID port, ``feature`` 64/192/768/2048),
  the network papers report FID/KID with. Its weights must be on disk; offline without them it
  stops with the file it looked for, where, and how to get it.
- ``TimmFeatures``: any timm model's pooled features (``num_classes=0``), e.g. a DINO/CLIP ViT.
- ``EncoderFeatures``: a fusegen image encoder (its mean-pooled tokens), optionally loaded from a
  fusion checkpoint's ``encoders.<modality>.*`` weights.
- ``DigitFeatures``: fusegen's cached MNIST digit classifier (``generative.metrics.digits``), for
  digits; ``classify`` gives its logits for the conditional agreement score.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class _Frozen(nn.Module):
    """Eval mode that sticks and no gradients: BatchNorm statistics and dropout must not change a metric."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:
        return self


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The InceptionV3 weights file: ``path`` or torch hub's checkpoint cache; a clear error if absent."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    candidate = Path(path) if path else folder / INCEPTION_FILE
    if not candidate.is_file():
        raise FileNotFoundError(
            f"InceptionFeatures: the InceptionV3 weights file {candidate.name!r} is not on disk.\n"
            f"  looked in: {candidate.parent}\n"
            f"  (torch hub's cache: TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')})\n"
            "To get it, on a machine with internet:\n"
            f"  curl -L -o {folder / INCEPTION_FILE} {INCEPTION_URL}\n"
            "or pass weights: /path/to/that/file. Without it, use features that need no download:\n"
            "  generative.metrics.DigitFeatures (digits), TimmFeatures (a timm model on disk) or EncoderFeatures.")
    return candidate


class InceptionFeatures(_Frozen):
    """torch-fidelity's InceptionV3 (TF-FID weights); ``feature``: 64, 192, 768 or 2048 (the FID layer)."""

    def __init__(self, feature: int = 2048, weights: str | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if feature not in (64, 192, 768, 2048):
            raise ValueError(f"InceptionFeatures(feature={feature}): choose 64, 192, 768 or 2048")
        path = inception_weights_path(weights)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", [str(feature)],
                                               feature_extractor_weights_path=str(path))
        self.num_features, self.name = feature, f"InceptionV3-{feature} (torch-fidelity)"
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        uint8 = ((_to_rgb(images).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(uint8)[0].reshape(len(images), -1)


class TimmFeatures(_Frozen):
    """Pooled features of ``timm.create_model(model_name, num_classes=0)``, images resized to ``image_size``
    and normalised with the model's mean/std. ``checkpoint_path``: weights on disk (offline)."""

    def __init__(self, model_name: str = "resnet18", pretrained: bool = False, checkpoint_path: str | None = None,
                 image_size: int | None = None) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                     checkpoint_path=checkpoint_path or "")
        cfg = self.net.pretrained_cfg or {}
        self.image_size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self.num_features = self.net.num_features
        weights = "pretrained" if pretrained else (Path(checkpoint_path).name if checkpoint_path else "random init")
        self.name = f"timm {model_name} ({weights}, {self.num_features}-d)"
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (_to_rgb(images).float() + 1) / 2
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


class EncoderFeatures(_Frozen):
    """A fusegen encoder's mean-pooled tokens (``forward(x) -> [B, T, D]``); with ``checkpoint`` its
    ``encoders.<modality>.*`` weights come from that fusion checkpoint. ``data_range``: the encoder's
    input range (images arrive in [-1, 1])."""

    def __init__(self, encoder: nn.Module, checkpoint: str | None = None, modality: str = "image",
                 data_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        if checkpoint is not None:
            from generative.conditioning import encoder_state_from_checkpoint

            encoder.load_state_dict(encoder_state_from_checkpoint(checkpoint, modality))
        self.encoder, self.data_range = encoder, tuple(data_range)
        self.num_features = int(encoder.out_dim)
        source = Path(checkpoint).name if checkpoint else "random weights"
        self.name = f"{type(encoder).__name__} ({source}, pooled {self.num_features}-d)"
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        tokens = self.encoder((images.float() + 1) / 2 * (hi - lo) + lo)
        return tokens.mean(dim=1) if tokens.dim() == 3 else tokens


class DigitFeatures(_Frozen):
    """The cached MNIST digit classifier's 128-d penultimate layer (trained once on first use, see
    ``generative.metrics.digits``); ``classify`` returns its class logits."""

    def __init__(self, epochs: int = 2, train_limit: int | None = None, seed: int = 0) -> None:
        super().__init__()
        from generative.metrics.digits import load_digit_classifier

        self.classifier = load_digit_classifier(epochs=epochs, train_limit=train_limit, seed=seed)
        self.num_features = self.classifier.num_features
        self.name = f"digit-cnn (e{epochs}, n{train_limit or 'all'}, s{seed}; 128-d)"
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images)
