"""The master dataset: exactly-once by file names, incomplete flushes removed, cut-off reads,
and the feedback topic's labels archived beside the queries."""

import threading
from datetime import UTC, datetime

import pyarrow.parquet as pq

from common.settings import ArchiveSettings
from common.storage import LocalStorage, StorageError
from streams.archiver import Archiver, recover, write_flush
from streams.consumer import Consumed
from streams.master_dataset import (
    FEEDBACK,
    FEEDBACK_SCHEMA,
    Cutoff,
    FlushFile,
    archived_cutoff,
    archived_positions,
    feedback_history,
    flush_table,
    footprint,
    history,
    scan,
)
from streams.master_dataset import write_flush as archive
from streams.schema import FeedbackEvent, QueryEvent, Score, Served


def consumed(partition, offset, day=1, intent="alarm"):
    event = QueryEvent(
        query_id=f"q{partition}-{offset}",
        ts=datetime(2026, 1, day, 12, tzinfo=UTC),
        text=f"t{offset}",
        intent=intent,
    )
    return Consumed(event, partition, offset)


def test_flushes_are_read_back_and_positions_come_from_names(tmp_path):
    write_flush(tmp_path, 0, 0, 9, [consumed(0, o) for o in range(10)])
    write_flush(tmp_path, 1, 0, 4, [consumed(1, o, day=2) for o in range(5)])
    write_flush(tmp_path, 0, 10, 14, [consumed(0, o, day=1 + o % 2) for o in range(10, 15)])
    assert archived_positions(tmp_path) == {0: 15, 1: 5}
    table = history(tmp_path).to_table(columns=["partition", "offset"])
    assert sorted(
        zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True)
    ) == [(0, o) for o in range(15)] + [(1, o) for o in range(5)]


def test_what_was_served_is_archived_and_files_from_before_the_column_read_as_none(tmp_path):
    served = Served(
        intent="alarm_set",
        confidence=0.81,
        source="blend",
        top_k=[Score(intent="alarm_set", p=0.81), Score(intent="timer", p=0.1)],
        batch_weight=0.7,
        speed_weight=0.3,
        batch_version="3",
        speed_offsets={0: 12, 1: 40},
    )
    answered = consumed(0, 0, intent=None)
    answered = Consumed(answered.event.model_copy(update={"served": served}), 0, 0)
    write_flush(tmp_path, 0, 0, 1, [answered, consumed(0, 1)])
    # A file written before the column existed: every other column, and no `served`.
    older = flush_table([consumed(1, 0)]).drop_columns(["served"])
    pq.write_table(older, tmp_path / "date=2026-01-01" / FlushFile.name(1, 0, 0, 1, 1))
    rows = (
        history(tmp_path).to_table().sort_by([("partition", "ascending"), ("offset", "ascending")])
    )
    assert Served.model_validate_json(rows["served"][0].as_py()) == served
    assert rows["served"].to_pylist()[1:] == [None, None]


def test_cutoff_keeps_only_offsets_below_it_per_partition(tmp_path):
    write_flush(tmp_path, 0, 0, 9, [consumed(0, o) for o in range(10)])
    write_flush(tmp_path, 1, 0, 9, [consumed(1, o) for o in range(10)])
    table = history(tmp_path, cutoff={0: 4, 1: 10}).to_table()
    assert table.num_rows == 14
    assert history(tmp_path, cutoff={}).to_table().num_rows == 0


def test_an_incomplete_flush_is_removed_and_its_range_archived_again(tmp_path):
    write_flush(tmp_path, 0, 0, 9, [consumed(0, o) for o in range(10)])
    # A crash between the renames of a two-file flush leaves part 1 of 2 only.
    write_flush(tmp_path, 0, 10, 19, [consumed(0, o, day=1 + o % 2) for o in range(10, 20)])
    second_part = next(tmp_path.glob("date=2026-01-02/*_2of2.parquet"))
    second_part.unlink()
    (tmp_path / "date=2026-01-01" / ".leftover.parquet.tmp").write_bytes(b"partial")
    assert archived_positions(tmp_path) == {0: 10}
    assert history(tmp_path).to_table().num_rows == 10
    assert recover(tmp_path) == {0: 10}
    assert not list(tmp_path.glob("date=*/.*.tmp"))
    assert [f.name for f in tmp_path.glob("date=*/*.parquet")] == [FlushFile.name(0, 0, 9, 1, 1)]


def test_a_range_of_only_dead_lettered_messages_still_advances(tmp_path):
    write_flush(tmp_path, 2, 0, 2, [])
    assert archived_positions(tmp_path) == {2: 3}
    assert history(tmp_path).to_table().num_rows == 0


class FlakyStorage(LocalStorage):
    """A local folder whose first `failures` writes fail, as an unreachable store's would."""

    def __init__(self, root, failures):
        super().__init__(root)
        self.failures = failures

    def write_all(self, objects):
        if self.failures:
            self.failures -= 1
            raise StorageError("connection refused")
        super().write_all(objects)


class FakeReader:
    def __init__(self, events):
        self.positions = {}
        self.feedback_positions = {}
        self.pending = list(events)
        self.commits = []

    def poll(self, timeout_ms):
        batch, self.pending = self.pending, []
        for c in batch:
            self.positions[c.partition] = c.offset + 1
        return batch

    def commit(self, positions, feedback_positions=None):
        self.commits.append(dict(positions))

    def flush_dead_letters(self):
        pass

    def partition_lag(self):
        return {partition: 0 for partition in self.positions}


