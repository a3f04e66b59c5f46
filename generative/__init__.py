"""GANs: generators, discriminators, the GAN LightningModule, sample and metric callbacks."""
