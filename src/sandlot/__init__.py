"""sandlot: run untrusted code safely and fast."""

__version__ = "0.1.0"
