"""Shared storage on a real S3-compatible server (the project's S3Proxy): the storage API, the
retrain lock's lease, and the master dataset and speed snapshots written there by real
`lambda-ml archive` and `lambda-ml speed` jobs, through a 30-second outage of the server."""

import io
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from common.processes import ChildProcess
from common.storage import S3Storage, Storage
from models.snapshot import SnapshotStore, merge_snapshots
from pipelines.batch.history import read_history_split
from pipelines.batch.schedule import Lease, lease_for, run_locked
from pipelines.produce import ReplayOptions, run_produce
from pipelines.signals import drift_raised_at, raise_drift_signal
from streams.master_dataset import _flush_files, archived_positions, history
from tests.integration.cli_processes import (
    CLI,
    cli_env,
    run_to_end,
    storage_env,
    stream_jobs_env,
)
from tests.integration.conftest import ObjectStoreService, throwaway_object_store
from tests.integration.kafka_reading import end_offsets, labelled_per_partition

pytestmark = pytest.mark.integration


def test_the_s3_backend_writes_lists_and_writes_conditionally(object_store):
    store = Storage.from_url(object_store.new_url(), object_store.settings)
    assert isinstance(store, S3Storage) and store.list() == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("missing")
    store.write_all({"a/b.txt": b"one", "a/c.txt": b"two", "d.txt": b"three"})
    assert store.list() == ["a/b.txt", "a/c.txt", "d.txt"] and store.list("a/") == [
        "a/b.txt",
        "a/c.txt",
    ]
    store.delete("a/b.txt")
    assert store.list("a/") == ["a/c.txt"]
    assert store.create_exclusive("lease", b"first") is True
    assert store.create_exclusive("lease", b"second") is False
    data, tag = store.read_tagged("lease")
    assert data == b"first"
    assert store.replace_if("lease", b"v2", tag) is True
    assert store.replace_if("lease", b"v3", tag) is False  # stale tag
    assert store.replace_if("absent", b"x", tag) is False
    assert store.read_bytes("lease") == b"v2"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2]}), sink)
    store.write_bytes("t/x.parquet", sink.getvalue().to_pybytes())
    table = pq.read_table(store.pyarrow_path("t/x.parquet"), filesystem=store.pyarrow_filesystem())
    assert table["x"].to_pylist() == [1, 2]


def test_the_drift_signal_by_url(object_store):
    url = object_store.new_url("signals")
    assert drift_raised_at(url, object_store.settings) is None
    raise_drift_signal(url, {"source": "test"}, object_store.settings)
    raised = drift_raised_at(url, object_store.settings)
    assert raised is not None and abs(raised - time.time()) < 60


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_s3_leases_have_one_holder_and_expired_ones_are_taken_over(object_store):
    store = Storage.from_url(object_store.new_url("locks"), object_store.settings)
    clock = FakeClock()
    first = Lease(store, "retrain.lock", lease_s=60, owner="a", clock=clock)
    second = Lease(store, "retrain.lock", lease_s=60, owner="b", clock=clock)
    assert first.acquire() and not second.acquire()
    clock.now += 30
    assert first.renew() and not second.acquire()
    clock.now += 61  # expired: taken over; the old holder's renewal finds its tag changed
    assert second.acquire() and second.held
    assert not first.renew() and not first.held
    first.release()  # must not free the new holder's lease
    assert not Lease(store, "retrain.lock", lease_s=60, owner="c", clock=clock).acquire()
    second.release()
    assert Lease(store, "retrain.lock", lease_s=60, owner="c", clock=clock).acquire()


