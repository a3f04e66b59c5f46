"""Multimodal fusion: encoders (image/audio/text), fusion heads, Lightning modules.

Encoders are plain ``nn.Module``s returning ``[B, T, D]`` with ``out_dim``; heads map a dict of
them (+ a presence mask) to one vector; ``FusionClassifier`` / ``UnimodalClassifier`` train them.
"""

from fusion.contrastive import ContrastivePretrainer
from fusion.distill import DistillationClassifier
from fusion.encoders import (
    AudioEncoder,
    Encoder,
    ImageEncoder,
    LeNetAudioEncoder,
    LeNetEncoder,
    LeNetImageEncoder,
    LogMel,
    MelCNNAudioEncoder,
    PretrainedAudioEncoder,
    RNNEncoder,
    SmallCNNImageEncoder,
    SpecAugment,
    TextEncoder,
    TransformerTextEncoder,
    Wav2Vec2AudioEncoder,
)
from fusion.heads import (
    AttentionFusion,
    ConcatFusion,
    GatedFusion,
    LowRankTensorFusion,
    MeanFusion,
    TensorFusion,
    masked_mean,
)
from fusion.module import FusionClassifier, UnimodalClassifier
from fusion.multitask import MultiTaskClassifier
from fusion.nature_cnn import NatureCNNEncoder
from fusion.prediction import PredictionWriter
from fusion.pretrained import WeightsUnavailableError, from_pretrained, save_pretrained

__all__ = [
    "AttentionFusion",
    "AudioEncoder",
    "ConcatFusion",
    "ContrastivePretrainer",
    "DistillationClassifier",
    "Encoder",
    "FusionClassifier",
    "GatedFusion",
    "ImageEncoder",
    "LeNetAudioEncoder",
    "LeNetEncoder",
    "LeNetImageEncoder",
    "LogMel",
    "LowRankTensorFusion",
    "MeanFusion",
    "MelCNNAudioEncoder",
    "MultiTaskClassifier",
    "NatureCNNEncoder",
    "PretrainedAudioEncoder",
    "RNNEncoder",
    "PredictionWriter",
    "SmallCNNImageEncoder",
    "SpecAugment",
    "TensorFusion",
    "TextEncoder",
    "TransformerTextEncoder",
    "UnimodalClassifier",
    "Wav2Vec2AudioEncoder",
    "WeightsUnavailableError",
    "from_pretrained",
    "masked_mean",
    "save_pretrained",
]
