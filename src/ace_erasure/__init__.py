"""ace-erasure: erase concepts from text-to-image diffusion models (ACE and baselines)."""

__version__ = "0.1.0"

from ace_erasure.api import erase
from ace_erasure.concepts import Concept, load_concepts
from ace_erasure.erasure import Erasure
from ace_erasure.methods import AceConfig

__all__ = ["AceConfig", "Concept", "Erasure", "__version__", "erase", "load_concepts"]
