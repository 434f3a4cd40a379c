"""Snapshots are atomic, numbered, pruned, and read back as written."""

import os

from models.blend import HedgeBlender
from models.snapshot import LocalSnapshotStore, SpeedSnapshot


def make(offsets, learnt=0):
    return SpeedSnapshot(
        model={"w": [1, 2, 3]}, blender=HedgeBlender(), offsets=offsets, events_learnt=learnt
    )


def test_empty_store_has_no_snapshot(tmp_path):
    store = LocalSnapshotStore(tmp_path / "none")
    assert store.latest() is None and store.latest_sequence() is None


def test_newest_snapshot_wins_and_old_ones_are_pruned(tmp_path):
    store = LocalSnapshotStore(tmp_path, keep=2)
    for i in range(5):
        store.save(make({0: i * 10, 1: i}, learnt=i))
    latest = store.latest()
    assert latest.sequence == 5 and latest.offsets == {0: 40, 1: 4} and latest.events_learnt == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snapshot-000000000004.pkl",
        "snapshot-000000000005.pkl",
    ]


def test_a_half_written_temporary_file_is_never_read(tmp_path):
    store = LocalSnapshotStore(tmp_path)
    store.save(make({0: 7}))
    (tmp_path / "snapshot-000000000002.tmp-999").write_bytes(b"\x80\x05garbage")
    assert store.latest().offsets == {0: 7}
    assert os.path.exists(tmp_path / "snapshot-000000000001.pkl")


def test_a_snapshot_pruned_between_listing_and_opening_gives_way_to_the_newer_one(tmp_path):
    store, writer = LocalSnapshotStore(tmp_path), LocalSnapshotStore(tmp_path, keep=1)
    writer.save(make({0: 1}))
    listed = store.latest_sequence

    def list_then_let_a_writer_replace_it() -> int | None:
        sequence = listed()
        if sequence == 1:
            writer.save(make({0: 2}))  # saves 2 and prunes 1 before the reader opens 1
        return sequence

    store.latest_sequence = list_then_let_a_writer_replace_it
    assert store.latest().offsets == {0: 2}
