"""docs/configuration.md against config.py: every setting documented, every documented key real, defaults equal.

The page's tables are read as data: a row is ``| `key` | ... |`` under a ``## `` heading naming its
section; a default cell is a TOML value (or ``(unset)`` for None), parsed and compared with the
dataclass's own default, so neither side can drift from the other.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from sandlot.config import ApiKey, Judge0Settings, ServerSettings, Settings, setting_variables

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_LIMIT_TABLES = ("run_defaults", "run_maxima", "compile_defaults", "compile_maxima")
_SECTIONS: dict[str, tuple[type, str | None]] = {  # heading's first word -> the section's class, env prefix
    "Top": (Settings, "SANDLOT_"),
    "`[server]`": (ServerSettings, "SANDLOT_"),
    "`[judge0]`": (Judge0Settings, "SANDLOT_JUDGE0_"),
    "`[api_keys]`": (ApiKey, None),
    "Stage": (Settings, None),
}


def _rows() -> dict[str, list[list[str]]]:
    """The page's table rows (cells stripped), by the first word of the heading above them."""
    rows: dict[str, list[list[str]]] = {}
    heading = ""
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].split()[0]
        elif re.match(r"\| `\w+` \|", line):
            rows.setdefault(heading, []).append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _value(cell: str) -> Any:
    if cell == "(unset)":
        return None
    assert cell.startswith("`") and cell.endswith("`"), cell
    return tomllib.loads(f"v = {cell[1:-1]}")["v"]


def _defaults(cls: type) -> dict[str, Any]:
    instance = cls(key="key", tenant="key") if cls is ApiKey else cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}


def _comparable(value: Any) -> Any:
    if isinstance(value, tuple):  # a list in TOML
        return list(value)
    return str(value) if isinstance(value, Path) else value


def test_every_section_has_its_table() -> None:
    assert set(_rows()) == set(_SECTIONS)


def test_each_setting_is_documented_once_with_its_environment_name_and_default() -> None:
    rows = _rows()
    documented_variables = set()
    for heading, (cls, prefix) in _SECTIONS.items():
        if heading == "Stage":
            continue
        defaults = _defaults(cls)
        tables = (*_LIMIT_TABLES, "server", "judge0", "api_keys", "key")
        if cls is Judge0Settings:
            tables += ("languages",)  # [judge0.languages]: a table of its own, in the section's prose
        expected = {name for name in defaults if name not in tables}
        keys = [row[0].strip("`") for row in rows[heading]]
        assert sorted(keys) == sorted(expected), heading  # none missing, none made up, none twice
        for row in rows[heading]:
            name = row[0].strip("`")
            if prefix is not None:
                assert row[1] == f"`{prefix}{name.upper()}`", row
                documented_variables.add(row[1].strip("`"))
            default_cell = row[2] if prefix is not None else row[1]
            if cls is ApiKey and name == "tenant":
                assert default_cell == "the key itself"
                continue
            assert _value(default_cell) == _comparable(defaults[name]), row
    assert documented_variables == setting_variables() - {"SANDLOT_API_KEYS"}  # that one is [api_keys]'s prose


def test_the_limit_tables() -> None:
    settings = Settings()
    rows = _rows()["Stage"]
    limit_names = [f.name for f in dataclasses.fields(settings.run_defaults)]
    assert sorted(row[0].strip("`") for row in rows) == sorted(limit_names)
    for row in rows:
        name = row[0].strip("`")
        for table, cell in zip(_LIMIT_TABLES, row[1:5], strict=True):
            assert _value(cell) == getattr(getattr(settings, table), name), (table, name)
