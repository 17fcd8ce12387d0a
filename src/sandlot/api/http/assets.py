"""Static files the HTTP door serves from memory (the playground, the /docs page): one shape, one way to send.

Each page module reads its files once, at ``install``, into an allowlist of
``Asset``s keyed by name, so a request can only ever get one of those files;
``serve`` answers one with its ETag, or 304 when the browser has it already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

# What every asset and page is sent with; each page adds its own Content Security Policy.
ASSET_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: the ETag makes that a cheap 304
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # share links carry code in the fragment; keep URLs to ourselves
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        return cls(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def serve(request: Request, asset: Asset, headers: Mapping[str, str] = ASSET_HEADERS) -> Response:
    """The asset, or 304 when the request's If-None-Match names its ETag."""
    sent = {**headers, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=sent)
    return Response(asset.body, media_type=asset.content_type, headers=sent)
