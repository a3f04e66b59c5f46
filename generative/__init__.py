"""GANs: generators, discriminators, the GAN LightningModule, sample and metric callbacks."""

from generative.callbacks import InterpolationGrid, SampleGrid
from generative.conditioning import FrozenEncoder
from generative.metrics import DigitClassifier, frechet_distance, load_digit_classifier
from generative.module import GAN
from generative.networks import Discriminator, Generator

__all__ = [
    "GAN",
    "DigitClassifier",
    "Discriminator",
    "FrozenEncoder",
    "Generator",
    "InterpolationGrid",
    "SampleGrid",
    "frechet_distance",
    "load_digit_classifier",
]
