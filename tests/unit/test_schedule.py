"""The scheduler: cadence, drift-triggered runs, backoff on failure, and no overlapping runs."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.schedule import Cadence, Scheduler, run_locked
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
