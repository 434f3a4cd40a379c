"""The dead-letter topic: where a message that cannot be used goes, with why, byte for byte."""

from dataclasses import dataclass

from kafka import KafkaProducer

REASON_HEADER = "dlq.reason"
STAGE_HEADER = "dlq.stage"
SOURCE_HEADER = "dlq.source"


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
    """Publish the original bytes unchanged; the reason, stage and source travel as headers.

    Returns the send future: a caller that must not lose the record waits on it (or flushes)
    before it commits the offset of the message it rejected.
    """
    headers = [(REASON_HEADER, reason.encode()), (STAGE_HEADER, stage.encode())]
    if source is not None:
        headers.append((SOURCE_HEADER, str(source).encode()))
    return producer.send(topic, value=raw or b"", key=key, headers=headers)


def dead_letter_reason(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The dlq.* headers of a consumed dead-letter record, decoded."""
    return {name: value.decode() for name, value in headers if name.startswith("dlq.")}
