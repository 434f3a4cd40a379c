"""Publishing query events onto Kafka: durable (`acks=all`, idempotent) and rate-controlled."""

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from common.settings import KafkaSettings
from streams.dead_letters import DeadLetters
from streams.scenarios import StreamItem
from streams.schema import TS_FORMAT, InvalidEvent, parse_event

log = logging.getLogger(__name__)


def make_producer(settings: KafkaSettings, **overrides) -> KafkaProducer:
    """A producer whose acknowledged writes are on the broker's disk log, in order, once."""
    config = {
        **settings.client_config(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 50,
        "batch_size": 1024 * 1024,
        "client_id": "lambda-ml-producer",
    }
    config.update(overrides)
    return KafkaProducer(**config)


@dataclass(frozen=True)
class Timeline:
    """Event timestamps: wall-clock time by default, or spread evenly over the past `span`
    (so a fast replay still yields a history over several days for the batch layer)."""

    span: timedelta = timedelta(0)
    start: datetime | None = None

    def stamper(self, length: int) -> Callable[[int], datetime]:
        if not self.span or length == 0:
            return lambda _index: datetime.now(UTC)
        start = self.start or datetime.now(UTC) - self.span
        step = self.span / length
        return lambda index: start + step * index


def event_messages(
    items: Iterable[StreamItem], length: int, run_id: str, seed: int, timeline: Timeline
) -> Iterator[bytes]:
    """Serialised events for replayed examples, with stable ids (`run_id` + position) and users.

    Built as plain JSON rather than through `QueryEvent`: `publish` validates every message
    anyway, and building models twice would halve the replay rate.
    """
    stamp = timeline.stamper(length)
    users = random.Random(seed)
    for index, item in enumerate(items):
        body = {
            "query_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{index}")),
            "ts": stamp(index).strftime(TS_FORMAT),
            "text": item.example.text,
            "intent": item.example.intent if item.labelled else None,
            "user_id": f"user-{users.randrange(5000):04d}",
            "locale": "en-US",
        }
        yield json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class ProduceStats:
    sent: int = 0
    failed: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class _Pacer:
    """Sleeps just enough to hold a target rate; a rate of 0 means as fast as possible."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._start = time.perf_counter()

    def wait(self, index: int) -> None:
        if self._interval:
            ahead = self._start + index * self._interval - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)


def _send_when_taken(producer: KafkaProducer, topic: str, value: bytes, key: bytes):
    """`send`, waiting out a broker that is away: the producer gives up taking a record after
    `max_block_ms` (no metadata, or its buffer full), and the replay then simply waits."""
    while True:
        try:
            return producer.send(topic, value=value, key=key)
        except KafkaTimeoutError as exc:
            log.warning("the broker is not taking records (%s); waiting for it", exc)


def publish(
    producer: KafkaProducer,
    settings: KafkaSettings,
    messages: Iterable[bytes],
    rate: float = 0.0,
    on_sent: Callable[[], None] = lambda: None,
) -> ProduceStats:
    """Validate and send each message; invalid ones go to the dead-letter topic with the reason.

    Returns once every send is acknowledged (or has failed, counted in `failed`).
    """
    stats = ProduceStats()
    dead_letters = DeadLetters(producer, settings.dlq_topic, "produce")
    pacer = _Pacer(rate)
    started = time.perf_counter()

    def failed(_exc: BaseException) -> None:
        stats.failed += 1

    for index, raw in enumerate(messages):
        pacer.wait(index)
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            dead_letters.send(raw, exc.reason)
        else:
            _send_when_taken(producer, settings.topic, raw, event.key).add_errback(failed)
            stats.sent += 1
        on_sent()
    producer.flush()
    dead_letters.flush()
    stats.dead_lettered = dead_letters.sent
    stats.seconds = time.perf_counter() - started
    stats.sent -= stats.failed
    return stats
