"""ace-erasure: erase concepts from text-to-image diffusion models (ACE and baselines)."""

from ace_erasure._version import __version__
from ace_erasure.api import apply, combine, erase, generate, load_pipeline
from ace_erasure.concepts import Concept, load_concepts
from ace_erasure.erasure import Erasure
from ace_erasure.methods import AceConfig, register

__all__ = [
    "AceConfig",
    "Concept",
    "Erasure",
    "__version__",
    "apply",
    "combine",
    "erase",
    "generate",
    "load_concepts",
    "load_pipeline",
    "register",
]
