"""Refusing requests the endpoints cannot take before BentoML parses them.

- Content-Type: BentoML picks a body parser by Content-Type, and its multipart parser answers a
  malformed body with a 500. The endpoints take JSON only, so anything else is a 415.
- Size: BentoML reads a whole body into memory and parses it before validation can refuse it
  (a 20 MB batch was parsed into two million strings to be told "too many texts"). A body over
  `SERVING_MAX_BODY_BYTES` is a 413: at once when its Content-Length says so, else as soon as
  that many bytes have come.
- Time: a client that declared a body and sent less of it held its request until BentoML's
  request timeout (`common.settings.REQUEST_TIMEOUT_S`) answered a 504, a server error for the
  client's fault. A body not all there `SERVING_BODY_TIMEOUT_S` after the request's headers
  were complete is a 408.
- Headers: a header block over `SERVING_MAX_HEADER_BYTES` is a 431. The HTTP parser itself
  refuses a larger one that arrives in pieces with a plain 400, so the limit is its 16 KiB.

Each refusal is a JSON body shaped like BentoML's validation errors (`error`, `detail[].loc`)
and closes the connection, since the rest of a refused body may still be on its way. What the
checks cost a good request is a scan of its headers and a copy of its body.
"""

import asyncio
import json
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.settings import ServingSettings
from serving.schemas import error_body

_READ_AS_JSON = (b"application/json", b"text/plain", b"application/octet-stream")
_WITH_BODY = ("POST", "PUT", "PATCH")


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


def _media_type(scope: Scope) -> bytes | None:
    value = _header(scope, b"content-type")
    return None if value is None else value.split(b";", 1)[0].strip().lower()


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:  # the HTTP parser refuses these first; a chunked body is counted instead
        return None


async def _refuse(send: Send, status: HTTPStatus, message: str, field: str) -> None:
    body = json.dumps(error_body(message, field)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class BoundedRequests:
    """Answer 431, 413 or 408 to a request whose headers or body are too large or too slow.

    The body of a request that passes is read here, whole, and handed on in one message; the
    body timeout runs from this middleware's call, once the HTTP server has all the headers.

    Parameters
    ----------
    app
        The application behind it.
    settings
        The limits: `max_header_bytes`, `max_body_bytes` and `body_timeout_s`.
    """

    def __init__(self, app: ASGIApp, settings: ServingSettings) -> None:
        self.app = app
        self.max_header_bytes = settings.max_header_bytes
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            limit = self.max_header_bytes
            message = f"request headers of {header_bytes} bytes, over the limit of {limit}"
            await _refuse(send, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message, "headers")
            return
        if scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send, f"a body of {declared} bytes, over the limit")
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive)
        except _BodyTooLarge:
            await self._too_large(send, "a body longer than the limit")
            return
        except TimeoutError:
            message = f"the request body was not all received within {self.body_timeout_s:g}s"
            await _refuse(send, HTTPStatus.REQUEST_TIMEOUT, message, "body")
            return
        if body is None:  # the client went away: nobody to answer
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send, what: str) -> None:
        message = f"{what} of {self.max_body_bytes} bytes"
        await _refuse(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, "body")


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then whatever the client sends next (its disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
                message = f"unsupported Content-Type {media_type[:100].decode('latin-1')!r}"
                await _refuse(
                    send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message + ": send JSON", "content-type"
                )
                return
        await self.app(scope, receive, send)
