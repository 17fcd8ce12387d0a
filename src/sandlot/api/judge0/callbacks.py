"""Judge0 callbacks: PUT the finished submission to the client's ``callback_url``.

Judge0 sends the submission with its default fields, base64-encoded, as JSON,
trying up to ``callbacks_max_tries`` times with a ``callbacks_timeout``; we do
the same, with a growing pause between tries, from a task of the API process
(the worker is never held up by a slow receiver).

The server, not the sandbox, makes this request, so a caller could aim it at
something only the server can reach (its loopback, a metadata service, a
private network). Unless ``[judge0] callback_allow_private`` is set, the host
name is resolved once, every address it resolves to must be public, and the
request goes to those checked addresses (``Host`` and TLS SNI keep the name),
so a DNS answer that changes between the check and the connection changes
nothing. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger("sandlot.judge0")

CALLBACK_MAX_TRIES = 3  # Judge0's default
CALLBACK_TIMEOUT_S = 5.0  # Judge0's default, per try
CALLBACK_BACKOFF_S = 0.5  # before the second try; doubles after


@dataclass(frozen=True)
class CallbackPolicy:
    allow_private: bool = False
    max_tries: int = CALLBACK_MAX_TRIES
    timeout_s: float = CALLBACK_TIMEOUT_S
    backoff_s: float = CALLBACK_BACKOFF_S


class CallbackRefused(Exception):
    """The URL resolves to an address callbacks may not reach."""


async def deliver(url: str, body: bytes, policy: CallbackPolicy) -> bool:
    """PUT body to url; True once a try got an answer below 500 (Judge0 itself retries only on failures to connect)."""
    try:
        targets = await _pinned(url, policy.allow_private)
    except (CallbackRefused, OSError, ValueError) as exc:
        log.warning("judge0 callback to %s not sent: %s", url, exc)
        return False
    pause = policy.backoff_s
    async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
        for attempt in range(1, policy.max_tries + 1):
            try:
                response = await _put(client, targets, body)
            except httpx.HTTPError as exc:
                log.info("judge0 callback to %s, try %d: %s", url, attempt, exc)
            else:
                if response.status_code < 500:
                    return True
                log.info("judge0 callback to %s, try %d: HTTP %d", url, attempt, response.status_code)
            if attempt < policy.max_tries:
                await asyncio.sleep(pause)
                pause *= 2
    log.warning("judge0 callback to %s failed after %d tries", url, policy.max_tries)
    return False


@dataclass(frozen=True)
class _Target:
    url: str  # with the checked address in place of the host name
    headers: dict[str, str]
    extensions: dict[str, str]


async def _put(client: httpx.AsyncClient, targets: list[_Target], body: bytes) -> httpx.Response:
    """One try: the addresses in resolver order until one accepts the connection (localhost: ::1, then 127.0.0.1)."""
    for target in targets[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            return await client.put(target.url, content=body, headers=target.headers, extensions=target.extensions)
    last = targets[-1]
    return await client.put(last.url, content=body, headers=last.headers, extensions=last.extensions)


async def _pinned(url: str, allow_private: bool) -> list[_Target]:
    """The URL rewritten to each checked address, with the Host header and SNI name kept."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise CallbackRefused("no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))
    if not addresses:
        raise CallbackRefused(f"{host} does not resolve")
    refused = [a for a in addresses if not a.is_global]
    if refused and not allow_private:
        raise CallbackRefused(f"{host} resolves to a non-public address ({refused[0]})")
    headers = {"Host": parts.netloc.rpartition("@")[2], "Content-Type": "application/json"}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    targets = []
    for address in addresses:
        literal = f"[{address}]" if address.version == 6 else str(address)
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        targets.append(_Target(target, headers, extensions))
    return targets