def test_two_schedulers_on_one_s3_lock_never_run_at_once(object_store):
    url = f"{object_store.new_url('locks')}/retrain.lock"
    # Renewed every third of the lease: 0.67 s of slack for a renewal slowed by a loaded machine
    # (at a 1 s lease, four jobs overlapped once in a full suite run).
    settings = object_store.settings.model_copy(update={"lease_s": 2.0})
    lease = lease_for(url, settings)
    assert lease is not None and not lease.storage.is_local
    running = threading.Lock()
    overlaps, runs = [], []

    def job() -> None:
        if not running.acquire(blocking=False):
            overlaps.append(1)
            return
        try:
            time.sleep(2.5)  # outlasts the lease: renewals must keep it
            runs.append(1)
        finally:
            running.release()

    results: list[bool] = []

    def scheduler() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            results.append(run_locked(job, url, settings))
            time.sleep(0.05)

    threads = [threading.Thread(target=scheduler) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert len(runs) >= 3 and results.count(True) == len(runs)
    assert results.count(False) > 0  # the others found the lease held


def replay(kafka, events: int, rate: float = 0.0):
    settings = kafka.fresh_settings(partitions=3)
    options = ReplayOptions(limit=events, rate=rate, unlabelled_fraction=0.2, span_days=3)
    return settings, lambda: run_produce(settings, options, Console(file=io.StringIO()))


def archive_env(settings, master, object_store, **more):
    return cli_env(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap,
        KAFKA_TOPIC=settings.topic,
        KAFKA_DLQ_TOPIC=settings.dlq_topic,
        BATCH_MASTER_DIR=master,
        ARCHIVE_FLUSH_EVERY_EVENTS=1000,
        ARCHIVE_FLUSH_EVERY_S=0.2,
        ARCHIVE_GROUP_ID=f"archiver-{time.monotonic_ns()}",
        **storage_env(object_store),
        **more,
    )


def test_an_archive_on_s3_reads_back_like_a_local_one(kafka, object_store, tmp_path):
    events = 5_000
    settings, produce = replay(kafka, events)
    produce()
    url = f"{object_store.new_url()}/master"
    local = tmp_path / "master"
    for master in (url, local):
        run_to_end(["archive", "--idle-exit", "3"], archive_env(settings, master, object_store))
    positions = archived_positions(url, object_store.settings)
    assert positions == archived_positions(local) and sum(positions.values()) == events
    remote = history(url, settings=object_store.settings).to_table()
    assert remote.num_rows == history(local).count_rows() == events
    assert sorted(remote["query_id"].to_pylist()) == sorted(
        history(local).to_table()["query_id"].to_pylist()
    )
    split_s3 = read_history_split(url, positions, 0.1, object_store.settings)
    split_local = read_history_split(local, positions, 0.1)
    assert len(split_s3.texts) == len(split_local.texts) > 0
    assert len(split_s3.holdout_texts) == len(split_local.holdout_texts) > 0
    assert split_s3.weights.sum() == split_local.weights.sum()


def owns_partitions(log_path) -> bool:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return any("assigned partitions [" in line and "partitions []" not in line for line in lines)


@pytest.fixture
def own_store(tmp_path) -> Iterator[ObjectStoreService]:
    """An S3Proxy of this test's own, since the test stops it: the session's store may be one
    the environment names, which no test may stop."""
    launcher = throwaway_object_store(tmp_path / "s3proxy")
    with launcher.running():
        yield ObjectStoreService(launcher)


@pytest.mark.reliability
def test_the_archiver_and_the_speed_workers_carry_on_after_a_15s_outage_of_the_store(
    kafka, own_store, tmp_path, reliability
):
    events, rate = 9_000, 200  # a 45 s live replay: the outage falls in its middle
    settings, produce = replay(kafka, events, rate)
    shared = own_store.new_url()
    url = f"{shared}/master"
    env = stream_jobs_env(
        settings,
        tmp_path,
        BATCH_MASTER_DIR=url,
        ARCHIVE_FLUSH_EVERY_EVENTS="1000",
        ARCHIVE_FLUSH_EVERY_S="0.2",
        SPEED_SNAPSHOT_DIR=f"{shared}/snapshots",
        SPEED_SNAPSHOT_EVERY_S="0.5",
        SPEED_SIGNAL_DIR=f"{shared}/signals",
        SPEED_PEER_REFRESH_S="1",
        # A revocation's first failing save retries for seconds; on a loaded CI machine that
        # can outlast the default 10 s session and set off one more rebalance.
        SPEED_SESSION_TIMEOUT_MS="20000",
        **storage_env(own_store),
    )
    snapshots = SnapshotStore(f"{shared}/snapshots", storage=own_store.settings)
    producer = threading.Thread(target=produce)
    jobs = {
        name: ChildProcess(name, CLI + args, env=env, log_path=tmp_path / f"{name}.log")
        for name, args in {
            "archive": ["archive", "--idle-exit", "5"],
            "speed-a": ["speed"],
            "speed-b": ["speed"],
        }.items()
    }

    def logs() -> str:
        return "\n".join(f"{n}: {(tmp_path / f'{n}.log').read_text()[-2000:]}" for n in jobs)

    producer.start()
    try:
        with ExitStack() as stack:
            for job in jobs.values():
                stack.enter_context(job)
            deadline = time.monotonic() + 60
            while not (
                _flush_files(url, own_store.settings)
                and snapshots.latest_sequences()
                and all(owns_partitions(tmp_path / f"{n}.log") for n in ("speed-a", "speed-b"))
            ):  # the outage is to find the group settled: a rebalance in it is another test
                assert time.monotonic() < deadline, logs()
                assert all(job.poll() is None for job in jobs.values()), logs()
                time.sleep(0.1)
            assert own_store.launcher.down()
            try:
                time.sleep(15)  # long enough for a flush's retry backoff to reach its cap
                assert all(job.poll() is None for job in jobs.values()), logs()  # they waited
            finally:
                own_store.launcher.up()
            back = time.monotonic()
            before = snapshots.latest_sequences()
            while snapshots.latest_sequences() == before:
                assert time.monotonic() - back < 30, logs()
                time.sleep(0.1)
            resumed_s = time.monotonic() - back
            producer.join()
            assert jobs["archive"].wait(timeout_s=120) == 0, logs()
            ends = end_offsets(settings.bootstrap, settings.topic)
            deadline = time.monotonic() + 120
            while not snapshots.reached(ends):
                assert time.monotonic() < deadline, logs()
                time.sleep(0.2)
            for name in ("speed-a", "speed-b"):
                jobs[name].send_signal(signal.SIGTERM)
                assert jobs[name].wait(timeout_s=60) == 0, logs()
    finally:
        producer.join()
    scenario = "the S3-compatible store down for 15 s"
    reliability(
        scenario, "seconds until the speed workers saved snapshots again", round(resumed_s, 1)
    )
    assert "retrying" in (tmp_path / "archive.log").read_text()  # flushes did fail meanwhile
    speed_logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("speed-a", "speed-b"))
    assert "snapshot not saved" in speed_logs  # and so did snapshots
    table = history(url, settings=own_store.settings).to_table(
        columns=["query_id", "partition", "offset"]
    )
    distinct = pc.count_distinct(table["query_id"]).as_py()
    assert (table.num_rows, distinct) == (events, events)
    pairs = set(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
    assert len(pairs) == events
    assert sum(archived_positions(url, own_store.settings).values()) == events
    labelled, single = labelled_per_partition(settings.bootstrap, settings.topic, events)
    latest = snapshots.latest_per_partition()
    assert {p: s.events_learnt for p, s in latest.items()} == dict(labelled)
    assert merge_snapshots(latest).model.count_table() == single.count_table()
