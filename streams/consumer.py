"""Reading the query stream: validated events with their offsets, bad messages dead-lettered.

Both layers own their position (the speed layer in its snapshots, the archiver in its file
names), so readers are assigned all partitions and seek explicitly; commits to the consumer
group only report progress (lag) and are made after the work they cover is durable.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from common.settings import KafkaSettings
from streams.dead_letters import DeadLetters, Source
from streams.schema import InvalidEvent, QueryEvent, parse_event

log = logging.getLogger(__name__)

MAX_POLL_RECORDS = 5000
# Progress reports (commits, lag) wait this long for the broker at most, not the client's 30 s:
# they are informational, and the loop has events to get on with.
REPORT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class Consumed:
    """A valid event and where it was read from."""

    event: QueryEvent
    partition: int
    offset: int


def make_consumer(settings: KafkaSettings, group_id: str, **overrides) -> KafkaConsumer:
    """A consumer that never commits by itself and reads from the start of unknown partitions."""
    config = {
        **settings.client_config(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": MAX_POLL_RECORDS,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "client_id": f"lambda-ml-{group_id}",
    }
    config.update(overrides)
    return KafkaConsumer(**config)


class EventReader:
    """Polls the topic of all its partitions, from given offsets, and validates each message.

    `positions` is the next offset to read in each partition: everything before it has been
    handed out or dead-lettered. Call `flush_dead_letters` before making that position durable.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        dlq_producer: KafkaProducer,
        settings: KafkaSettings,
        stage: str,
        start_offsets: Mapping[int, int] | None = None,
    ) -> None:
        self._consumer = consumer
        self._dead_letters = DeadLetters(dlq_producer, settings.dlq_topic, stage)
        self._settings = settings
        partitions = consumer.partitions_for_topic(settings.topic)
        if not partitions:
            raise RuntimeError(f"topic {settings.topic!r} does not exist on {settings.bootstrap}")
        self.partitions = [TopicPartition(settings.topic, p) for p in sorted(partitions)]
        consumer.assign(self.partitions)
        self.positions: dict[int, int] = {}
        self.seek(start_offsets or {})
        self._committed: dict[int, int] = {}

    def seek(self, offsets: Mapping[int, int]) -> None:
        """Read next from these offsets; partitions not named start at their beginning."""
        beginnings = self._consumer.beginning_offsets(self.partitions)
        for tp in self.partitions:
            start = offsets.get(tp.partition, beginnings[tp])
            self._consumer.seek(tp, start)
            self.positions[tp.partition] = start

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        """The next valid events, in offset order within each partition."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        valid: list[Consumed] = []
        for tp, records in batches.items():
            for record in records:
                try:
                    event = parse_event(record.value)
                except InvalidEvent as exc:
                    self._dead_letters.send(
                        record.value,
                        exc.reason,
                        key=record.key,
                        source=Source(tp.topic, tp.partition, record.offset),
                    )
                else:
                    valid.append(Consumed(event, tp.partition, record.offset))
                self.positions[tp.partition] = record.offset + 1
        return valid

    @property
    def dead_lettered(self) -> int:
        return self._dead_letters.sent

    def flush_dead_letters(self) -> None:
        """Block until every dead-letter record sent so far is acknowledged."""
        self._dead_letters.flush()

    def commit(self, positions: Mapping[int, int]) -> None:
        """Report durable progress to the consumer group (for lag); never the source of truth,
        so a broker that is away only means a warning and a later commit."""
        if dict(positions) == self._committed:
            return
        try:
            self._consumer.commit(
                {
                    TopicPartition(self._settings.topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in positions.items()
                },
                timeout_ms=REPORT_TIMEOUT_MS,
            )
        except KafkaError as exc:
            log.warning("could not report progress to the consumer group: %s", exc)
        else:
            self._committed = dict(positions)

    def lag(self) -> int | None:
        """Events on the topic not yet read by this reader; None while the broker is away."""
        try:
            ends = self._consumer.end_offsets(self.partitions, timeout_ms=REPORT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("could not read the topic's end offsets: %s", exc)
            return None
        return sum(max(0, ends[tp] - self.positions[tp.partition]) for tp in self.partitions)
