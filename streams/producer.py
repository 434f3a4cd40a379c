"""Publishing events onto Kafka: durable (`acks=all`, idempotent) and rate-controlled."""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from common.settings import KafkaSettings
from streams.dead_letters import DeadLetters
from streams.schema import InvalidEvent, parse_event, parse_feedback

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


class FeedbackMessage(bytes):
    """A label's raw message in a stream of query events: `publish` sends it to the feedback
    topic (a replay with late labels writes both topics in one stream, in order)."""


def publish(
    producer: KafkaProducer,
    settings: KafkaSettings,
    messages: Iterable[bytes],
    rate: float = 0.0,
    on_sent: Callable[[bytes], None] = lambda raw: None,
    feedback: bool = False,
) -> ProduceStats:
    """Validate and send each query event to `settings.topic`, and each label (every message
    with `feedback`, else each `FeedbackMessage`) to `settings.feedback_topic`, keyed by query
    id; invalid ones go to the dead-letter topic with the reason. `on_sent` hears each message
    once it is handed over.

    Returns once every send is acknowledged (or has failed, counted in `failed`).
    """
    routes = {False: (parse_event, settings.topic), True: (parse_feedback, settings.feedback_topic)}
    stats = ProduceStats()
    dead_letters = DeadLetters(producer, settings.dlq_topic, "produce")
    pacer = _Pacer(rate)
    started = time.perf_counter()

    def failed(_exc: BaseException) -> None:
        stats.failed += 1

    for index, message in enumerate(messages):
        pacer.wait(index)
        label = isinstance(message, FeedbackMessage)
        parse, topic = routes[feedback or label]
        raw = bytes(message) if label else message  # Kafka's client takes plain bytes only
        try:
            event = parse(raw)
        except InvalidEvent as exc:
            dead_letters.send(raw, exc.reason)
        else:
            _send_when_taken(producer, topic, raw, event.key).add_errback(failed)
            stats.sent += 1
        on_sent(message)
    producer.flush()
    dead_letters.flush()
    stats.dead_lettered = dead_letters.sent
    stats.seconds = time.perf_counter() - started
    stats.sent -= stats.failed
    return stats
