"""The archiver as a member of a consumer group in memory (`tests.unit.fake_kafka`): each
partition it is given starts after its last complete flush, one it loses is flushed first, and
however the partitions move every offset is archived exactly once, of the queries and of the
labels of the feedback topic."""

from threading import Event

import pyarrow.compute as pc

from common.settings import ArchiveSettings
from streams.archiver import Archiver
from streams.consumer import EventReader
from streams.master_dataset import FEEDBACK, archived_positions, feedback_history, history
from tests.unit.fake_kafka import (
    KAFKA,
    FakeGroup,
    FakeLabels,
    FakeProducer,
    FakeTopic,
    label_bytes,
)


def archiver(group: FakeGroup, root) -> Archiver:
    feedback = KAFKA.feedback_topic in group.topics
    reader = EventReader(group.consumer(), FakeProducer(), KAFKA, "archive", feedback=feedback)
    return Archiver(reader, root, ArchiveSettings())


def read(member: Archiver, most: int | None = None) -> None:
    """One poll (of at most `most` records) into the archiver's buffers, as a turn of its loop
    reads."""
    member.keep(member.reader.poll(timeout_ms=0, max_records=most))


def test_a_partition_resumes_after_its_last_flush(tmp_path):
    topic = FakeTopic(partitions=2, events=50, bad=7)
    first = archiver(FakeGroup(topic), tmp_path)
    for _ in range(4):
        read(first, most=20)
    first.flush()  # stopped part-way, with its last flush
    assert archived_positions(tmp_path) == {0: 50, 1: 10}
    again = archiver(FakeGroup(topic), tmp_path)
    again.run(Event(), idle_exit_s=0.1)
    assert archived_positions(tmp_path) == topic.ends
    offsets = history(tmp_path).to_table(columns=["partition", "offset"])
    assert offsets.num_rows == 98  # every valid event once; the bad ones are dead letters
    pairs = zip(offsets["partition"].to_pylist(), offsets["offset"].to_pylist(), strict=True)
    assert len(set(pairs)) == 98


def test_polls_the_broker_refuses_are_waited_out_and_nothing_is_skipped(tmp_path):
    topic = FakeTopic(partitions=2, events=40)
    group = FakeGroup(topic)
    member = archiver(group, tmp_path)
    read(member, most=30)
    (consumer,) = group.members
    consumer.polls_refused = 3
    for _ in range(3):
        assert member.reader.poll(timeout_ms=0) == []  # the broker is away: nothing read
    member.run(Event(), idle_exit_s=0.1)
    assert archived_positions(tmp_path) == topic.ends
    assert history(tmp_path).count_rows() == 80


def test_a_partition_given_to_another_archiver_is_flushed_first_and_archived_once(tmp_path):
    topic = FakeTopic(partitions=4, events=60)
    group = FakeGroup(topic)
    first = archiver(group, tmp_path)
    for _ in range(3):
        read(first, most=30)  # buffered, nothing flushed
    assert not archived_positions(tmp_path)
    read_so_far = {p: o for p, o in first.reader.positions.items() if o > 0}
    second = archiver(group, tmp_path)  # joins: every partition is revoked, then dealt out
    assert archived_positions(tmp_path) == read_so_far
    assert first.failed_flushes == 0 and not first._buffers
    stop = Event()
    for _ in range(20):
        for member in (first, second):
            read(member)
            member.flush(stop)
    assert archived_positions(tmp_path) == topic.ends
    table = history(tmp_path).to_table(columns=["query_id"])
    assert table.num_rows == pc.count_distinct(table["query_id"]).as_py() == 4 * 60


def test_labels_are_archived_beside_the_queries_each_topic_resuming_on_its_own(tmp_path):
    topic = FakeTopic(partitions=2, events=30)
    labels = FakeLabels(2)
    for partition in (0, 1):
        for offset in range(0, 30, 3):
            labels.append(partition, label_bytes(f"q{30 * partition + offset}", "alarm"))
    labels.append(1, b"not json")  # dead-lettered, and archived past all the same
    first = archiver(FakeGroup(topic, labels), tmp_path)
    read(first)  # the partitions start
    read(first, most=50)  # the queries of partition 0, and 20 of partition 1
    first.flush()
    assert archived_positions(tmp_path) == {0: 30, 1: 20}
    assert archived_positions(tmp_path, topic=FEEDBACK) == {}
    again = archiver(FakeGroup(topic, labels), tmp_path)
    again.run(Event(), idle_exit_s=0.1)
    assert archived_positions(tmp_path) == topic.ends
    assert archived_positions(tmp_path, topic=FEEDBACK) == labels.ends == {0: 10, 1: 11}
    assert history(tmp_path).count_rows() == 60
    table = feedback_history(tmp_path).to_table(columns=["query_id", "partition", "offset"])
    assert table.num_rows == pc.count_distinct(table["query_id"]).as_py() == 20
    assert again.archived == 10 + 20  # the rest of partition 1's queries, and every label
