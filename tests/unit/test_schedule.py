"""The scheduler: cadence, drift-triggered runs, backoff on failure, and no overlapping runs."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from common.settings import StorageSettings
from common.storage import Storage
from pipelines.batch.schedule import Cadence, Lease, Scheduler, lease_for, run_locked
from pipelines.signals import raise_drift_signal


def test_cadence_interval_and_cron():
    assert Cadence(interval_s=60).next_after(1000.0) == 1060.0
    midnight = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert Cadence(cron="*/15 * * * *").next_after(midnight + 1) == midnight + 900
    with pytest.raises(ValueError, match="exactly one"):
        Cadence()
    with pytest.raises(ValueError, match="cron"):
        Cadence(cron="every tuesday")


class NothingToDo(Exception):
    pass


def test_a_job_with_nothing_to_do_is_skipped_not_retried(tmp_path, caplog):
    def job():
        raise NothingToDo("nothing archived since the cut-off of champion version 3")

    scheduler = Scheduler(
        job, Cadence(interval_s=600), tmp_path / "lock", backoff_s=10, skip_errors=(NothingToDo,)
    )
    t0 = time.time()
    with caplog.at_level("INFO"):
        record = scheduler.tick(t0)
    assert record and record.ok and "champion version 3" in record.skipped
    assert "skipped: nothing archived" in caplog.text
    assert scheduler.tick(t0 + 10) is None  # no early retry: the next run is on the cadence
    assert scheduler.tick(t0 + 600) is not None


def test_failed_runs_back_off_then_recover(tmp_path):
    outcomes = iter([RuntimeError("mlflow down"), RuntimeError("still down"), None])

    def job():
        outcome = next(outcomes)
        if outcome:
            raise outcome

    scheduler = Scheduler(job, Cadence(interval_s=600), tmp_path / "lock", backoff_s=10)
    t0 = time.time()
    first = scheduler.tick(t0)
    assert first and not first.ok and "mlflow down" in first.error
    assert scheduler.tick(t0 + 9) is None
    second = scheduler.tick(t0 + 10)
    assert second and not second.ok and second.reason == "retry"
    assert scheduler.tick(t0 + 29) is None  # backoff doubled to 20 s
    third = scheduler.tick(t0 + 30)
    assert third and third.ok
    assert scheduler.tick(t0 + 629) is None and scheduler.tick(t0 + 630) is not None


def test_drift_signal_triggers_an_early_run(tmp_path):
    runs = []
    scheduler = Scheduler(
        lambda: runs.append(1),
        Cadence(interval_s=3600),
        tmp_path / "lock",
        tmp_path,
        run_at_start=False,
    )
    now = time.time()
    assert scheduler.tick(now) is None
    raise_drift_signal(tmp_path, {"source": "test"})
    record = scheduler.tick(time.time() + 1)
    assert record and record.reason == "drift" and runs == [1]
    assert scheduler.tick(time.time() + 2) is None  # the same signal does not fire twice


HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def test_runs_never_overlap_and_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    lock_path = tmp_path / "retrain.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        ran = []
        assert run_locked(lambda: ran.append(1), lock_path) is False
        assert ran == []
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert run_locked(lambda: ran.append(1), lock_path) is True
        assert ran == [1]
    finally:
        holder.kill()
        holder.wait()


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_lease_has_one_holder_until_it_expires(tmp_path):
    store = Storage.from_url(tmp_path)
    clock = FakeClock()
    first = Lease(store, "retrain.lock", lease_s=60, owner="a", clock=clock)
    second = Lease(store, "retrain.lock", lease_s=60, owner="b", clock=clock)
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    clock.now += 59  # not expired yet, and renewed: it lasts another lease_s
    assert not second.acquire()
    assert first.renew()
    clock.now += 59
    assert not second.acquire()
    clock.now += 2  # expired: taken over, and the old holder's renewal finds it gone
    assert second.acquire() and second.held
    assert not first.renew() and not first.held
    first.release()  # releasing a lost lease must not free the new holder's
    assert not Lease(store, "retrain.lock", lease_s=60, owner="c", clock=clock).acquire()
    second.release()
    assert Lease(store, "retrain.lock", lease_s=60, owner="c", clock=clock).acquire()


def test_a_renewal_on_a_changed_tag_stops_claiming_the_lease(tmp_path):
    store = Storage.from_url(tmp_path)
    lease = Lease(store, "lock", lease_s=60, owner="a", clock=FakeClock())
    assert lease.acquire()
    data, tag = store.read_tagged("lock")
    assert store.replace_if("lock", data.replace(b'"a"', b'"intruder"'), tag)
    assert lease.renew() is False and lease.held is False
    assert b"intruder" in store.read_bytes("lock")


def test_contending_leases_never_hold_at_once(tmp_path):
    store = Storage.from_url(tmp_path)
    clock = FakeClock()
    leases = [Lease(store, "lock", lease_s=10, owner=str(i), clock=clock) for i in range(6)]
    barrier = threading.Barrier(len(leases))
    for _ in range(20):  # each round: the lease has expired, all contend for it at once
        clock.now += 11
        wins: list[str] = []

        def contend(lease: Lease, wins: list[str] = wins) -> None:
            barrier.wait()
            if lease.acquire():
                wins.append(lease.owner)

        threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert sum(lease.held for lease in leases) <= 1


def test_a_leased_run_is_renewed_while_it_lasts(tmp_path, monkeypatch):
    store = Storage.from_url(tmp_path)
    lease = Lease(store, "lock", lease_s=0.3, owner="runner")
    monkeypatch.setattr("pipelines.batch.schedule.lease_for", lambda *_: lease)
    outcomes: list[bool] = []

    def job() -> None:
        for _ in range(4):  # outlasts the lease several times over: renewals keep it
            time.sleep(0.25)
            outcomes.append(Lease(store, "lock", lease_s=0.3, owner="other").acquire())
        outcomes.append(lease.held)

    assert run_locked(job, "s3://bucket/lock") is True
    assert outcomes == [False, False, False, False, True]
    assert not lease.held
    assert Lease(store, "lock", lease_s=0.3, owner="next").acquire()  # released at the end


def test_local_lock_paths_keep_the_file_lock():
    assert lease_for("var/locks/retrain.lock") is None
    assert lease_for("retrain.lock") is None
    lease = lease_for("s3://bucket/locks/retrain.lock", StorageSettings(lease_s=12))
    assert lease is not None and lease.name == "retrain.lock" and lease.lease_s == 12
    assert lease.storage.url == "s3://bucket/locks"


def test_a_retry_is_never_later_than_the_next_scheduled_run_and_says_when(tmp_path, caplog):
    def job():
        raise RuntimeError("nothing archived yet")

    scheduler = Scheduler(
        job, Cadence(interval_s=15), tmp_path / "lock", backoff_s=10, max_backoff_s=300
    )
    t0 = time.time()
    for attempt in range(4):  # the backoff grows past the 15 s interval
        assert scheduler.tick(t0 + 15 * attempt) is not None
    assert scheduler.next_at == t0 + 60
    assert caplog.records[-1].getMessage().startswith("retrain (retry) failed, retrying in 15s")
