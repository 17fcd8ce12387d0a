"""Fixtures the judge tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandlot.sandbox import Box


@pytest.fixture(name="stages")
def stages_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The stage of every command any box of this process runs, in order (the real run goes on)."""
    seen: list[str] = []
    original = Box.run

    def spy(self: Box, command: Any, **options: Any) -> Any:
        seen.append(options.get("stage", "run"))
        return original(self, command, **options)

    monkeypatch.setattr(Box, "run", spy)
    yield seen
