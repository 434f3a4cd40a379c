"""The events of the pipeline's two topics, with their validation.

- `queries` carries `QueryEvent`s: a user's query, from a replay (maybe with its label, known at
  query time) or answered by the service (with what was `served`).
- `queries.feedback` carries `FeedbackEvent`s: a label for a query, arriving after it.

Both are keyed by query id (`key`), and both topics have as many partitions, so Kafka's default
partitioner puts a label on its query's partition: a reader of one partition of each topic sees
a query and its labels together. The same query id seen twice is one query (a producer that
retries may write an event twice); readers keep the first.

Everything that enters the pipeline passes through `parse_event` or `parse_feedback`, so every
layer agrees on what a valid event is and on the reason an invalid one is rejected. A field the
reader does not know is ignored, so a producer may add one without dead-lettering its stream;
required fields, types and limits stay strict.
"""

import json
from datetime import UTC, datetime
from typing import Annotated, TypeVar

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
UtcTime = Annotated[datetime, AfterValidator(_require_utc)]


class _Event(BaseModel):
    """What both events share: immutable, unknown fields ignored, keyed by query id."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=False)

    query_id: ShortText

    @property
    def key(self) -> bytes:
        """The Kafka message key: the query id, for queries and labels alike, so that a label
        lands on its query's partition."""
        return self.query_id.encode()

    def to_json_bytes(self) -> bytes:
        """Compact JSON, `ts` as ISO-8601 UTC with a `Z`, absent optionals left out."""
        return self.model_dump_json(exclude_none=True).encode()


class Score(BaseModel):
    """An intent and its probability."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    intent: ShortText
    p: float


class Served(BaseModel):
    """What the service answered to a query, and the models behind the answer.

    Attributes
    ----------
    intent : str
        The intent answered (the top of `top_k`).
    confidence : float
        Its probability in the answer, in [0, 1].
    source : str
        Which models answered: `blend` (both layers), `batch` or `speed` (one layer alone).
    top_k : list of Score
        The best intents of the answer with their blended probabilities, best first
        (`SERVING_QUERY_LOG_TOP_K` of them at most).
    batch_weight, speed_weight : float
        The blend's weights for this query (1 and 0, or 0 and 1, when one layer answered).
    batch_version : str or None
        The registry version of the batch champion; None when none was loaded.
    speed_offsets : dict of int to int, or None
        The speed snapshot's position: partition -> the next offset it had not learnt; None
        when no snapshot was used.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    intent: ShortText
    confidence: float
    source: ShortText
    top_k: list[Score]
    batch_weight: float
    speed_weight: float
    batch_version: ShortText | None = None
    speed_offsets: dict[int, int] | None = None


class QueryEvent(_Event):
    """A user's query on topic `queries`.

    Attributes
    ----------
    query_id : str
        The query's id, unique per query (1 to 200 characters); also the message key.
    ts : datetime
        When the query was made (or answered), UTC.
    text : str
        The query, 1 to 1,000 characters after trimming.
    intent : str or None
        A label known at query time (a replayed dataset's, delay 0); None for an unlabelled
        query, whose label may come later on the feedback topic. An answered query has none:
        what the service answered is in `served`, and is not a label.
    user_id, locale : str or None
        Who asked, in which locale, when known.
    served : Served or None
        What the service answered; None for a query that was not answered (a replay).

    >>> e = QueryEvent(query_id="q1", ts="2026-01-01T10:00:00Z", text="  set an alarm ")
    >>> e.text, e.intent, e.ts.isoformat(), e.key
    ('set an alarm', None, '2026-01-01T10:00:00+00:00', b'q1')
    """

    ts: UtcTime
    text: QueryText
    intent: ShortText | None = None
    user_id: ShortText | None = None
    locale: ShortText | None = None
    served: Served | None = None


class FeedbackEvent(_Event):
    """A label for a query, on topic `queries.feedback`, keyed by its query's id.

    Attributes
    ----------
    query_id : str
        The labelled query's id. It may name a query the reader has not seen (yet, or ever):
        joining is the reader's business.
    intent : str
        The query's intent; an intent never seen before is a new intent, not an error.
    ts : datetime
        When the label was given, UTC.
    source : str or None
        Where the label came from (`feedback-api` for the service's `/feedback`, or an
        annotation tool's name).

    >>> FeedbackEvent(query_id="q1", intent="alarm", ts="2026-01-01T10:00:05Z").key
    b'q1'
    """

    intent: ShortText
    ts: UtcTime
    source: ShortText | None = None


class InvalidEvent(ValueError):
    """Raised by `parse_event` and `parse_feedback`; `reason` is what goes into the dead-letter
    record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "event"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


E = TypeVar("E", bound=_Event)


def _parse(model: type[E], raw: bytes) -> E:
    """Decode and validate one message value as `model`, or raise `InvalidEvent` saying why.

    Valid messages take pydantic's JSON parser in one pass (the hot path of both layers); a
    message that is not a JSON object at all is decoded again step by step, to say exactly why.
    """
    if not raw:
        raise InvalidEvent("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(not e["loc"] for e in exc.errors()):
            raise InvalidEvent(_why_not_an_object(raw)) from None
        raise InvalidEvent(_describe(exc)) from None


def parse_event(raw: bytes) -> QueryEvent:
    """One message of topic `queries`, validated, or `InvalidEvent` saying why not; a field
    it does not know (`v` below) is ignored.

    >>> parse_event(b'{"query_id": "q1", "ts": "2026-01-01T10:00:00Z", "text": ""}')
    Traceback (most recent call last):
    ...
    streams.schema.InvalidEvent: text: String should have at least 1 character
    >>> parse_event(b'{"query_id": "q1", "ts": "2026-01-01T10:00:00Z", "text": "hi", "v": 2}').text
    'hi'
    """
    return _parse(QueryEvent, raw)


def parse_feedback(raw: bytes) -> FeedbackEvent:
    """One message of topic `queries.feedback`, validated, or `InvalidEvent` saying why not.

    >>> parse_feedback(b'{"query_id": "q1", "ts": "2026-01-01T10:00:00Z"}')
    Traceback (most recent call last):
    ...
    streams.schema.InvalidEvent: intent: Field required
    """
    return _parse(FeedbackEvent, raw)


def _why_not_an_object(raw: bytes) -> str:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at char {exc.pos}"
    return f"not a JSON object but a {type(body).__name__}"
