"""Reading the query stream: validated events with their offsets, bad messages dead-lettered.

An `EventReader` is always one member of a consumer group (a job alone is a group of one), and
its owner keeps its own position per partition (the speed layer in its snapshots, the archiver
in its file names): the group decides which partitions the member reads, the owner says where
each one starts. Commits to the group only report progress (lag); they are made after the
work they cover is durable, and never decide where a partition is read from.

A reader may read the feedback topic beside the queries: the two are co-partitioned (as many
partitions, both keyed by query id), and the group gives partition p of both to the same member
(Kafka's range assignor), so the member that owns a partition sees its queries and their labels.
"""

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from common.settings import KafkaSettings
from streams.dead_letters import DeadLetters, Source
from streams.schema import FeedbackEvent, InvalidEvent, QueryEvent, parse_event, parse_feedback

log = logging.getLogger(__name__)

MAX_POLL_RECORDS = 5000
# Progress reports (commits, lag) wait this long for the broker at most, not the client's 30 s:
# they are informational, and the loop has events to get on with.
REPORT_TIMEOUT_MS = 2000
# A partition its owner cannot start yet (its state's store is down) is offered again after
# this long, doubling up to the maximum.
RETRY_S = 1.0
MAX_RETRY_S = 10.0


@dataclass(frozen=True)
class Start:
    """Where one partition is read: its offset on the queries topic, and on the feedback topic
    when the reader reads that too (None when it does not)."""

    queries: int
    feedback: int | None = None


Starts = Callable[[Mapping[int, Start]], Mapping[int, Start]]
"""An owner's `on_assigned`: partition -> its first offsets, for the partitions given to the
member, in; partition -> the offsets to read next, for those it can start now, out."""


@dataclass(frozen=True)
class Consumed:
    """A valid event and where it was read from: a query, or a label of the feedback topic
    (at an offset of that topic)."""

    event: QueryEvent | FeedbackEvent
    partition: int
    offset: int


