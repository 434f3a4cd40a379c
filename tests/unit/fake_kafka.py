"""A consumer group in memory, for unit tests of what runs over `streams.consumer.EventReader`.

`FakeTopic` holds the query records and `FakeLabels` those of the feedback topic; `FakeGroup`
deals the partitions to the members that joined, as Kafka's eager protocol does: at each join
or departure every member's partitions are revoked (its listener called), then every member is
given its share (round robin), partition p of every topic to the same member (co-partitioned).
`FakeConsumer` answers the part of `KafkaConsumer`'s API the reader uses, and a poll reads the
queries before the labels. Nothing runs on another thread, so a test interleaves its workers
turn by turn, deterministically.
"""

from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka.errors import KafkaConnectionError
from kafka.structs import TopicPartition

from common.settings import KafkaSettings
from streams.schema import FeedbackEvent, QueryEvent, parse_event

KAFKA = KafkaSettings(
    bootstrap_servers="fake:9092",
    topic="queries",
    dlq_topic="queries.dlq",
    feedback_topic="queries.feedback",
)
TS = datetime(2026, 1, 1, tzinfo=UTC)
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


def event_bytes(i: int, intent: str | None, text: str, **fields: Any) -> bytes:
    event = QueryEvent(query_id=f"q{i}", ts=TS, text=text, intent=intent, **fields)
    return event.model_dump_json(exclude_none=True).encode()


def label_bytes(query_id: str, intent: str, ts: datetime = TS) -> bytes:
    return FeedbackEvent(query_id=query_id, intent=intent, ts=ts).to_json_bytes()


class FakeTopic:
    """`partitions` partitions of `events` events each: texts and intents cycle, every
    `unlabelled_every`-th event (if any) has no label, each partition's offset `bad` (if any)
    holds a message that does not parse, and from offset `flip_at` (if any) every text takes
    the next text's intent (the stream drifts away from what a champion learnt)."""

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

    def append(self, partition: int, value: bytes) -> None:
        self.records[partition].append(Record(value, None, len(self.records[partition])))

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


class FakeLabels(FakeTopic):
    """The feedback topic: `partitions` partitions, empty until labels are appended."""

    def __init__(self, partitions: int) -> None:
        self.name = KAFKA.feedback_topic
        self.records = {p: [] for p in range(partitions)}
        self.labelled = {p: [] for p in range(partitions)}


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a listener's coroutine, which never waits on anything here."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the listener waited")


class FakeGroup:
    """The members of one consumer group over `topic` (and `labels`, its feedback topic);
    `committed` holds the commits of `topic`, `committed_labels` those of `labels`."""

    def __init__(self, topic: FakeTopic, labels: FakeLabels | None = None) -> None:
        self.topic = topic
        self.topics = {t.name: t for t in (topic, labels) if t is not None}
        self.members: list[FakeConsumer] = []
        self.committed: dict[int, int] = {}
        self.committed_labels: dict[int, int] = {}

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
        self.topics: list[str] = []
        # topic partition -> position (None: unknown)
        self.assigned: dict[TopicPartition, int | None] = {}
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[int, int]] = []
        self.closed = False
        self.polls_refused = 0  # the next polls that fail as if the broker were away

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        found = self.group.topics.get(topic)
        return set(found.records) if found is not None else None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics[0] == self.group.topic.name and set(topics) <= set(self.group.topics)
        self.topics = topics
        self.listener = listener
        self.group.members.append(self)
        self.group.rebalance()

    def revoke_all(self) -> None:
        if self.assigned:
            _run(self.listener.on_partitions_revoked(set(self.assigned)))
        self.assigned.clear()
        self.paused.clear()

    def assign(self, partitions: list[int]) -> None:
        self.assigned = {TopicPartition(t, p): None for t in self.topics for p in partitions}
        _run(self.listener.on_partitions_assigned(set(self.assigned)))

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        if self.polls_refused:
            self.polls_refused -= 1
            raise KafkaConnectionError("111 ECONNREFUSED")
        budget = max_records or 10**9
        batches = {}
        for tp, position in sorted(self.assigned.items()):
            if tp in self.paused or position is None or budget == 0:
                continue
            records = self.group.topics[tp.topic].records[tp.partition][
                position : position + budget
            ]
            if records:
                batches[tp] = records
                self.assigned[tp] = position + len(records)
                budget -= len(records)
        return batches

    def beginning_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict:
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict:
        return {tp: len(self.group.topics[tp.topic].records[tp.partition]) for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned, f"{tp} is not assigned"
        self.assigned[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def commit(self, offsets: dict, timeout_ms: int) -> None:
        assert set(offsets) <= set(self.assigned), "a commit for a partition not assigned"
        mine = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == KAFKA.topic}
        labels = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic != KAFKA.topic}
        self.commits.append(mine)
        self.group.committed.update(mine)
        self.group.committed_labels.update(labels)

    def close(self) -> None:
        self.revoke_all()  # as KafkaConsumer.close does, before leaving the group
        self.closed = True
        self.group.members.remove(self)
        self.group.rebalance()


class FakeProducer:
    """A dead-letter producer whose sends always succeed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.reasons: list[str] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Any:
        self.sent.append(value)
        self.reasons.append(dict(headers)["dlq.reason"].decode())
        return _Done()

    def flush(self) -> None:
        pass


class _Done:
    exception = None

    def failed(self) -> bool:
        return False
