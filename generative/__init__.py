"""GANs: generators, discriminators, their losses, the GAN LightningModule, picture and
prediction callbacks, sample-quality metrics."""

from generative.callbacks import InterpolationGrid, PredictionWriter, SampleGrid
from generative.conditioning import load_condition_encoder, pooled_unit_norm
from generative.losses import discriminator_loss, generator_loss, gradient_penalty
from generative.metrics import DigitClassifier, frechet_distance, load_digit_classifier
from generative.module import GAN
from generative.networks import Discriminator, Generator

__all__ = [
    "GAN",
    "DigitClassifier",
    "Discriminator",
    "Generator",
    "InterpolationGrid",
    "PredictionWriter",
    "SampleGrid",
    "discriminator_loss",
    "frechet_distance",
    "generator_loss",
    "gradient_penalty",
    "load_condition_encoder",
    "load_digit_classifier",
    "pooled_unit_norm",
]