def make_consumer(settings: KafkaSettings, group_id: str, **overrides) -> KafkaConsumer:
    """A consumer of the group `group_id` that never commits by itself."""
    config = {
        **settings.client_config(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": MAX_POLL_RECORDS,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "client_id": f"lambda-ml-{group_id}",
        # Partition p of every topic subscribed to goes to the same member: co-partitioning.
        "partition_assignment_strategy": (RangePartitionAssignor,),
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def _from_the_beginning(beginnings: Mapping[int, Start]) -> Mapping[int, Start]:
    return beginnings


class EventReader:
    """Polls the partitions the consumer group gives this member, from where its owner says,
    and validates each message.

    A partition the group gives is paused until the owner has said where to read it from:
    `on_assigned` is called from `poll`, on the caller's thread, so it may read the owner's
    state from a store; a partition it leaves out (that store is down) stays paused and is
    offered again with backoff, while the partitions already started go on. `on_revoked` is
    called with the started partitions the member loses, on the consumer's IO thread while
    `poll` waits: it must make their progress durable without Kafka, and quickly (the group
    waits for it). Closing the reader revokes nothing: an owner makes its progress durable
    before it stops.

    `positions` is the next offset to read in each started partition (`feedback_positions` on
    the feedback topic): everything before it has been handed out or dead-lettered. Call
    `flush_dead_letters` before making that position durable.

    Parameters
    ----------
    consumer
        A consumer of the group (`make_consumer`), not yet subscribed.
    dlq_producer, settings, stage
        Where invalid messages go, the topic and its dead-letter topic, and the stage named on
        each dead letter.
    on_assigned, on_revoked
        The owner's callbacks, above (by default every partition is read from its beginning,
        and a revocation needs nothing); an owner may set them later, before the first `poll`.
    feedback
        Read `settings.feedback_topic` too, when it exists (`reads_feedback` says whether it
        does); it must have the topic's partitions.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        dlq_producer: KafkaProducer,
        settings: KafkaSettings,
        stage: str,
        on_assigned: Starts = _from_the_beginning,
        on_revoked: Callable[[list[int]], None] = lambda partitions: None,
        feedback: bool = False,
    ) -> None:
        partitions = consumer.partitions_for_topic(settings.topic)
        if not partitions:
            raise RuntimeError(f"topic {settings.topic!r} does not exist on {settings.bootstrap}")
        self._consumer = consumer
        self._dead_letters = DeadLetters(dlq_producer, settings.dlq_topic, stage)
        self._topic = settings.topic
        self._feedback_topic = _feedback_topic(consumer, settings, partitions) if feedback else None
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.positions: dict[int, int] = {}
        self.feedback_positions: dict[int, int] = {}
        self._pending: set[int] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._retry_at = 0.0
        self._retry_s = RETRY_S
        self._closing = False
        topics = [settings.topic, *([self._feedback_topic] if self._feedback_topic else [])]
        consumer.subscribe(topics, listener=_Listener(self))

    @property
    def reads_feedback(self) -> bool:
        """Whether the reader reads the feedback topic beside the queries."""
        return self._feedback_topic is not None

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self._topic, partition)

    def _tps(self, partitions: Collection[int]) -> list[TopicPartition]:
        """The partitions' topic partitions: of the queries, and of the feedback topic."""
        tps = [self._tp(p) for p in partitions]
        if self._feedback_topic is not None:
            tps += [TopicPartition(self._feedback_topic, p) for p in partitions]
        return tps

    @property
    def progress(self) -> dict[TopicPartition, int]:
        """The next offset to read of every started topic partition, of both topics."""
        found = {self._tp(p): o for p, o in self.positions.items()}
        if self._feedback_topic is not None:
            topic = self._feedback_topic
            found |= {TopicPartition(topic, p): o for p, o in self.feedback_positions.items()}
        return found

    @property
    def settled(self) -> bool:
        """Whether the member reads partitions and every one it was given is started."""
        return bool(self.positions) and not self._pending

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        """The next valid events of the started partitions, in offset order within each; then
        the partitions waiting for their owner are offered to it, when their retry is due."""
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            # The broker is away or restarting: the client reconnects by itself, so the loop
            # waits a poll's time and carries on, its positions unchanged.
            log.warning("could not poll the broker: %s", exc)
            time.sleep(timeout_ms / 1000)
            return []
        valid: list[Consumed] = []
        for tp, records in batches.items():
            if tp.partition not in self.positions:  # revoked or not started: read again later
                continue
            label = tp.topic == self._feedback_topic
            parse = parse_feedback if label else parse_event
            positions = self.feedback_positions if label else self.positions
            for record in records:
                event: QueryEvent | FeedbackEvent
                try:
                    event = parse(record.value)
                except InvalidEvent as exc:
                    self._dead_letters.send(
                        record.value,
                        exc.reason,
                        key=record.key,
                        source=Source(tp.topic, tp.partition, record.offset),
                    )
                else:
                    valid.append(Consumed(event, tp.partition, record.offset))
                positions[tp.partition] = record.offset + 1
        if self._pending and time.monotonic() >= self._retry_at:
            self._start_pending()
        return valid

    def _start_pending(self) -> None:
        """Ask the owner where the waiting partitions start, and start those it names."""
        waiting = sorted(self._pending)
        try:
            beginnings = self._consumer.beginning_offsets(
                self._tps(waiting), timeout_ms=REPORT_TIMEOUT_MS
            )
        except KafkaError as exc:
            self._back_off(f"their first offsets cannot be read: {exc}")
            return
        feedback = self._feedback_topic
        starts = self.on_assigned(
            {
                p: Start(
                    beginnings[self._tp(p)],
                    beginnings[TopicPartition(feedback, p)] if feedback is not None else None,
                )
                for p in waiting
            }
        )
        started = [p for p in waiting if p in starts]
        for partition in started:
            start = starts[partition]
            self._consumer.seek(self._tp(partition), start.queries)
            self.positions[partition] = start.queries
            if feedback is not None:
                if start.feedback is None:
                    raise ValueError(f"partition {partition} was started without its feedback")
                self._consumer.seek(TopicPartition(feedback, partition), start.feedback)
                self.feedback_positions[partition] = start.feedback
            self._pending.discard(partition)
        if started:
            self._consumer.resume(*self._tps(started))
        if self._pending:
            self._back_off("their owner cannot start them yet")
        else:
            self._retry_s = RETRY_S

    def _back_off(self, why: str) -> None:
        log.warning(
            "partitions %s wait: %s; trying again in %.0f s",
            sorted(self._pending),
            why,
            self._retry_s,
        )
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(2 * self._retry_s, MAX_RETRY_S)

    def restart(self, partitions: Collection[int]) -> None:
        """Pause these started partitions and offer them to `on_assigned` again at the next
        poll, as if just given: their owner starts them anew (a re-base)."""
        numbers = [p for p in partitions if p in self.positions]
        self._consumer.pause(*self._tps(numbers))
        for partition in numbers:
            del self.positions[partition]
            self.feedback_positions.pop(partition, None)
            self._pending.add(partition)
        self._retry_at = 0.0

    def _assigned(self, partitions: Collection[TopicPartition]) -> None:
        new = sorted({tp.partition for tp in partitions} - set(self.positions))
        self._consumer.pause(*self._tps(new))  # until the owner says where each starts
        self._pending.update(new)
        self._retry_at, self._retry_s = 0.0, RETRY_S

    def _revoked(self, partitions: Collection[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        started = [p for p in numbers if p in self.positions]
        if started and not self._closing:
            self.on_revoked(started)
        for partition in numbers:
            self.positions.pop(partition, None)
            self.feedback_positions.pop(partition, None)
            self._pending.discard(partition)
        for tp in partitions:
            self._committed.pop(tp, None)

    def owned(self) -> list[int]:
        """The started partitions."""
        return sorted(self.positions)

    @property
    def dead_lettered(self) -> int:
        return self._dead_letters.sent

    def flush_dead_letters(self) -> None:
        """Block until every dead-letter record sent so far is acknowledged."""
        self._dead_letters.flush()

    def dead_letter(self, consumed: Consumed, reason: str) -> None:
        """Send a valid event its owner cannot use to the dead-letter topic, with why (a label
        the speed layer will not learn): flushed with the others, before progress past it is
        made durable."""
        label = isinstance(consumed.event, FeedbackEvent)
        topic = self._feedback_topic if label and self._feedback_topic else self._topic
        self._dead_letters.send(
            consumed.event.to_json_bytes(),
            reason,
            key=consumed.event.key,
            source=Source(topic, consumed.partition, consumed.offset),
        )

    def commit(
        self, positions: Mapping[int, int], feedback_positions: Mapping[int, int] | None = None
    ) -> None:
        """Report durable progress of the started partitions to the group (for lag), of the
        queries and of the feedback topic; never the source of truth, so a broker that is away
        only means a warning and a later commit."""
        mine = {self._tp(p): o for p, o in positions.items() if p in self.positions}
        if self._feedback_topic is not None:
            topic = self._feedback_topic
            mine |= {
                TopicPartition(topic, p): o
                for p, o in (feedback_positions or {}).items()
                if p in self.positions
            }
        if not mine or mine == {tp: self._committed.get(tp) for tp in mine}:
            return
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in mine.items()},
                timeout_ms=REPORT_TIMEOUT_MS,
            )
        except KafkaError as exc:
            log.warning("could not report progress to the consumer group: %s", exc)
        else:
            self._committed.update(mine)

    def partition_lag(self) -> dict[int, int] | None:
        """Started partition -> events on the topic not yet read by this reader; None while the
        broker is away."""
        if not self.positions:
            return {}
        tps = [self._tp(p) for p in sorted(self.positions)]
        try:
            ends = self._consumer.end_offsets(tps, timeout_ms=REPORT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("could not read the topic's end offsets: %s", exc)
            return None
        return {
            tp.partition: max(0, ends[tp] - self.positions[tp.partition])
            for tp in tps
            if tp.partition in self.positions
        }

    def close(self) -> None:
        """Leave the group and close the consumer, revoking nothing from the owner."""
        self._closing = True
        self._consumer.close()


def _feedback_topic(
    consumer: KafkaConsumer, settings: KafkaSettings, partitions: set[int]
) -> str | None:
    """The feedback topic to read beside the queries; None, with a warning, when it does not
    exist. A topic of other partitions is refused: labels would not meet their queries."""
    topic = settings.feedback_topic
    found = consumer.partitions_for_topic(topic)
    if not found:
        log.warning(
            "the feedback topic %r does not exist on %s: reading the queries alone",
            topic,
            settings.bootstrap,
        )
        return None
    if found != partitions:
        raise RuntimeError(
            f"the feedback topic {topic!r} has {len(found)} partitions and {settings.topic!r} "
            f"{len(partitions)}: they must be co-partitioned (as many partitions, both keyed "
            "by query id) for a label to reach its query's reader"
        )
    return topic


class _Listener(AsyncConsumerRebalanceListener):
    """The group's callbacks, run on the consumer's IO thread while `poll` waits. Nothing is
    committed on revocation: the partitions' next owner commits once its own progress is
    durable (commits only report lag)."""

    def __init__(self, reader: EventReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked) -> None:
        self.reader._revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        self.reader._assigned(assigned)
