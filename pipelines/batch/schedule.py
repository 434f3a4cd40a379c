"""The batch scheduler: retrain on an interval or a cron expression, and early on drift.

Runs never overlap. With a local lock path, each run holds an OS file lock (released by the
kernel if the process dies, so a crash leaves no stale lock). With an `s3://` lock path, which
schedulers on several machines share, each run holds a `Lease`: an object naming its owner and
an expiry, created only if absent, renewed while the run lasts and taken over only once expired,
every change a conditional write on the object's version (its ETag). A failed run is logged and
retried with exponential backoff; the scheduler itself keeps going, and serving keeps the
champion it has.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Event
from typing import Literal

from croniter import croniter
from filelock import FileLock, Timeout

from common.job_metrics import Heartbeat
from common.settings import StorageSettings
from common.storage import Location, Storage
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


Outcome = Literal["succeeded", "skipped", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "skipped", "failed")


@dataclass
class RunRecord:
    started_at: float
    ok: bool
    reason: str  # "schedule", "drift" or "retry"
    error: str = ""
    skipped: str = ""  # why the job had nothing to do, when it said so
    seconds: float = 0.0

    @property
    def outcome(self) -> Outcome:
        if not self.ok:
            return "failed"
        return "skipped" if self.skipped else "succeeded"


class Lease:
    """A lock on shared storage that expires unless its holder renews it.

    The lease object holds `{"owner", "expires_at", "nonce"}`. `acquire` creates it if absent
    (`create_exclusive`), or replaces it if its expiry has passed, conditionally on the version
    read (`replace_if`): of two contenders only one write succeeds. `renew` pushes the expiry
    on, again conditionally on the version this holder wrote last; if that version changed (the
    lease expired and another took it over), the holder stops claiming the lease. Every write
    is read back, so `held` is True only while the object is the one this holder wrote and its
    expiry has not passed.
    Expiries are wall-clock times: the machines' clocks must agree to well within `lease_s`.

    Parameters
    ----------
    storage, name
        Where the lease object lives.
    lease_s
        How long a lease lasts from its last renewal; a crashed holder's lease frees after it.
    owner
        Who holds it, for the logs (default: host, pid and a random suffix).
    clock
        The wall clock (tests pass a fake one).
    """

    def __init__(
        self,
        storage: Storage,
        name: str,
        lease_s: float,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.name = name
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self._tag: str | None = None
        self._expires_at = 0.0
        self._writing_expiry = 0.0

    @property
    def held(self) -> bool:
        """Whether this holder has the lease now: last written by it, and not expired."""
        return self._tag is not None and self.clock() < self._expires_at

    def _body(self, expires_at: float) -> bytes:
        self._writing_expiry = expires_at
        record = {"owner": self.owner, "expires_at": expires_at, "nonce": uuid.uuid4().hex}
        return json.dumps(record).encode()

    def _confirm(self, body: bytes) -> bool:
        """Hold the lease if the object is still what this holder just wrote."""
        try:
            data, tag = self.storage.read_tagged(self.name)
        except FileNotFoundError:
            data, tag = b"", ""
        self._tag = tag if data == body else None
        self._expires_at = self._writing_expiry if self._tag is not None else 0.0
        return self.held

    def acquire(self) -> bool:
        """Take the lease if it is free or expired; False if another holds it."""
        now = self.clock()
        body = self._body(now + self.lease_s)
        if self.storage.create_exclusive(self.name, body):
            return self._confirm(body)
        try:
            data, tag = self.storage.read_tagged(self.name)
        except FileNotFoundError:  # deleted meanwhile: the next attempt creates it
            return False
        expires_at = _expiry(data)
        if expires_at is not None and expires_at > now:
            return False
        if expires_at is not None:
            log.warning("taking over the expired lease %s: %s", self.name, data.decode()[:200])
        return self.storage.replace_if(self.name, body, tag) and self._confirm(body)

    def renew(self) -> bool:
        """Extend the lease held; False, and no longer held, if another has taken it over."""
        if self._tag is None:
            return False
        body = self._body(self.clock() + self.lease_s)
        if self.storage.replace_if(self.name, body, self._tag) and self._confirm(body):
            return True
        self._tag = None
        log.error("lost the lease %s: another holder took it over", self.name)
        return False

    def release(self) -> None:
        """Expire the lease now, if still held, so that the next run need not wait for it."""
        if self._tag is not None:
            self.storage.replace_if(self.name, self._body(0.0), self._tag)
            self._tag = None

    @contextmanager
    def renewing(self) -> Iterator["Lease"]:
        """Renew the held lease every third of `lease_s` until the block ends, then release.

        A renewal that fails because the store is unreachable is tried again at the next
        beat; one that finds the lease taken over ends the renewals (`held` turns False).
        """
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease_s / 3):
                try:
                    if not self.renew():
                        return
                except OSError as exc:
                    log.warning("renewing the lease %s failed, retrying: %s", self.name, exc)

        renewer = threading.Thread(target=beat, name=f"lease {self.name}", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            done.set()
            renewer.join()
            try:
                self.release()
            except OSError as exc:  # it expires by itself
                log.warning("releasing the lease %s failed: %s", self.name, exc)


def _expiry(data: bytes) -> float | None:
    """The lease's expiry, or None if the object is not a lease (then it may be replaced)."""
    try:
        return float(json.loads(data)["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None


def lease_for(lock_path: Location, storage: StorageSettings | None = None) -> Lease | None:
    """The lease of a lock path on object storage (`s3://...`), or None for a local path."""
    folder, _, name = os.fspath(lock_path).rpartition("/")
    if not folder:
        return None
    store = Storage.from_url(folder, storage)
    if store.is_local:
        return None
    assert storage is not None  # an object store was opened, so its settings were given
    return Lease(store, name, storage.lease_s)


def run_locked(
    job: Callable[[], object],
    lock_path: Location,
    storage: StorageSettings | None = None,
    wait: bool = False,
) -> bool:
    """Run `job` under the lock; returns False (without running) if another run holds it,
    or with `wait`, waits until the lock is free.

    `lock_path` is a local file (an OS file lock) or an `s3://` URL (a `Lease` there, on the
    store `storage` describes).
    """
    lease = lease_for(lock_path, storage)
    if lease is not None:
        if not lease.acquire():
            if not wait:
                return False
            log.info("waiting for the lock %s, held by another run", lock_path)
            while not lease.acquire():
                time.sleep(min(1.0, lease.lease_s / 10))
        with lease.renewing():
            job()
        return True
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            return False
        log.info("waiting for the lock %s, held by another run", lock_path)
        lock.acquire()
    try:
        job()
    finally:
        lock.release()
    return True


class Scheduler:
    """Calls `job` when due; a failure is retried after `backoff_s`, doubling to `max_backoff_s`.

    `lock_path` and `signal_dir` are local paths or `s3://` URLs on the store `storage`
    describes (None: read from the environment).

    An exception of a type in `skip_errors` means the job had nothing to do (say, nothing new
    to train on): the run is logged as skipped, with the reason, and is not retried early.

    `heartbeat` is beaten at every turn of the wait loop, and before each run with the bound
    `run_stall_s`: a run holds the loop for as long as it lasts.

    Attributes
    ----------
    history
        Every run so far.
    next_at
        When the next run is due on the cadence (epoch seconds); drift may come first.
    """

    def __init__(
        self,
        job: Callable[[], object],
        cadence: Cadence,
        lock_path: Location,
        signal_dir: Location | None = None,
        backoff_s: float = 5.0,
        max_backoff_s: float = 300.0,
        run_at_start: bool = True,
        skip_errors: tuple[type[Exception], ...] = (),
        storage: StorageSettings | None = None,
        heartbeat: Heartbeat | None = None,
        run_stall_s: float | None = None,
    ) -> None:
        self.job = job
        self.heartbeat = heartbeat
        self.run_stall_s = run_stall_s
        self.storage = storage
        self.skip_errors = skip_errors
        self.cadence = cadence
        self.lock_path = lock_path
        self.signal_dir = signal_dir
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.history: list[RunRecord] = []
        now = time.time()
        self.next_at = now if run_at_start else cadence.next_after(now)
        self._failures = 0
        self._last_started = 0.0

    def _due(self, now: float) -> str | None:
        if now >= self.next_at:
            return "retry" if self._failures else "schedule"
        raised = drift_raised_at(self.signal_dir, self.storage) if self.signal_dir else None
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
        if self.heartbeat is not None:
            self.heartbeat.beat(self.run_stall_s, doing=f"a retrain ({reason})")
        started = time.monotonic()
        try:
            if not run_locked(self.job, self.lock_path, self.storage):
                record.ok, record.error = False, "another run holds the lock"
        except self.skip_errors as exc:
            record.skipped = str(exc)
        except Exception as exc:  # a failed run must not end the scheduler
            record.ok, record.error = False, f"{type(exc).__name__}: {exc}"
        record.seconds = time.monotonic() - started
        if record.ok:
            self._failures = 0
            self.next_at = self.cadence.next_after(now)
            if record.skipped:
                log.info("retrain (%s) skipped: %s", reason, record.skipped)
            else:
                log.info("retrain (%s) finished", reason)
        else:
            self._failures += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
            self.next_at = min(now + delay, self.cadence.next_after(now))
            wait_s = self.next_at - now
            log.error("retrain (%s) failed, retrying in %.0fs: %s", reason, wait_s, record.error)
        self.history.append(record)
        return record

    def run(self, stop: Event, max_runs: int | None = None, poll_s: float = 1.0) -> None:
        """Tick until `stop` is set or `max_runs` runs have succeeded."""
        while not stop.is_set():
            if self.heartbeat is not None:
                self.heartbeat.beat()
            self.tick(time.time())
            if max_runs is not None and sum(r.ok for r in self.history) >= max_runs:
                return
            stop.wait(poll_s)
