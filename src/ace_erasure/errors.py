"""Exceptions with messages a user can act on; the CLI prints one line and exits non-zero."""


class AceError(Exception):
    """Base class of every error that ace-erasure reports to users."""


class ConfigError(AceError, ValueError):
    """An impossible or inconsistent configuration."""


class ConceptError(AceError, ValueError):
    """A concept that cannot be erased as given (unknown word, empty, equal to its anchor, ...)."""


class ModelLoadError(AceError):
    """A model path or hub id that cannot be loaded."""


class WeightsError(AceError):
    """A weights file that is missing, corrupt, or made for another model."""


class OutputError(AceError):
    """An output path that cannot be written (checked before the work starts)."""


class UsageError(AceError):
    """A command-line option that makes no sense (the CLI exits with code 2)."""