def test_a_failed_flush_is_retried_and_nothing_is_committed_before_it_lands(tmp_path):
    storage = FlakyStorage(tmp_path, failures=3)
    reader = FakeReader([consumed(0, o) for o in range(5)] + [consumed(1, o) for o in range(3)])
    archiver = Archiver(reader, storage, ArchiveSettings(flush_every_s=0.0))
    archiver.retry_backoff_s = 0.01
    seen_commits = []
    real_write = storage.write_all

    def watching(objects):
        seen_commits.append(list(reader.commits))
        real_write(objects)

    storage.write_all = watching
    archiver.run(threading.Event(), max_messages=8)
    assert archiver.failed_flushes == 3 and archiver.archived == 8
    assert seen_commits[0] == []  # no offset committed while the first write kept failing
    assert archived_positions(tmp_path) == {0: 5, 1: 3}
    assert reader.commits[-1] == {0: 5, 1: 3}
    assert history(tmp_path).count_rows() == 8
    files = sorted(tmp_path.glob("date=*/*.parquet"))
    assert archiver.files_written == len(files) == 2
    assert archiver.bytes_written == sum(f.stat().st_size for f in files)
    assert archiver.lag == {0: 0, 1: 0}


def test_a_flush_stopped_during_an_outage_commits_only_what_was_written(tmp_path):
    storage = FlakyStorage(tmp_path, failures=10**6)
    reader = FakeReader([consumed(0, o) for o in range(5)])
    archiver = Archiver(reader, storage, ArchiveSettings())
    archiver.retry_backoff_s = 0.01
    reader.poll(0)
    archiver._buffers[0] = [consumed(0, o) for o in range(5)]
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert archiver.flush(stop) is False
    assert reader.commits == [{}] and archiver.archived == 0
    assert archived_positions(tmp_path) == {}


def label(partition, offset, query_id, intent="alarm", day=1):
    event = FeedbackEvent(
        query_id=query_id, intent=intent, ts=datetime(2026, 1, day, 13, tzinfo=UTC), source="app"
    )
    return Consumed(event, partition, offset)


def test_labels_are_archived_beside_the_queries_with_positions_of_their_own(tmp_path):
    write_flush(tmp_path, 0, 0, 9, [consumed(0, o) for o in range(10)])
    labels = [label(0, o, f"q0-{o}", day=1 + o % 2) for o in range(4)]
    assert archive_labels(tmp_path, 0, 0, 3, labels) == (2, sum_sizes(tmp_path / "feedback"))
    archive_labels(tmp_path, 1, 0, 1, [label(1, 0, "q-unknown"), label(1, 1, "q0-1", "timer")])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert names == [
        "date=2026-01-01/p000_o000000000000-000000000009_1of1.parquet",
        "feedback/date=2026-01-01/p000_o000000000000-000000000003_1of2.parquet",
        "feedback/date=2026-01-01/p001_o000000000000-000000000001_1of1.parquet",
        "feedback/date=2026-01-02/p000_o000000000000-000000000003_2of2.parquet",
    ]
    assert archived_positions(tmp_path) == {0: 10}
    assert archived_positions(tmp_path, topic=FEEDBACK) == {0: 4, 1: 2}
    assert archived_cutoff(tmp_path) == Cutoff(queries={0: 10}, feedback={0: 4, 1: 2})
    assert history(tmp_path).count_rows() == 10  # the queries only
    table = feedback_history(tmp_path).to_table().sort_by([("partition", "ascending")])
    assert table.schema == FEEDBACK_SCHEMA and table.num_rows == 6
    assert table.slice(4).to_pylist()[1] == {
        "query_id": "q0-1",
        "intent": "timer",
        "ts": datetime(2026, 1, 1, 13, tzinfo=UTC),
        "source": "app",
        "partition": 1,
        "offset": 1,
    }
    assert footprint(tmp_path)[0] == 4


def test_labels_are_read_up_to_the_feedback_offsets_of_a_cutoff(tmp_path):
    archive_labels(tmp_path, 0, 0, 9, [label(0, o, f"q{o}") for o in range(10)])
    archive_labels(tmp_path, 1, 0, 9, [label(1, o, f"r{o}") for o in range(10)])
    cutoff = Cutoff(queries={0: 100}, feedback={0: 3, 1: 10})
    assert feedback_history(tmp_path, cutoff).count_rows() == 13
    assert history(tmp_path, cutoff).count_rows() == 0
    # A cut-off recorded as queries offsets alone (before labels had a topic) reads no label.
    assert feedback_history(tmp_path, {0: 100, 1: 100}).count_rows() == 0
    assert feedback_history(tmp_path).count_rows() == 20


def test_an_incomplete_flush_of_labels_is_not_read_and_does_not_count(tmp_path):
    archive_labels(tmp_path, 0, 0, 4, [label(0, o, f"q{o}", day=1 + o % 2) for o in range(5)])
    next(tmp_path.glob("feedback/date=2026-01-02/*_2of2.parquet")).unlink()
    positions, incomplete = scan(tmp_path, topic=FEEDBACK)
    assert positions == {} and [f.part for f in incomplete] == [1]
    assert feedback_history(tmp_path).count_rows() == 0
    assert scan(tmp_path) == ({}, [])  # the queries' files are apart


def archive_labels(root, partition, first, last, labels):
    return archive(root, partition, first, last, labels, topic=FEEDBACK)


def sum_sizes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*.parquet"))
