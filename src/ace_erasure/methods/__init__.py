"""Erasure methods behind one interface: ``fit(pipe, concepts, config, seed) -> result``."""

from ace_erasure.methods.ace import AceConfig

CONFIGS = {"ace": AceConfig}

__all__ = ["CONFIGS", "AceConfig"]
