"""ace-erasure: erase concepts from text-to-image diffusion models (ACE and baselines)."""

__version__ = "0.1.0"
