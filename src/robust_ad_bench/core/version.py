"""The package version (one place: the public API and ``--version`` read it)."""

__version__ = "0.1.0"
