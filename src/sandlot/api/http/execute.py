"""``POST /api/v1/execute`` as a raw ASGI route in front of FastAPI: an API node's ingest path.

Theory of operation
-------------------
Queueing an execution is the request an API node answers most, and the cheapest
one: parse, validate, one Redis round trip, 202. Through FastAPI, its
middleware stack, router, dependency solving, ``Request`` and ``JSONResponse``
cost more than twice the work itself and stalled the loop now and then
(docs/benchmarks.md, ingest). So the application (``http.SandlotApp``) hands
``POST /api/v1/execute`` to ``ExecuteRoute`` before FastAPI sees it, and
everything else to FastAPI.

It is the same door as the rest of the HTTP API, sharing what decides the
answer with it: the caller from ``Authorization`` (``Authenticator``, quotas
included), the body from ``parse_json``/``decode_code`` and
``parse_execution`` (a raw body's language as ``POST /run`` detects it),
validation, the key's execution slot and the queueing from
``Core.submit`` (``api.common.core``), every error from ``as_api_error``. Being outside
the middlewares, it does their two jobs itself, the same way: the body cap
(413 before reading a declared oversize body, or as soon as a chunked one goes
over) and the count in ``sandlot_requests_total`` (door ``http``; 499 when the
client left before an answer, 500 for anything unexpected, which is logged and
answered with no detail). The FastAPI route of the same path in ``tasks``
only declares it, for the OpenAPI document and 405 on other methods.
"""

from __future__ import annotations

import logging
import re
from json.encoder import encode_basestring
from urllib.parse import parse_qsl

from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST
from sandlot.api.common.auth import bearer_token
from sandlot.api.common.core import Core
from sandlot.api.common.parsing import parse_json
from sandlot.api.http.door import decode_code, idempotency_key
from sandlot.api.http.errors import MAPPED_ERRORS, as_api_error
from sandlot.api.http.middleware import content_length, send_json, send_json_bytes, too_large
from sandlot.api.http.text import detect_language
from sandlot.errors import RejectedError
from sandlot.requests import parse_execution

log = logging.getLogger(__name__)

PATH = "/api/v1/execute"
DOOR = "http"  # its label in sandlot_requests_total, as for the other JSON routes
_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")  # JSON's own whitespace, then an object: scans no further


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class ExecuteRoute:
    """Answers ``POST /api/v1/execute``: see the module's docstring."""

    def __init__(self, core: Core, *, max_body_bytes: int) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        self._counted: dict[int, Counter] = {}  # status code -> its child counter, looked up once

    @staticmethod
    def serves(scope: Scope) -> bool:
        return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500  # unless an answer goes out, or the client is found gone
        try:
            status = await self._answer(scope, receive, send)
        finally:
            self._count(status)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Send the answer; its status code (499 when there was nobody left to answer)."""
        try:
            body = await self._queue(scope, receive)
        except _ClientGone:
            return CLIENT_CLOSED_REQUEST
        except Exception as exc:
            if not isinstance(exc, MAPPED_ERRORS):  # as_api_error makes it a 500 with no detail
                log.exception("POST %s failed", PATH)
            error = as_api_error(exc)
            await send_json(send, error.status, error.body(), error.headers())
            return error.status
        await send_json_bytes(send, 202, _str_object(body))
        return 202

    async def _queue(self, scope: Scope, receive: Receive) -> dict[str, str]:
        declared = content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise too_large(self.max_body_bytes)  # before reading a single byte of it
        authorization = content_type = idempotency = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"idempotency-key" and idempotency is None:
                idempotency = value.decode("latin-1")
        core = self.core
        principal = core.auth.authenticate(bearer_token(authorization))
        language = _query_value(scope["query_string"], "language")
        body = await self._read_body(receive)
        # The level when the body names none, settled now rather than by replacing the spec in validate.
        level = core.service.isolation_for("", principal.min_isolation)
        data = parse_json(body) if _is_json(content_type) else self._sniff(body, language)
        spec = parse_execution(data, tenant=principal.tenant, default_language=language, default_isolation=level)
        key = idempotency_key(idempotency)
        spec = await core.submit(principal, spec, idempotency_key=key)
        status = "queued"  # just accepted; only a replayed Idempotency-Key can name a task further along
        if key is not None and (state := await core.service.broker.get(principal.tenant, spec.id)) is not None:
            status = state.status
        return {"task_id": spec.id, "status": status}

    def _sniff(self, body: bytes, language: str | None) -> object:
        """A body sent without a JSON content type: a request if it reads as one, else the program's source.

        ``curl -d '{"language": ...}'`` sends ``application/x-www-form-urlencoded``: a JSON object
        naming ``language`` or ``code`` is a request whatever its label (no program is a JSON object
        with such a key and nothing else). Raw source runs in ``?language=``, else the language
        ``/run`` detects (a Go ``package`` clause, a shebang), else Python. Only a body that opens
        with ``{`` is parsed, and detection reads up to the first line that decides: the raw-code
        path stays a few microseconds whatever the body's size.
        """
        if _OBJECT_START.match(body):
            try:
                data = parse_json(body)
            except RejectedError:
                data = None  # not JSON after all: source code that starts with a brace
            if isinstance(data, dict) and ("language" in data or "code" in data):
                return data
        code = decode_code(body)
        return {"language": language or detect_language(code, self.core.service.languages), "code": code}

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body; 413 as soon as it goes over the cap, whatever it declared."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _count(self, status: int) -> None:
        counter = self._counted.get(status)
        if counter is None:
            counter = self._counted[status] = self.core.service.metrics.requests.labels(door=DOOR, code=str(status))
        counter.inc()


def _query_value(query_string: bytes, name: str) -> str | None:
    """The last value of a query parameter, as Starlette reads it; None when absent."""
    if not query_string:
        return None
    found = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == name:
            found = value
    return found


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _str_object(content: dict[str, str]) -> bytes:
    """A JSON object of strings, as ``send_json`` writes it, without building an encoder per call as it does."""
    pairs = ",".join(f"{encode_basestring(key)}:{encode_basestring(value)}" for key, value in content.items())
    return f"{{{pairs}}}".encode()
