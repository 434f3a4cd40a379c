"""Refusing request bodies that are not JSON before BentoML parses them.

BentoML picks a body parser by Content-Type, and its multipart parser answers a malformed body
with a 500. The endpoints take JSON only, so anything else gets a 415 here, which costs a scan
of the request headers and nothing more.
"""

import json

from starlette.types import ASGIApp, Receive, Scope, Send

_READ_AS_JSON = (b"application/json", b"text/plain", b"application/octet-stream")


def _media_type(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return None


class JsonBodiesOnly:
    """Answer 415 to a POST whose Content-Type is set and is not a JSON-compatible type.

    Missing, `text/plain` and `application/octet-stream` bodies are read as JSON, as BentoML does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            media_type = _media_type(scope)
            if media_type is not None and media_type not in _READ_AS_JSON:
                await _unsupported(media_type, send)
                return
        await self.app(scope, receive, send)


async def _unsupported(media_type: bytes, send: Send) -> None:
    message = f"unsupported Content-Type {media_type[:100].decode('latin-1')!r}: send JSON"
    body = json.dumps({"error": message, "detail": [{"loc": ["content-type"]}]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 415,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
