"""The distribution's version, and the User-Agent that names it."""

__version__ = "0.1.0"
USER_AGENT = f"sandlot-client/{__version__}"
