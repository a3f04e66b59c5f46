"""Multimodal fusion: encoders (image/audio/text), fusion heads, Lightning modules."""

from fusion.encoders import Encoder, MelCNNAudioEncoder, SmallCNNImageEncoder, TransformerTextEncoder
from fusion.heads import ConcatFusion, masked_mean
from fusion.module import FusionClassifier

__all__ = [
    "ConcatFusion",
    "Encoder",
    "FusionClassifier",
    "MelCNNAudioEncoder",
    "SmallCNNImageEncoder",
    "TransformerTextEncoder",
    "masked_mean",
]
