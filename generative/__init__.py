"""GANs: generators, discriminators, their losses, the GAN LightningModule, picture and
prediction callbacks, sample-quality metrics."""

from generative.augment import diff_augment
from generative.callbacks import InterpolationGrid, PredictionWriter, SampleGrid
from generative.conditioning import load_condition_encoder, pooled_unit_norm
from generative.losses import discriminator_loss, generator_loss, gradient_penalty
from generative.metrics import (
    DigitClassifier,
    DigitFeatures,
    SampleMetrics,
    frechet_distance,
    kernel_inception_distance,
    load_digit_classifier,
    precision_recall_density_coverage,
)
from generative.module import GAN
from generative.networks import Discriminator, Generator

__all__ = [
    "GAN",
    "DigitClassifier",
    "DigitFeatures",
    "Discriminator",
    "Generator",
    "InterpolationGrid",
    "PredictionWriter",
    "SampleMetrics",
    "SampleGrid",
    "diff_augment",
    "discriminator_loss",
    "frechet_distance",
    "generator_loss",
    "gradient_penalty",
    "kernel_inception_distance",
    "load_condition_encoder",
    "load_digit_classifier",
    "pooled_unit_norm",
    "precision_recall_density_coverage",
]
