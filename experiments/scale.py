"""Pieces of the scale-out presets that a YAML file cannot spell by itself."""

from __future__ import annotations

from torch import nn


def is_transformer_layer(module: nn.Module) -> bool:
    """A transformer block: torch's encoder/decoder layers, or a Hugging Face / timm block
    (a ``...Layer`` / ``...Block`` class holding an attention submodule)."""
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return True
    if not type(module).__name__.endswith(("Layer", "Block")):
        return False
    return any("attention" in name.lower() or "attn" in name.lower() for name, _ in module.named_children())


def transformer_layer_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP ``auto_wrap_policy``: one FSDP unit per transformer block, the rest in the root unit.

    Sharding per block keeps only one block's full parameters gathered at a time, which is what
    lets a text encoder larger than one GPU train (the usual transformer wrapping policy, found
    by structure so it needs no list of model-specific classes)."""
    if recurse:
        return True
    return is_transformer_layer(module)
