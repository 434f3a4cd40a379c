"""Snapshots are atomic, numbered, pruned, read back as written, say which model they hold, and
are refused clearly when they cannot be used."""

import os
import pickle
import platform
import sys
import types
from importlib.metadata import version as installed_version

import pytest

from common.settings import SpeedSettings
from models.blend import Blender
from models.model_spec import ModelSpec
from models.snapshot import (
    DEFAULT_MODEL_SPEC,
    SNAPSHOT_FORMAT,
    SnapshotHeader,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
)


def make(offsets, learnt=0):
    return SpeedSnapshot(
        model={"w": [1, 2, 3]}, blender=Blender(), offsets=offsets, events_learnt=learnt
    )


def test_empty_store_has_no_snapshot(tmp_path):
    store = SnapshotStore(tmp_path / "none")
    assert store.latest() is None and store.latest_sequence() is None


def test_newest_snapshot_wins_and_old_ones_are_pruned(tmp_path):
    store = SnapshotStore(tmp_path, keep=2)
    for i in range(5):
        store.save(make({0: i * 10, 1: i}, learnt=i))
    latest = store.latest()
    assert latest.sequence == 5 and latest.offsets == {0: 40, 1: 4} and latest.events_learnt == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snapshot-000000000004.pkl",
        "snapshot-000000000005.pkl",
    ]


