"""The exception hierarchy: bad input and sandbox failure never blur.

``RejectedError`` is the caller's mistake (status ``rejected``, CLI exit 2, HTTP 4xx).
``SandboxError`` is ours: the sandbox could not do its job (status ``internal_error``).
A program's own failure is never an exception: it is a ``Result``.
"""

from __future__ import annotations


class SandlotError(Exception):
    """Base class of every error sandlot raises on purpose."""


class RejectedError(SandlotError):
    """The request is invalid: the message says which field and why."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SessionNotFound(RejectedError):
    """No such session for this tenant (or it expired)."""


class SandboxError(SandlotError):
    """The sandbox itself failed (never the program's fault)."""


class ConfigError(SandlotError):
    """Settings or installation are wrong; raised at start-up."""
