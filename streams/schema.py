"""The query event: the one message shape on topic `queries`, with its validation.

Everything that enters the pipeline passes through `parse_event`, so every layer agrees on what
a valid event is and on the reason an invalid one is rejected.
"""

import json
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
)

from common.limits import MAX_MESSAGE_BYTES, QueryText

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _require_utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError("ts must carry a time zone (ISO-8601 with Z or +00:00)")
    return ts.astimezone(UTC)


ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class QueryEvent(BaseModel):
    """A user's query, optionally with its resolved intent (null = unlabelled).

    >>> e = QueryEvent(query_id="q1", ts="2026-01-01T10:00:00Z", text="  set an alarm ")
    >>> e.text, e.intent, e.ts.isoformat()
    ('set an alarm', None, '2026-01-01T10:00:00+00:00')
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    query_id: ShortText
    ts: Annotated[datetime, AfterValidator(_require_utc)]
    text: QueryText
    intent: ShortText | None = None
    user_id: ShortText | None = None
    locale: ShortText | None = None

    @property
    def key(self) -> bytes:
        """The Kafka message key: the user when known (keeps a user's queries in order)."""
        return (self.user_id or self.query_id).encode()

    def to_json_bytes(self) -> bytes:
        """Compact JSON, `ts` as ISO-8601 UTC with a `Z`, absent optionals left out."""
        body = self.model_dump(mode="json", exclude_none=True)
        body["ts"] = self.ts.strftime(TS_FORMAT)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class InvalidEvent(ValueError):
    """Raised by `parse_event`; `reason` is what goes into the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "event"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_event(raw: bytes) -> QueryEvent:
    """Decode and validate one Kafka message value, or raise `InvalidEvent` saying why.

    Valid messages take pydantic's JSON parser in one pass (the hot path of both layers); a
    message that is not a JSON object at all is decoded again step by step, to say exactly why.

    >>> parse_event(b'{"query_id": "q1", "ts": "2026-01-01T10:00:00Z", "text": ""}')
    Traceback (most recent call last):
    ...
    streams.schema.InvalidEvent: text: String should have at least 1 character
    """
    if not raw:
        raise InvalidEvent("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        return QueryEvent.model_validate_json(raw)
    except ValidationError as exc:
        if any(not e["loc"] for e in exc.errors()):
            raise InvalidEvent(_why_not_an_object(raw)) from None
        raise InvalidEvent(_describe(exc)) from None


def _why_not_an_object(raw: bytes) -> str:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at char {exc.pos}"
    return f"not a JSON object but a {type(body).__name__}"
