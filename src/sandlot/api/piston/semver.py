"""Semantic-version selection the way Piston clients send it (node-semver's ``satisfies`` subset).

``*``, x-ranges, ``^ ~ < <= > >= =`` and ``||``; ``semver`` shows a probed version the way
Piston does (``1.19`` -> ``1.19.0``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence

_Version = tuple[int, int, int]
_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_COMPARATOR = re.compile(r"(<=|>=|<|>|=|\^|~)?v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?")
_OPERATOR_GAP = re.compile(r"(<=|>=|<|>|=|\^|~)\s+")
_COMPARE: dict[str, Callable[[_Version, _Version], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def semver(raw: str) -> str:
    """A probed version as Piston shows one: ``1.19`` -> ``1.19.0``; unparseable ones as they are."""
    match = _VERSION.match(raw)
    return ".".join(str(int(part or 0)) for part in match.groups()) if match else raw


def satisfies(version: str, selector: str) -> bool:
    """node-semver's ``satisfies`` for what Piston clients send: ``*``, x-ranges, ``^ ~ < <= > >= =``, ``||``."""
    selector = selector.strip()
    if selector in ("*", "x", "X") or selector == version:
        return True
    match = _VERSION.fullmatch(version)
    if match is None:
        return False
    current = (int(match[1]), int(match[2] or 0), int(match[3] or 0))
    for alternative in selector.split("||"):
        checks = [_comparator(word) for word in _OPERATOR_GAP.sub(r"\1", alternative).split()]
        if checks and all(c is not None and all(_COMPARE[op](current, bound) for op, bound in c) for c in checks):
            return True
    return False


def _comparator(word: str) -> list[tuple[str, _Version]] | None:
    """One comparator as primitive checks (``1.2`` is ``>=1.2.0 <1.3.0``); None if it is not one."""
    match = _COMPARATOR.fullmatch(word)
    if match is None:
        return None
    op = match[1] or "="
    parts: list[int] = []
    for group in match.groups()[1:]:
        if group is None or not group.isdigit():
            break  # a wildcard ends the version: 1.x.5 is 1.x
        parts.append(int(group))
    n = len(parts)
    low = _version([*parts, 0, 0, 0])

    def above(i: int) -> _Version:  # the first version past component i: above(1) of 1.2.3 is 1.3.0
        return _version([*low[:i], low[i] + 1, 0, 0])

    if n == 0:  # *: everything, except that nothing is below or above it
        return [("<", (0, 0, 0))] if op in ("<", ">") else []
    if op == "~":
        return [(">=", low), ("<", above(0 if n == 1 else 1))]
    if op == "^":  # up to the next change of the first non-zero component given
        first = 0 if low[0] or n == 1 else 1 if low[1] or n == 2 else 2
        return [(">=", low), ("<", above(first))]
    if n == 3:
        return [(op, low)]
    # A partial version is a range: =1.2 is >=1.2.0 <1.3.0, >1.2 is >=1.3.0, <=1.2 is <1.3.0.
    if op == "=":
        return [(">=", low), ("<", above(n - 1))]
    if op == ">":
        return [(">=", above(n - 1))]
    if op == "<=":
        return [("<", above(n - 1))]
    return [(op, low)]


def _version(parts: Sequence[int]) -> _Version:
    return (parts[0], parts[1], parts[2])
