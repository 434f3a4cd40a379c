"""The speed layer's collaborators: when a snapshot is due, when one is registered in MLflow,
whether the champion's error has drifted, and what the layer reports.

Each has one job and no Kafka, so `pipelines.speed.layer.SpeedLayer` stays a short loop and each
part can be tested alone; the clocks are parameters for the same reason.
"""

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from river import drift

from common.settings import SpeedSettings, StorageSettings
from common.storage import Location
from pipelines.signals import raise_drift_signal
from streams.consumer import MAX_POLL_RECORDS

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class SnapshotSchedule:
    """Says when the next snapshot is due: every `snapshot_every_events` events learnt or every
    `snapshot_every_s` seconds, whichever comes first, and never while the reader stands where
    the last snapshot left it.

    Snapshots bound both the events a restart learns again and how stale serving's speed model
    gets; a snapshot of unchanged offsets would only rewrite the same progress.

    Parameters
    ----------
    settings
        Its `snapshot_every_events` and `snapshot_every_s` set the cadence.
    events_learnt
        The worker's count of events learnt when the schedule starts.
    offsets
        The reader's positions when the schedule starts, durable already (of every topic it
        reads: any keys, compared only).
    clock
        Monotonic seconds; tests pass their own.

    Attributes
    ----------
    saved_offsets
        The positions the last snapshot holds.
    """

    def __init__(
        self,
        settings: SpeedSettings,
        events_learnt: int,
        offsets: Mapping[Any, int],
        clock: Clock = time.monotonic,
    ) -> None:
        self.every_events = settings.snapshot_every_events
        self.every_s = settings.snapshot_every_s
        self.clock = clock
        self.saved_offsets = dict(offsets)
        self._events_at_snapshot = events_learnt
        self._taken_at = clock()

    def records_to_poll(self, events_learnt: int) -> int:
        """How many records the next poll may bring: no further than the next snapshot, so
        snapshots come every N events, not every N rounded up to a whole poll."""
        learnt_since = events_learnt - self._events_at_snapshot
        return max(1, min(MAX_POLL_RECORDS, self.every_events - learnt_since))

    def unsaved(self, positions: Mapping[Any, int]) -> bool:
        """Whether the reader has moved past what the last snapshot holds."""
        return positions != self.saved_offsets

    def due(self, events_learnt: int, positions: Mapping[Any, int]) -> bool:
        """Whether to snapshot now, with the layer at `events_learnt` and the reader at
        `positions`."""
        if not self.unsaved(positions):
            return False
        events = events_learnt - self._events_at_snapshot
        elapsed = self.clock() - self._taken_at
        return events >= self.every_events or elapsed >= self.every_s

    def taken(self, events_learnt: int, offsets: Mapping[Any, int]) -> None:
        """A snapshot of `offsets` at `events_learnt` is durable: the next is counted from it."""
        self.saved_offsets = dict(offsets)
        self._taken_at = self.clock()
        self._events_at_snapshot = events_learnt

    def failed(self, events_learnt: int) -> None:
        """A snapshot could not be written (the store is down): the next attempt is a whole
        interval away, and the progress since the last durable one stays unsaved."""
        self._taken_at = self.clock()
        self._events_at_snapshot = events_learnt


class RegistrationSchedule:
    """Says when the speed model is to be registered as a version in MLflow: at the first
    durable snapshot after each re-base, and then every `register_every_s` seconds (0: after
    re-bases only).

    A re-base starts a new model, so its first snapshot is the one that says which model and
    which cut-off the speed layer now serves; the interval keeps the registry's copy of the
    model that keeps learning recent.

    Parameters
    ----------
    settings
        Its `register_every_s` sets the interval.
    clock
        Monotonic seconds; tests pass their own.
    """

    def __init__(self, settings: SpeedSettings, clock: Clock = time.monotonic) -> None:
        self.every_s = settings.register_every_s
        self.clock = clock
        self._after_rebase = False
        self._registered_at = clock()

    def rebased(self) -> None:
        """A re-base happened: the next snapshot is registered."""
        self._after_rebase = True

    def due(self) -> bool:
        """Whether to register the snapshot just made durable."""
        if self._after_rebase:
            return True
        return self.every_s > 0 and self.clock() - self._registered_at >= self.every_s

    def registered(self) -> None:
        """A snapshot was handed over for registration: the interval starts again."""
        self._after_rebase = False
        self._registered_at = self.clock()


