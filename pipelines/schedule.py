"""The batch scheduler: retrain on an interval or a cron expression, and early on drift.

Runs never overlap: each holds an OS file lock (released by the kernel if the process dies, so
a crash leaves no stale lock). A failed run is logged and retried with exponential backoff;
the scheduler itself keeps going, and serving keeps the champion it has.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Event

from croniter import croniter
from filelock import FileLock, Timeout

from pipelines.signals import drift_raised_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cadence:
    """Either every `interval_s` seconds or on a cron expression (UTC)."""

    interval_s: float | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("give exactly one of an interval or a cron expression")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError("the interval must be positive")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"not a valid cron expression: {self.cron!r}")

    def next_after(self, moment: float) -> float:
        if self.interval_s is not None:
            return moment + self.interval_s
        start = datetime.fromtimestamp(moment, UTC)
        return float(croniter(self.cron, start).get_next(float))


@dataclass
class RunRecord:
    started_at: float
    ok: bool
    reason: str  # "schedule", "drift" or "retry"
    error: str = ""
    skipped: str = ""  # why the job had nothing to do, when it said so


def run_locked(job: Callable[[], object], lock_path: Path) -> bool:
    """Run `job` under the lock; returns False (without running) if another run holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    try:
        job()
    finally:
        lock.release()
    return True


class Scheduler:
    """Calls `job` when due; a failure is retried after `backoff_s`, doubling to `max_backoff_s`.

    An exception of a type in `skip_errors` means the job had nothing to do (say, nothing new
    to train on): the run is logged as skipped, with the reason, and is not retried early.
    """

    def __init__(
        self,
        job: Callable[[], object],
        cadence: Cadence,
        lock_path: Path,
        signal_dir: Path | None = None,
        backoff_s: float = 5.0,
        max_backoff_s: float = 300.0,
        run_at_start: bool = True,
        skip_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        self.job = job
        self.skip_errors = skip_errors
        self.cadence = cadence
        self.lock_path = lock_path
        self.signal_dir = signal_dir
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.history: list[RunRecord] = []
        now = time.time()
        self._next_at = now if run_at_start else cadence.next_after(now)
        self._failures = 0
        self._last_started = 0.0

    def _due(self, now: float) -> str | None:
        if now >= self._next_at:
            return "retry" if self._failures else "schedule"
        raised = drift_raised_at(self.signal_dir) if self.signal_dir else None
        if raised is not None and raised > self._last_started:
            return "drift"
        return None

    def tick(self, now: float) -> RunRecord | None:
        """Run the job if it is due now; returns what happened, or None if nothing was due."""
        reason = self._due(now)
        if reason is None:
            return None
        self._last_started = now
        record = RunRecord(started_at=now, ok=True, reason=reason)
        try:
            if not run_locked(self.job, self.lock_path):
                record.ok, record.error = False, "another run holds the lock"
        except self.skip_errors as exc:
            record.skipped = str(exc)
        except Exception as exc:  # a failed run must not end the scheduler
            record.ok, record.error = False, f"{type(exc).__name__}: {exc}"
        if record.ok:
            self._failures = 0
            self._next_at = self.cadence.next_after(now)
            if record.skipped:
                log.info("retrain (%s) skipped: %s", reason, record.skipped)
            else:
                log.info("retrain (%s) finished", reason)
        else:
            self._failures += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
            self._next_at = min(now + delay, self.cadence.next_after(now))
            log.error("retrain (%s) failed, retrying in %.0fs: %s", reason, delay, record.error)
        self.history.append(record)
        return record

    def run(self, stop: Event, max_runs: int | None = None, poll_s: float = 1.0) -> None:
        """Tick until `stop` is set or `max_runs` runs have succeeded."""
        while not stop.is_set():
            self.tick(time.time())
            if max_runs is not None and sum(r.ok for r in self.history) >= max_runs:
                return
            stop.wait(poll_s)
