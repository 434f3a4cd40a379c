"""The dead-letter topic: where a message that cannot be used goes, with why, byte for byte.

A message too big to be an event (up to the broker's 1 MB limit) keeps only its first
`MAX_DEAD_LETTER_BYTES` there, marked by a header with its full size: enough to see what it was,
and the dead-letter topic never refuses a record (which would stall the stage that sends it).
"""

from dataclasses import dataclass

from kafka import KafkaProducer

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


def send_to_dead_letters(
    producer: KafkaProducer,
    topic: str,
    raw: bytes | None,
    reason: str,
    stage: str,
    key: bytes | None = None,
    source: Source | None = None,
):
    """Publish the original bytes (cut to `MAX_DEAD_LETTER_BYTES`); the reason, stage, source
    and, when cut, the original size travel as headers.

    Returns the send future: a caller that must not lose the record waits on it (or flushes)
    before it commits the offset of the message it rejected.
    """
    value = raw or b""
    headers = [(REASON_HEADER, reason.encode()), (STAGE_HEADER, stage.encode())]
    if source is not None:
        headers.append((SOURCE_HEADER, str(source).encode()))
    if len(value) > MAX_DEAD_LETTER_BYTES:
        headers.append((ORIGINAL_BYTES_HEADER, str(len(value)).encode()))
        value = value[:MAX_DEAD_LETTER_BYTES]
    return producer.send(topic, value=value, key=key, headers=headers)


def dead_letter_reason(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The dlq.* headers of a consumed dead-letter record, decoded."""
    return {name: value.decode() for name, value in headers if name.startswith("dlq.")}
