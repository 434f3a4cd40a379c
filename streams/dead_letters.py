"""The dead-letter topic: where a message that cannot be used goes, with why, byte for byte.

A message too big to be an event (up to the broker's 1 MB limit) keeps only its first
`MAX_DEAD_LETTER_BYTES` there, marked by a header with its full size: enough to see what it was,
and the dead-letter topic never refuses a record (which would stall the stage that sends it).
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

REASON_HEADER = "dlq.reason"
STAGE_HEADER = "dlq.stage"
SOURCE_HEADER = "dlq.source"
ORIGINAL_BYTES_HEADER = "dlq.original_bytes"
MAX_DEAD_LETTER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Source:
    """Where the rejected message was read from, so it can be found and replayed later."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass
class _Letter:
    raw: bytes
    reason: str
    key: bytes | None
    source: Source | None
    future: Any = None  # None until the producer has taken it


class DeadLetters:
    """Sends rejected messages to the dead-letter topic for one stage, and keeps each until
    the broker has acknowledged it: a stage makes its position past a rejected message durable
    only after `flush`, so no dead letter is lost, even with the broker down for a while.
    """

    def __init__(self, producer: KafkaProducer, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage
        self._pending: list[_Letter] = []
        self.sent = 0

    def send(
        self,
        raw: bytes | None,
        reason: str,
        key: bytes | None = None,
        source: Source | None = None,
    ) -> None:
        letter = _Letter(raw or b"", reason, key, source)
        self._pending.append(letter)
        self._hand_over(letter)
        self.sent += 1

    def flush(self, retry_every_s: float = 1.0) -> None:
        """Block until every dead letter sent so far is acknowledged, sending again any the
        broker refused or timed out (it may be restarting)."""
        while True:
            self._producer.flush()
            failed = [x for x in self._pending if x.future is None or x.future.failed()]
            if not failed:
                self._pending.clear()
                return
            log.warning("%d dead letter(s) not acknowledged; sending again", len(failed))
            time.sleep(retry_every_s)
            for letter in failed:
                self._hand_over(letter)
            self._pending = failed

    def _hand_over(self, letter: _Letter) -> None:
        """Give the letter to the producer: its bytes (cut to `MAX_DEAD_LETTER_BYTES`), and the
        reason, stage, source and, when cut, the original size as headers."""
        headers = [(REASON_HEADER, letter.reason.encode()), (STAGE_HEADER, self._stage.encode())]
        if letter.source is not None:
            headers.append((SOURCE_HEADER, str(letter.source).encode()))
        value = letter.raw
        if len(value) > MAX_DEAD_LETTER_BYTES:
            headers.append((ORIGINAL_BYTES_HEADER, str(len(value)).encode()))
            value = value[:MAX_DEAD_LETTER_BYTES]
        try:
            letter.future = self._producer.send(
                self._topic, value=value, key=letter.key, headers=headers
            )
        except KafkaError as exc:  # no metadata or a full buffer: `flush` tries again
            log.warning("could not hand a dead letter to the producer: %s", exc)
            letter.future = None


def dead_letter_reason(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The dlq.* headers of a consumed dead-letter record, decoded."""
    return {name: value.decode() for name, value in headers if name.startswith("dlq.")}
