"""Sample-quality metrics: pure functions on feature matrices, feature extractors, and
``SampleMetrics``, the evaluation object a ``GAN`` is given."""

from generative.metrics.digits import DigitClassifier, load_digit_classifier, train_digit_classifier
from generative.metrics.features import (
    DigitFeatures,
    EncoderFeatures,
    InceptionFeatures,
    TimmFeatures,
    inception_weights_path,
)
from generative.metrics.functions import (
    frechet_distance,
    kernel_inception_distance,
    precision_recall_density_coverage,
)
from generative.metrics.sample_metrics import METRICS, SampleMetrics

__all__ = [
    "METRICS",
    "DigitClassifier",
    "DigitFeatures",
    "EncoderFeatures",
    "InceptionFeatures",
    "SampleMetrics",
    "TimmFeatures",
    "frechet_distance",
    "inception_weights_path",
    "kernel_inception_distance",
    "load_digit_classifier",
    "precision_recall_density_coverage",
    "train_digit_classifier",
]
