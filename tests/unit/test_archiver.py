"""The archiver as a member of a consumer group in memory (`tests.unit.fake_kafka`): each
partition it is given starts after its last complete flush, one it loses is flushed first, and
however the partitions move every offset is archived exactly once."""

from threading import Event

import pyarrow.compute as pc

from common.settings import ArchiveSettings
from streams.archiver import Archiver
from streams.consumer import EventReader
from streams.master_dataset import archived_positions, history
from tests.unit.fake_kafka import KAFKA, FakeGroup, FakeProducer, FakeTopic


def archiver(group: FakeGroup, root) -> Archiver:
    reader = EventReader(group.consumer(), FakeProducer(), KAFKA, "archive")
    return Archiver(reader, root, ArchiveSettings())


def read(member: Archiver, most: int | None = None) -> None:
    """One poll (of at most `most` records) into the archiver's buffers, as a turn of its loop
    reads."""
    for item in member.reader.poll(timeout_ms=0, max_records=most):
        member._buffers[item.partition].append(item)


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
