"""The package version (one place, read by the package and its records)."""

__version__ = "0.1.0"
