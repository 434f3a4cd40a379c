"""The master dataset: exactly-once by file names, incomplete flushes removed, cut-off reads."""

from datetime import UTC, datetime

from streams.archiver import recover, write_flush
from streams.consumer import Consumed
from streams.master_dataset import FlushFile, archived_positions, history
from streams.schema import QueryEvent


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
