"""Erasure methods behind one interface (:mod:`ace_erasure.methods.base`), registered by name."""

from ace_erasure.methods.ace import Ace, AceConfig
from ace_erasure.methods.advunlearn import ADVUNLEARN
from ace_erasure.methods.base import (
    Method,
    available,
    build_config,
    get_method,
    register,
    unregister,
)
from ace_erasure.methods.esd import ESD_U, ESD_X
from ace_erasure.methods.mace import Mace
from ace_erasure.methods.rece import Rece
from ace_erasure.methods.speed import Speed
from ace_erasure.methods.uce import Uce

register(Ace())
register(Uce())
register(Rece())
register(Speed())
register(Mace())
register(ESD_X)
register(ESD_U)
register(ADVUNLEARN)
DEFAULT_METHOD = Ace.name  # what `erase` uses when no method is named

__all__ = [
    "DEFAULT_METHOD",
    "Ace",
    "AceConfig",
    "Method",
    "available",
    "build_config",
    "get_method",
    "register",
    "unregister",
]
