"""Request parsing the JSON doors share (the HTTP routes, the WebSocket, Judge0, Piston).

``parse_json`` is ``json.loads`` refusing what no limit or program can use:
NaN and Infinity, and strings no UTF-8 text can carry (lone surrogates), each
a ``RejectedError`` naming where it was. The fields themselves are parsed by
``sandlot.requests`` (the JSON request) or by the door whose format it is.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sandlot.errors import RejectedError

# What can decode to a lone surrogate: a \\uD800-\\uDFFF escape, or its UTF-8-ish bytes (json.loads decodes bytes
# with surrogatepass). Searched first so that the common body costs one C-level scan, not a walk.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def parse_json(body: bytes, *, field: str = "body") -> Any:
    """JSON, refusing what json.loads would let through but no limit can use (NaN, Infinity)."""
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RejectedError(f"{field}: not valid JSON ({exc})", field=field) from exc
    if _MAYBE_SURROGATE.search(body):
        reject_lone_surrogates(data, whole=field)
    return data


def reject_lone_surrogates(data: Any, where: str = "", *, whole: str = "body") -> None:
    """Refuse a string no UTF-8 text can carry (a lone surrogate), naming where it was.

    JSON can spell one (``"\\ud800"``); passed on it would fail when encoded for
    the program, a file name or a reply, far from the request that caused it.
    ``where`` is the path inside the document (``files[1].name``); ``whole`` names the document.
    """
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError as exc:
            raise RejectedError(f"{where or whole}: a lone surrogate is not valid text", field=where or whole) from exc
    elif isinstance(data, dict):
        for key, value in data.items():
            reject_lone_surrogates(key, where, whole=whole)
            reject_lone_surrogates(value, f"{where}.{key}" if where else str(key), whole=whole)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            reject_lone_surrogates(value, f"{where or whole}[{index}]", whole=whole)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value
