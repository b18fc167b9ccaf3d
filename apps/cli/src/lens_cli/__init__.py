"""The `lens` command-line application."""

__version__ = "0.1.0"
