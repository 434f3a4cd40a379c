"""The dead-letter topic: where a message that cannot be used goes, with why, byte for byte.

A message too big to be an event (up to the broker's 1 MB limit) keeps only its first
`MAX_DEAD_LETTER_BYTES` there, marked by a header with its full size (and its key only its first
`MAX_DEAD_LETTER_KEY_BYTES`): enough to see what it was, and small enough that the broker always
takes the record.
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
MAX_DEAD_LETTER_KEY_BYTES = 1024


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
    """A dead letter as it is sent (already cut), and what became of its last send."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    source: Source | None
    future: Any = None  # the producer's future once it has taken the letter
    refused: KafkaError | None = None  # why the producer would not take it

    @property
    def error(self) -> BaseException | None:
        """Why the last send failed, once the producer has been flushed; None if it did not."""
        if self.refused is not None:
            return self.refused
        return self.future.exception if self.future.failed() else None


class DeadLetters:
    """Sends rejected messages to the dead-letter topic for one stage, and keeps each until
    the broker has acknowledged it: a stage makes its position past a rejected message durable
    only after `flush`, so no dead letter is lost to a broker that is away for a while.

    Delivery is at least once: a letter whose acknowledgement was lost with the broker is sent
    again. A letter the broker can never take (an error Kafka marks as not retriable) is
    logged with its source and counted in `dropped` rather than stalling the stage for ever.
    """

    def __init__(self, producer: KafkaProducer, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage
        self._pending: list[_Letter] = []
        self.sent = 0
        self.dropped = 0

    def send(
        self,
        raw: bytes | None,
        reason: str,
        key: bytes | None = None,
        source: Source | None = None,
    ) -> None:
        letter = self._letter(raw or b"", reason, key, source)
        self._pending.append(letter)
        self._hand_over(letter)
        self.sent += 1

    def flush(self, retry_every_s: float = 1.0) -> None:
        """Block until every dead letter sent so far is acknowledged, sending again those
        that failed in a way a retry can fix (the broker away or restarting)."""
        while self._pending:
            self._producer.flush()
            retry: list[_Letter] = []
            for letter in self._pending:
                error = letter.refused or (
                    letter.future.exception if letter.future.failed() else None
                )
                if error is None:
                    continue
                if getattr(error, "retriable", False):
                    retry.append(letter)
                else:
                    self.dropped += 1
                    log.error("dead letter of %s dropped: %r", letter.source or "input", error)
            self._pending = retry
            if retry:
                log.warning("%d dead letter(s) not acknowledged; sending again", len(retry))
                time.sleep(retry_every_s)
                for letter in retry:
                    self._hand_over(letter)

    def _letter(self, raw: bytes, reason: str, key: bytes | None, source: Source | None) -> _Letter:
        """The bytes cut to `MAX_DEAD_LETTER_BYTES` (the key to `MAX_DEAD_LETTER_KEY_BYTES`), and
        the reason, stage, source and, when cut, the original size as headers."""
        headers = [(REASON_HEADER, reason.encode()), (STAGE_HEADER, self._stage.encode())]
        if source is not None:
            headers.append((SOURCE_HEADER, str(source).encode()))
        if len(raw) > MAX_DEAD_LETTER_BYTES:
            headers.append((ORIGINAL_BYTES_HEADER, str(len(raw)).encode()))
        cut_key = key[:MAX_DEAD_LETTER_KEY_BYTES] if key is not None else None
        return _Letter(raw[:MAX_DEAD_LETTER_BYTES], cut_key, headers, source)

    def _hand_over(self, letter: _Letter) -> None:
        letter.refused = None
        try:
            letter.future = self._producer.send(
                self._topic, value=letter.value, key=letter.key, headers=letter.headers
            )
        except KafkaError as exc:  # no metadata, a full buffer, or a record it cannot take
            log.warning("could not hand a dead letter to the producer: %s", exc)
            letter.refused = exc
