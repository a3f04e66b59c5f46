"""The `fusegen` command line (LightningCLI), experiment configs, benchmarks and the demo."""
