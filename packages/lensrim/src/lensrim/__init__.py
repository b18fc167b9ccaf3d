"""lensrim: the Recurrent Inference Machine for pixelated lens reconstruction (in progress)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
