"""The speed layer: learn from the query stream one event at a time, prequentially.

For each labelled event: predict with the speed model (and the batch champion, when one
exists), score those predictions and the blend, then learn. Progress is made durable as
snapshots; a restart resumes from the newest snapshot's offsets, so after kill -9 no event is
learnt twice or skipped. When a new batch champion appears, the model is rebuilt from the
champion's cut-off (Kappa-style reprocessing) and the layer goes on live.
"""

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Event

import numpy as np
from river import base, drift

from common.settings import SpeedSettings
from models.blend import HedgeBlender
from models.prequential import ViewScores, prequential_step
from models.registry import ChampionModel
from models.snapshot import SnapshotStore, SpeedSnapshot
from models.speed_model import build_speed_model
from models.texts import TextMemory
from pipelines.signals import raise_drift_signal
from streams.consumer import MAX_POLL_RECORDS, Consumed, EventReader

log = logging.getLogger(__name__)


@dataclass
class SpeedState:
    """What a snapshot captures, plus the scores that go with it."""

    model: base.Classifier
    blender: HedgeBlender
    events_learnt: int = 0
    unlabelled_seen: int = 0
    base_version: str | None = None
    base_offsets: dict[int, int] = field(default_factory=dict)
    scores: ViewScores = field(default_factory=lambda: ViewScores.with_window(1000))
    drift_detections: int = 0
    learnt_texts: TextMemory = field(default_factory=TextMemory)

    @classmethod
    def fresh(
        cls,
        window: int,
        base_version=None,
        base_offsets=None,
        build_model: Callable[[], base.Classifier] = build_speed_model,
    ) -> "SpeedState":
        return cls(
            model=build_model(),
            blender=HedgeBlender(),
            base_version=base_version,
            base_offsets=dict(base_offsets or {}),
            scores=ViewScores.with_window(window),
        )

    @classmethod
    def from_snapshot(cls, snapshot: SpeedSnapshot, window: int) -> "SpeedState":
        state = cls.fresh(window, snapshot.base_version, snapshot.base_offsets)
        state.model = snapshot.model
        state.blender = snapshot.blender
        state.events_learnt = snapshot.events_learnt
        state.learnt_texts = snapshot.learnt_texts
        return state

    def metrics(self) -> dict[str, float]:
        batch_weight, speed_weight = self.blender.weights
        figures = {
            "events_learnt": float(self.events_learnt),
            "unlabelled_seen": float(self.unlabelled_seen),
            "batch_weight": batch_weight,
            "speed_weight": speed_weight,
            "batch_weight_on_batch_trained_texts": self.blender.weights_for(batch_seen=True)[0],
            "drift_detections": float(self.drift_detections),
        }
        return figures | self.scores.figures()


