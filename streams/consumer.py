"""Reading the query stream: validated events with their offsets, bad messages dead-lettered.

Both layers own their position (the speed layer in its snapshots, the archiver in its file
names), so an `EventReader` is assigned all partitions and seeks explicitly; commits to the
consumer group only report progress (lag) and are made after the work they cover is durable.

A `GroupReader` instead subscribes as one member of a consumer group, so several speed workers
share the partitions; its owner hears of each partition it loses or gains, makes the lost ones'
progress durable and says where to read the gained ones from.
"""

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
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
        partitions = self._attach(consumer, dlq_producer, settings, stage)
        self.partitions = [TopicPartition(settings.topic, p) for p in sorted(partitions)]
        consumer.assign(self.partitions)
        self.positions: dict[int, int] = {}
        self.seek(start_offsets or {})
        self._committed: dict[int, int] = {}

    def _attach(
        self,
        consumer: KafkaConsumer,
        dlq_producer: KafkaProducer,
        settings: KafkaSettings,
        stage: str,
    ) -> set[int]:
        """Keep the consumer, the dead letters and the settings; the topic's partitions, or a
        clear error when the topic does not exist."""
        self._consumer = consumer
        self._dead_letters = DeadLetters(dlq_producer, settings.dlq_topic, stage)
        self._settings = settings
        partitions = consumer.partitions_for_topic(settings.topic)
        if not partitions:
            raise RuntimeError(f"topic {settings.topic!r} does not exist on {settings.bootstrap}")
        return partitions

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

    def partition_lag(self) -> dict[int, int] | None:
        """Partition -> events on the topic not yet read by this reader; None while the broker
        is away."""
        try:
            ends = self._consumer.end_offsets(self.partitions, timeout_ms=REPORT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("could not read the topic's end offsets: %s", exc)
            return None
        return {
            tp.partition: max(0, ends[tp] - self.positions[tp.partition]) for tp in self.partitions
        }


class GroupReader(EventReader):
    """An `EventReader` over the partitions the consumer group gives this member.

    The group's callbacks run on the consumer's IO thread while `poll` waits, so they may not
    call the consumer's blocking API: `on_revoked(partitions)` is to make those partitions'
    progress durable without Kafka (the reader commits their positions itself, through the
    coordinator's async commit), and `on_assigned(partitions)` returns partition -> the next
    offset to read, or None for the partition's beginning (resolved after the poll).

    Parameters
    ----------
    consumer, dlq_producer, settings, stage
        As for `EventReader`; the consumer must not be assigned partitions.
    on_assigned, on_revoked
        The owner's callbacks, above.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        dlq_producer: KafkaProducer,
        settings: KafkaSettings,
        stage: str,
        on_assigned: Callable[[list[int]], Mapping[int, int | None]],
        on_revoked: Callable[[list[int]], None],
    ) -> None:
        self._attach(consumer, dlq_producer, settings, stage)
        self.partitions = []
        self.positions = {}
        self._committed = {}
        self._unresolved: set[int] = set()
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.rebalances = 0
        consumer.subscribe([settings.topic], listener=_Listener(self))

    def seek(self, offsets: Mapping[int, int]) -> None:
        """Read next from these offsets; owned partitions not named start at their beginning."""
        for tp in self.partitions:
            self._seek_one(tp, offsets.get(tp.partition))

    def seek_partition(self, partition: int, offset: int | None) -> None:
        """Read `partition` next from `offset`, or from its beginning when None."""
        self._seek_one(TopicPartition(self._settings.topic, partition), offset)

    def _seek_one(self, tp: TopicPartition, offset: int | None) -> None:
        if offset is None:
            self._consumer.seek_to_beginning(tp)
            self._unresolved.add(tp.partition)
            self.positions.pop(tp.partition, None)
        else:
            self._consumer.seek(tp, offset)
            self._unresolved.discard(tp.partition)
            self.positions[tp.partition] = offset

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        valid = super().poll(timeout_ms, max_records)
        handed = {c.partition for c in valid}
        for partition in sorted(self._unresolved):
            if partition not in self.positions or partition not in handed:
                tp = TopicPartition(self._settings.topic, partition)
                self.positions[partition] = self._consumer.position(tp)
        self._unresolved.clear()
        return valid

    def _revoked(self, partitions: Collection[TopicPartition]) -> list[int]:
        numbers = sorted(tp.partition for tp in partitions if tp.topic == self._settings.topic)
        if numbers:
            self.on_revoked(numbers)
        for p in numbers:
            self.positions.pop(p, None)
            self._committed.pop(p, None)
            self._unresolved.discard(p)
        self.partitions = [tp for tp in self.partitions if tp.partition not in numbers]
        return numbers

    def _assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.rebalances += 1
        tps = sorted(
            (tp for tp in partitions if tp.topic == self._settings.topic),
            key=lambda tp: tp.partition,
        )
        self.partitions = sorted(
            {*self.partitions, *tps}, key=lambda tp: tp.partition
        )  # cooperative rebalances add to what is kept
        starts = self.on_assigned([tp.partition for tp in tps])
        for tp in tps:
            self._seek_one(tp, starts.get(tp.partition))

    def owned(self) -> list[int]:
        """The partitions this member reads now."""
        return [tp.partition for tp in self.partitions]

    def commit(self, positions: Mapping[int, int]) -> None:
        """As `EventReader.commit`, for the partitions this member still owns."""
        mine = set(self.owned())
        super().commit({p: o for p, o in positions.items() if p in mine})

    def partition_lag(self) -> dict[int, int] | None:
        if self._unresolved or not self.partitions:
            return None if self._unresolved else {}
        return super().partition_lag()


class _Listener(AsyncConsumerRebalanceListener):
    """The group's callbacks, run on the consumer's IO thread (hence async: a commit there
    must be awaited, not blocked on)."""

    def __init__(self, reader: GroupReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked) -> None:
        reader = self.reader
        before = dict(reader.positions)
        numbers = reader._revoked(revoked)
        offsets = {
            TopicPartition(reader._settings.topic, p): OffsetAndMetadata(before[p], "", -1)
            for p in numbers
            if p in before
        }
        if not offsets:
            return
        coordinator = reader._consumer._coordinator
        try:
            await coordinator._commit_offsets_sync_async(offsets, timeout_ms=REPORT_TIMEOUT_MS)
        except Exception as exc:  # progress reports only; the snapshots are the truth
            log.warning("could not report revoked partitions' progress: %s", exc)

    async def on_partitions_assigned(self, assigned) -> None:
        self.reader._assigned(assigned)