class DriftWatch:
    """Watches the champion's prequential error with River's ADWIN and raises the drift signal
    (`pipelines.signals.raise_drift_signal`) when the error rate rises.

    The champion's error is what a retrain fixes, so it is what the batch scheduler hears
    about; a falling error rate is good news, not a reason to retrain, so only a rise counts.

    Parameters
    ----------
    signal_dir
        The folder or URL the signal is written to, shared with the batch scheduler.
    storage
        The object store of an `s3://` `signal_dir`.

    Attributes
    ----------
    detections
        The rises detected since this watch began (when the layer took up the champion).
    """

    def __init__(self, signal_dir: Location, storage: StorageSettings | None = None) -> None:
        self.signal_dir = signal_dir
        self.storage = storage
        self.detector = drift.ADWIN()
        self.detections = 0

    @property
    def error_rate(self) -> float:
        """ADWIN's estimate of the current error rate."""
        return float(self.detector.estimation)

    def update(self, error: float, events_learnt: int) -> bool:
        """Add the champion's error on one event (1.0 wrong, 0.0 right), with the layer at
        `events_learnt`; True if it revealed a rise, which is then signalled."""
        before = self.detector.estimation
        self.detector.update(error)
        if not (self.detector.drift_detected and self.detector.estimation > before):
            return False
        self.detections += 1
        log.warning(
            "drift: error rate rose to %.3f after %d events", self.error_rate, events_learnt
        )
        details = {"events_learnt": events_learnt, "error_rate": self.detector.estimation}
        try:
            raise_drift_signal(self.signal_dir, details, self.storage)
        except OSError as exc:  # the store is down: the stream goes on, the next rise retries
            log.warning("could not raise the drift signal in %s: %s", self.signal_dir, exc)
        return True


class SpeedReport:
    """Hands the speed layer's metrics to `report` every `metrics_every_s` seconds, with the
    rate since the last report, the lag (in all and per partition), the age of the last durable
    snapshot and the freshness of the latest events; the last of them stay in `latest`, which
    the job's `/metrics` reads.

    Freshness is the time from an event's timestamp to the snapshot that made it durable. Only
    the latest `freshness_window` events are kept, so memory and the percentiles' cost stay
    bounded however long the layer runs. A failing `report` is logged, not raised: metrics are
    for people, and the stream goes on without them.

    Parameters
    ----------
    settings
        Its `metrics_every_s` sets the cadence and `freshness_window` the events kept.
    report
        Called as `report(metrics, step)`, the step being the events learnt.
    events_learnt
        The layer's count when reporting starts, so the first rate covers only new events.
    clock
        Monotonic seconds, for the cadence and the rate; tests pass their own.
    wall_clock
        Epoch seconds, to compare with the events' timestamps.

    Attributes
    ----------
    freshness_s
        Seconds from event to durable snapshot, for the latest `freshness_window` events.
    latest
        The figures of the last report (empty before the first).
    """

    FRESHNESS_PERCENTILES = (50, 95, 99)

    def __init__(
        self,
        settings: SpeedSettings,
        report: Callable[[dict[str, float], int], None],
        events_learnt: int = 0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.every_s = settings.metrics_every_s
        self.report = report
        self.clock = clock
        self.wall_clock = wall_clock
        self.freshness_s: deque[float] = deque(maxlen=settings.freshness_window)
        self._awaiting_ts: list[float] = []
        self._durable_at: float | None = None
        self.latest: dict[str, float] = {}
        self._events_at_report = events_learnt
        self._reported_at = clock()

    def learnt(self, ts: float) -> None:
        """Note an event just learnt (its timestamp, epoch seconds), not yet in a snapshot."""
        self._awaiting_ts.append(ts)

    def made_durable(self) -> None:
        """The events noted so far are in a saved snapshot now: measure their freshness."""
        now = self._durable_at = self.wall_clock()
        self.freshness_s.extend(now - ts for ts in self._awaiting_ts)
        self._awaiting_ts.clear()

    def rebased(self) -> None:
        """A re-base: the events noted and not yet durable will be learnt again, so they are
        not measured now."""
        self._awaiting_ts.clear()

    def freshness_percentiles_s(self) -> dict[int, float]:
        """Percentile -> seconds of `freshness_s` (`FRESHNESS_PERCENTILES`), or nothing before
        any snapshot held an event."""
        if not self.freshness_s:
            return {}
        values = np.percentile(self.freshness_s, self.FRESHNESS_PERCENTILES)
        return dict(zip(self.FRESHNESS_PERCENTILES, map(float, values), strict=True))

    def due(self) -> bool:
        """Whether `metrics_every_s` have passed since the last report."""
        return self.clock() - self._reported_at >= self.every_s

    def send(
        self,
        events_learnt: int,
        figures: Callable[[], dict[str, float]],
        lag: Callable[[], Mapping[int, int] | None],
    ) -> dict[str, float]:
        """Report `figures()` with the rate since the last report, `lag()` (partition -> events
        behind; when known, as `lag` and `lag_p<partition>`), the snapshot's age and the
        freshness; returns what was reported.

        The interval is measured before `lag()` is asked, since that may wait on the broker.
        """
        now = self.clock()
        elapsed, self._reported_at = now - self._reported_at, now
        metrics = figures()
        metrics["events_per_s"] = (events_learnt - self._events_at_report) / max(elapsed, 1e-9)
        self._events_at_report = events_learnt
        behind = lag()
        if behind is not None:
            metrics["lag"] = float(sum(behind.values()))
            metrics |= {f"lag_p{p}": float(n) for p, n in sorted(behind.items())}
        if self._durable_at is not None:
            metrics["snapshot_age_s"] = self.wall_clock() - self._durable_at
        for percentile, seconds in self.freshness_percentiles_s().items():
            metrics[f"freshness_p{percentile}_s"] = seconds
        self.latest = metrics
        try:
            self.report(metrics, events_learnt)
        except Exception as exc:  # metrics are for people; the stream goes on without them
            log.warning("could not report metrics: %s", exc)
        return metrics
