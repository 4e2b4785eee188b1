"""chain-of-diffusion: run, measure and mitigate model collapse in self-consuming diffusion chains."""

__version__ = "0.1.0"