def test_a_half_written_temporary_file_is_never_read(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(make({0: 7}))
    (tmp_path / "snapshot-000000000002.tmp-999").write_bytes(b"\x80\x05garbage")
    assert store.latest().offsets == {0: 7}
    assert os.path.exists(tmp_path / "snapshot-000000000001.pkl")


def test_a_snapshot_pruned_between_listing_and_opening_gives_way_to_the_newer_one(tmp_path):
    store, writer = SnapshotStore(tmp_path), SnapshotStore(tmp_path, keep=1)
    writer.save(make({0: 1}))
    listed = store.latest_sequence

    def list_then_let_a_writer_replace_it(partition: int | None = None) -> int | None:
        sequence = listed(partition)
        if sequence == 1:
            writer.save(make({0: 2}))  # saves 2 and prunes 1 before the reader opens 1
        return sequence

    store.latest_sequence = list_then_let_a_writer_replace_it
    assert store.latest().offsets == {0: 2}


# Headers: what a snapshot says about itself, and the snapshots that cannot be used


class Vanishing:
    """A model whose module a reader may not have: pickled by reference to `vanishing_models`."""

    def learn_one(self, x, y) -> None: ...

    def predict_proba_one(self, x) -> dict:
        return {}


def vanishing_model():
    module = types.ModuleType("vanishing_models")
    cls = type("Vanishing", (Vanishing,), {"__module__": "vanishing_models"})
    module.Vanishing = cls
    sys.modules["vanishing_models"] = module
    return cls()


def test_a_snapshot_header_records_the_format_the_model_spec_and_the_library_versions(tmp_path):
    spec = ModelSpec.parse("models.alternatives:river_naive_bayes", '{"alpha": 0.5}')
    snapshot = make({0: 3})
    snapshot.header = SnapshotHeader.current(spec)
    SnapshotStore(tmp_path).save(snapshot)
    header = SnapshotStore(tmp_path).latest().header
    assert header.format_version == SNAPSHOT_FORMAT == 2
    assert header.model_spec == {
        "factory": "models.alternatives:river_naive_bayes",
        "params": {"alpha": 0.5},
    }
    assert header.spec == spec
    assert set(header.versions) == {"python", "river", "numpy", "scikit-learn", "lambda-ml"}
    assert header.versions["python"] == platform.python_version()
    assert header.versions["river"] == installed_version("river")
    assert header.versions["lambda-ml"] == installed_version("lambda-ml")


def test_the_header_is_read_before_the_model_and_needs_no_model_code(tmp_path):
    snapshot = make({0: 3})
    snapshot.header = SnapshotHeader.current(ModelSpec("vanishing_models:build"))
    snapshot.model = vanishing_model()
    path = SnapshotStore(tmp_path).save(snapshot)
    with open(path, "rb") as handle:
        assert pickle.load(handle) == snapshot.header.as_record()  # plain dicts and strings


def test_a_snapshot_made_without_a_header_records_no_model(tmp_path):
    SnapshotStore(tmp_path).save(make({0: 1}))
    header = SnapshotStore(tmp_path).latest().header
    assert header.format_version == SNAPSHOT_FORMAT and header.model_spec is None
    assert header.describe_model() == "an unrecorded model"


def test_a_snapshot_written_before_headers_reads_as_format_1_of_the_default_model(tmp_path):
    old = make({0: 9}, learnt=4)
    del old.__dict__["header"], old.__dict__["learnt_texts"]  # as the old code pickled it
    tmp_path.joinpath("snapshot-000000000001.pkl").write_bytes(pickle.dumps(old))
    snapshot = SnapshotStore(tmp_path).latest()
    assert (snapshot.offsets, snapshot.events_learnt, snapshot.sequence) == ({0: 9}, 4, 0)
    assert snapshot.header == SnapshotHeader.legacy()
    assert snapshot.header.format_version == 1
    assert snapshot.header.model_spec == {
        "factory": "models.speed_model:build_speed_model",
        "params": {},
    }
    assert len(snapshot.learnt_texts) == 0


def test_the_default_model_of_old_snapshots_is_the_speed_layers_default():
    default = SpeedSettings.model_fields
    assert DEFAULT_MODEL_SPEC.factory == default["model"].default
    assert dict(DEFAULT_MODEL_SPEC.params) == default["model_params"].default


def test_a_format_this_code_does_not_know_is_refused_without_unpickling_the_model(tmp_path):
    path = tmp_path / "snapshot-000000000004.pkl"
    with path.open("wb") as handle:
        header = {"format_version": 99, "model_spec": None, "versions": {}}
        pickle.dump(header, handle)
        handle.write(b"not a pickle at all")
    with pytest.raises(SnapshotUnreadable) as caught:
        SnapshotStore(tmp_path).latest()
    error = caught.value
    assert (error.path, error.sequence, error.header.format_version) == (str(path), 4, 99)
    assert error.reason == "format version 99 is not one this code reads (1, 2)"
    assert str(path) in str(error)


def test_a_snapshot_whose_model_module_is_gone_is_refused_with_its_header(tmp_path):
    snapshot = make({0: 3})
    snapshot.header = SnapshotHeader.current(ModelSpec("vanishing_models:build"))
    snapshot.model = vanishing_model()
    SnapshotStore(tmp_path).save(snapshot)
    del sys.modules["vanishing_models"]
    with pytest.raises(SnapshotUnreadable) as caught:
        SnapshotStore(tmp_path).latest()
    error = caught.value
    assert error.reason.startswith("ModuleNotFoundError: No module named 'vanishing_models'")
    assert "(its model: vanishing_models:build {})" in error.reason
    assert error.header == snapshot.header and error.sequence == 1


@pytest.mark.parametrize("content", [b"\x80\x05garbage", pickle.dumps(["not", "a", "header"])])
def test_a_file_that_is_no_snapshot_is_refused(tmp_path, content):
    tmp_path.joinpath("snapshot-000000000002.pkl").write_bytes(content)
    with pytest.raises(SnapshotUnreadable) as caught:
        SnapshotStore(tmp_path).latest()
    assert caught.value.header is None and caught.value.sequence == 2


def test_partitioned_snapshots_are_numbered_and_pruned_per_partition(tmp_path):
    from models.snapshot import SpeedSnapshot as Snap

    store = SnapshotStore(tmp_path, keep=2)
    store.save(make({0: 5}))  # an unpartitioned snapshot of before consumer groups
    for offset in range(1, 5):
        for partition in (0, 3):
            snapshot = make({partition: offset}, learnt=offset)
            snapshot.partition = partition
            store.save(snapshot)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "snapshot-p003-000000000004.pkl" in names and len(names) == 5
    assert store.latest_sequences() == {0: 4, 3: 4}
    latest = store.latest_per_partition()
    assert {p: s.offsets for p, s in latest.items()} == {0: {0: 4}, 3: {3: 4}}
    assert store.latest().offsets == {0: 5}  # the old unpartitioned one still loads
    assert isinstance(latest[3], Snap) and latest[3].partition == 3


def test_the_merge_of_partition_snapshots_is_the_model_of_all_their_events():
    from models.snapshot import SnapshotEnsemble, SpeedSnapshot, merge_snapshots
    from models.speed_model import build_speed_model

    events = [("wake me at six", "alarm"), ("play jazz", "music"), ("set an alarm", "alarm")]
    parts = [build_speed_model(), build_speed_model()]
    single = build_speed_model()
    for i, (text, intent) in enumerate(events):
        parts[i % 2].learn_one({"text": text}, intent)
        single.learn_one({"text": text}, intent)
    blenders = [Blender(), Blender()]
    snapshots = {
        p: SpeedSnapshot(parts[p], blenders[p], {p: 9}, events_learnt=2 - p, partition=p)
        for p in (0, 1)
    }
    merged = merge_snapshots(snapshots)
    assert merged.model.count_table() == single.count_table()
    assert merged.events_learnt == 3 and merged.offsets == {0: 9, 1: 9}
    assert merged.blender is blenders[0]  # the partition that learnt most

    class Plain:  # a River model without __add__
        def __init__(self, answer):
            self.answer = answer

        def predict_proba_one(self, x):
            return self.answer

    ensemble = merge_snapshots(
        {
            0: SpeedSnapshot(Plain({"a": 1.0}), Blender(), {0: 1}, 1, partition=0),
            1: SpeedSnapshot(Plain({"b": 1.0}), Blender(), {1: 1}, 1, partition=1),
        }
    ).model
    assert isinstance(ensemble, SnapshotEnsemble)
    assert ensemble.predict_proba_one({"text": "x"}) == {"a": 0.5, "b": 0.5}


def test_the_store_has_reached_offsets_only_when_every_partition_s_newest_holds_them(tmp_path):
    store = SnapshotStore(tmp_path)
    for partition, offset in ((0, 5), (1, 3), (1, 7)):
        snapshot = make({partition: offset})
        snapshot.partition = partition
        store.save(snapshot)
    assert store.reached({0: 5, 1: 7})
    assert not store.reached({0: 5, 1: 3})  # partition 1's newest is past it
    assert not store.reached({0: 5, 1: 7, 2: 1})  # partition 2 has no snapshot
    assert not store.reached({0: 5})  # a partition beyond the ends
