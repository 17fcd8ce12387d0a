"""The environments' exceptions, in sandlot's one hierarchy (to move into ``sandlot.errors``).

A bad image, a bad spec, an unknown name: the user's input (``RejectedError``, CLI exit 2, HTTP 4xx).
A build whose tool failed or a store in a state we did not leave it in: ours (``SandboxError``).
"""

from __future__ import annotations

from sandlot.errors import RejectedError, SandboxError


class ImageRejected(RejectedError):
    """An image cannot be imported: corrupt, unsupported, hostile, or over a cap (the message names it)."""


class EnvironmentLimitExceeded(ImageRejected):
    """An image is over one of the import caps; ``limit`` names the setting."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class SpecRejected(RejectedError):
    """An environment spec (TOML) is invalid: the message says which key and why."""


class EnvironmentNotFound(RejectedError):
    """No environment by that name in this store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no environment named {name!r} (see: sandlot env list)", field="environment")
        self.name = name


class EnvironmentBuildFailed(SandboxError):
    """Building a declared environment failed (mmdebstrap, pip or npm); the message carries the tool's tail."""
