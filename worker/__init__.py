"""acetrack: completion tracker for Ace Data Cloud generation tasks."""

__version__ = "0.1.0"
__all__ = ["__version__"]
