"""A consumer group in memory, for unit tests of what runs over `streams.consumer.EventReader`.

`FakeTopic` holds the records; `FakeGroup` deals its partitions to the members that joined, as
Kafka's eager protocol does: at each join or departure every member's partitions are revoked
(its listener called), then every member is given its share (round robin). `FakeConsumer`
answers the part of `KafkaConsumer`'s API the reader uses. Nothing runs on another thread, so a
test interleaves its workers turn by turn, deterministically.
"""

from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka.structs import TopicPartition

from common.settings import KafkaSettings
from streams.schema import QueryEvent, parse_event

KAFKA = KafkaSettings(bootstrap_servers="fake:9092", topic="queries", dlq_topic="queries.dlq")
TEXTS = [
    "set an alarm for seven",
    "play a song by queen",
    "what is the weather in paris",
    "wake me up at six",
    "put on some jazz",
    "will it rain tomorrow",
]
INTENTS = ["alarm", "music", "weather", "alarm", "music", "weather"]


@dataclass(frozen=True)
class Record:
    value: bytes
    key: bytes | None
    offset: int


def event_bytes(i: int, intent: str | None, text: str) -> bytes:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    event = QueryEvent(query_id=f"q{i}", ts=ts, text=text, intent=intent)
    return event.model_dump_json(exclude_none=True).encode()


class FakeTopic:
    """`partitions` partitions of `events` events each: texts and intents cycle, every
    `unlabelled_every`-th event (if any) has no label, each partition's offset `bad` (if any) holds a
    message that does not parse, and from offset `flip_at` (if any) every text takes the next
    text's intent (the stream drifts away from what a champion learnt)."""

    def __init__(
        self,
        partitions: int,
        events: int,
        unlabelled_every: int | None = 7,
        bad: int | None = None,
        flip_at: int | None = None,
    ) -> None:
        self.name = KAFKA.topic
        self.records: dict[int, list[Record]] = {}
        self.labelled: dict[int, list[tuple[str, str]]] = {}
        for p in range(partitions):
            records, labelled = [], []
            for offset in range(events):
                i = p * events + offset
                text = f"{TEXTS[i % len(TEXTS)]} {i % 11}"
                flipped = flip_at is not None and offset >= flip_at
                intent = INTENTS[(i + flipped) % len(TEXTS)]
                if unlabelled_every is not None and i % unlabelled_every == 0:
                    intent = None
                value = b"not json" if offset == bad else event_bytes(i, intent, text)
                records.append(Record(value, None, offset))
                if intent is not None and offset != bad:
                    labelled.append((text, intent))
            self.records[p], self.labelled[p] = records, labelled

    @property
    def ends(self) -> dict[int, int]:
        return {p: len(records) for p, records in self.records.items()}

    def labelled_from(self, offsets: dict[int, int]) -> dict[int, list[tuple[str, str]]]:
        """Each partition's labelled (text, intent) pairs at or after `offsets` (0 if absent)."""
        found: dict[int, list[tuple[str, str]]] = {}
        for p, records in self.records.items():
            pairs = []
            for record in records[offsets.get(p, 0) :]:
                if record.value == b"not json":
                    continue
                event = parse_event(record.value)
                if event.intent is not None:
                    pairs.append((event.text, event.intent))
            found[p] = pairs
        return found


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a listener's coroutine, which never waits on anything here."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the listener waited")


class FakeGroup:
    """The members of one consumer group over `topic`."""

    def __init__(self, topic: FakeTopic) -> None:
        self.topic = topic
        self.members: list[FakeConsumer] = []
        self.committed: dict[int, int] = {}

    def consumer(self) -> "FakeConsumer":
        return FakeConsumer(self)

    def rebalance(self) -> None:
        for member in self.members:
            member.revoke_all()
        for i, member in enumerate(self.members):
            mine = [p for p in sorted(self.topic.records) if p % len(self.members) == i]
            member.assign(mine)

    def crash(self, member: "FakeConsumer") -> None:
        """The member is gone without a word (kill -9): its session times out."""
        self.members.remove(member)
        member.assigned.clear()
        self.rebalance()


class FakeConsumer:
    """What `EventReader` uses of `KafkaConsumer`, over a `FakeGroup`."""

    def __init__(self, group: FakeGroup) -> None:
        self.group = group
        self.listener: Any = None
        self.assigned: dict[int, int | None] = {}  # partition -> position (None: unknown)
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.group.topic.records) if topic == self.group.topic.name else None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics == [self.group.topic.name]
        self.listener = listener
        self.group.members.append(self)
        self.group.rebalance()

    def revoke_all(self) -> None:
        if self.assigned:
            tps = {TopicPartition(self.group.topic.name, p) for p in self.assigned}
            _run(self.listener.on_partitions_revoked(tps))
        self.assigned.clear()
        self.paused.clear()

    def assign(self, partitions: list[int]) -> None:
        self.assigned = dict.fromkeys(partitions)
        tps = {TopicPartition(self.group.topic.name, p) for p in partitions}
        _run(self.listener.on_partitions_assigned(tps))

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        budget = max_records or 10**9
        batches = {}
        for p, position in sorted(self.assigned.items()):
            if p in self.paused or position is None or budget == 0:
                continue
            records = self.group.topic.records[p][position : position + budget]
            if records:
                batches[TopicPartition(self.group.topic.name, p)] = records
                self.assigned[p] = position + len(records)
                budget -= len(records)
        return batches

    def beginning_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict:
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict:
        return {tp: len(self.group.topic.records[tp.partition]) for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp.partition in self.assigned, f"partition {tp.partition} is not assigned"
        self.assigned[tp.partition] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tp.partition for tp in tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tp.partition for tp in tps)

    def commit(self, offsets: dict, timeout_ms: int) -> None:
        mine = {tp.partition: meta.offset for tp, meta in offsets.items()}
        assert set(mine) <= set(self.assigned), "a commit for a partition not assigned"
        self.commits.append(mine)
        self.group.committed.update(mine)

    def close(self) -> None:
        self.revoke_all()  # as KafkaConsumer.close does, before leaving the group
        self.closed = True
        self.group.members.remove(self)
        self.group.rebalance()


class FakeProducer:
    """A dead-letter producer whose sends always succeed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Any:
        self.sent.append(value)
        return _Done()

    def flush(self) -> None:
        pass


class _Done:
    exception = None

    def failed(self) -> bool:
        return False