class SpeedLayer:
    """The prequential loop over an `EventReader`, with snapshots and champion re-basing.

    `champion_source` returns the current champion (loaded), or None; it is called on every
    poll, so it must be cheap (see `pipelines.jobs.ChampionPoller`). `build_model` makes the
    fresh speed model of a start or a re-base.
    """

    def __init__(
        self,
        reader: EventReader,
        store: SnapshotStore,
        settings: SpeedSettings,
        champion_source: Callable[[], ChampionModel | None] = lambda: None,
        report: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
        build_model: Callable[[], base.Classifier] = build_speed_model,
    ) -> None:
        self.build_model = build_model
        self.reader = reader
        self.store = store
        self.settings = settings
        self.champion_source = champion_source
        self.report = report
        self.champion: ChampionModel | None = None
        self.detector = drift.ADWIN()
        # Freshness of the most recent events only: kept for ever it grew by every event.
        self.freshness_s: deque[float] = deque(maxlen=settings.freshness_window)
        self._pending_ts: list[float] = []
        snapshot = store.latest()
        if snapshot is None:
            self.state = SpeedState.fresh(settings.window, build_model=build_model)
        else:
            self.state = SpeedState.from_snapshot(snapshot, settings.window)
            reader.seek(snapshot.offsets)
            log.info("resumed from snapshot %s at %s", snapshot.sequence, snapshot.offsets)
        self._saved_offsets = dict(reader.positions)
        self._last_snapshot_at = time.monotonic()
        self._events_at_snapshot = self.state.events_learnt
        self._events_at_report = self.state.events_learnt
        self._last_report_at = time.monotonic()

    def rebase(self, offsets: dict[int, int], base_version: str | None) -> None:
        """Start a fresh model from `offsets` and replay forward from there."""
        log.info("re-basing on version %s from offsets %s", base_version, offsets)
        self.state = SpeedState.fresh(
            self.settings.window, base_version, offsets, build_model=self.build_model
        )
        self.detector = drift.ADWIN()  # a new champion's error starts a new history
        self.reader.seek(offsets)
        self._pending_ts.clear()
        self._events_at_snapshot = self._events_at_report = 0  # the count starts again

    def _check_champion(self) -> None:
        champion = self.champion_source()
        if champion is None or champion is self.champion:
            return
        self.champion = champion
        if champion.info.version != self.state.base_version:
            self.rebase(champion.info.cutoff_offsets, champion.info.version)

    def learn(self, consumed: list[Consumed]) -> None:
        """Predict, score and learn each event in order."""
        state = self.state
        champion = self.champion
        labelled = [c for c in consumed if c.event.intent is not None]
        texts = [c.event.text for c in labelled]
        batch_rows = iter(champion.predict_proba_matrix(texts) if champion else ())
        for item in consumed:
            intent = item.event.intent
            if intent is None:
                state.unlabelled_seen += 1
                continue
            row = next(batch_rows, None)
            batch = (champion.classes, row) if champion is not None and row is not None else None
            batch_right = prequential_step(
                state.model,
                state.blender,
                state.scores,
                item.event.text,
                intent,
                batch,
                speed_texts=state.learnt_texts,
                batch_texts=champion.training_texts if champion else None,
            )
            if batch_right is not None:
                self._watch_drift(float(not batch_right))
            state.events_learnt += 1
            self._pending_ts.append(item.event.ts.timestamp())

    def _watch_drift(self, error: float) -> None:
        """Watch the champion's prequential error, since that is what a retrain fixes; signal
        only a rise (a falling error rate is good news, not a reason to retrain)."""
        before = self.detector.estimation
        self.detector.update(error)
        if self.detector.drift_detected and self.detector.estimation > before:
            self.state.drift_detections += 1
            log.warning(
                "drift: error rate rose to %.3f after %d events",
                self.detector.estimation,
                self.state.events_learnt,
            )
            raise_drift_signal(
                self.settings.signal_dir,
                {"events_learnt": self.state.events_learnt, "error_rate": self.detector.estimation},
            )

    def snapshot_of_state(self) -> SpeedSnapshot:
        """The current state as a snapshot, positioned after the last event handed out."""
        return SpeedSnapshot(
            model=self.state.model,
            blender=self.state.blender,
            offsets=dict(self.reader.positions),
            events_learnt=self.state.events_learnt,
            metrics=self.state.metrics(),
            base_version=self.state.base_version,
            base_offsets=self.state.base_offsets,
            learnt_texts=self.state.learnt_texts,
        )

    def snapshot(self) -> SpeedSnapshot:
        """Make progress durable: dead letters first, then the snapshot, then the commit."""
        self.reader.flush_dead_letters()
        snapshot = self.snapshot_of_state()
        self.store.save(snapshot)
        now = time.time()
        self.freshness_s.extend(now - ts for ts in self._pending_ts)
        self._pending_ts.clear()
        self.reader.commit(snapshot.offsets)
        self._saved_offsets = snapshot.offsets
        self._last_snapshot_at = time.monotonic()
        self._events_at_snapshot = self.state.events_learnt
        return snapshot

    def _records_to_snapshot(self) -> int:
        """Poll no further than the next snapshot, so snapshots come every N events, not every
        N rounded up to a whole poll."""
        learnt_since = self.state.events_learnt - self._events_at_snapshot
        return max(1, min(MAX_POLL_RECORDS, self.settings.snapshot_every_events - learnt_since))

    def _snapshot_due(self) -> bool:
        if self.reader.positions == self._saved_offsets:
            return False
        events = self.state.events_learnt - self._events_at_snapshot
        elapsed = time.monotonic() - self._last_snapshot_at
        return (
            events >= self.settings.snapshot_every_events
            or elapsed >= self.settings.snapshot_every_s
        )

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_events: int | None = None
    ) -> None:
        """Loop until `stop` is set, the stream has been idle for `idle_exit_s`, or
        `max_events` have been learnt; always ends with a snapshot."""
        idle_since = time.monotonic()
        while not stop.is_set():
            self._check_champion()
            consumed = self.reader.poll(timeout_ms=200, max_records=self._records_to_snapshot())
            if consumed:
                idle_since = time.monotonic()
                self.learn(consumed)
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if self._snapshot_due():
                self.snapshot()
            self._maybe_report()
            if max_events is not None and self.state.events_learnt >= max_events:
                break
        if self.reader.positions != self._saved_offsets:
            self.snapshot()
        self._maybe_report(force=True)

    def _maybe_report(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_report_at < self.settings.metrics_every_s:
            return
        elapsed = time.monotonic() - self._last_report_at
        self._last_report_at = time.monotonic()
        metrics = self.state.metrics()
        metrics["events_per_s"] = (self.state.events_learnt - self._events_at_report) / max(
            elapsed, 1e-9
        )
        self._events_at_report = self.state.events_learnt
        lag = self.reader.lag()
        if lag is not None:
            metrics["lag"] = float(lag)
        if self.freshness_s:
            metrics["freshness_p95_s"] = float(np.percentile(self.freshness_s, 95))
        try:
            self.report(metrics, self.state.events_learnt)
        except Exception as exc:  # metrics are for people; the stream goes on without them
            log.warning("could not report metrics: %s", exc)
