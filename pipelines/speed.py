"""The speed layer: learn from the query stream one event at a time, prequentially.

For each labelled event: predict with the speed model (and the batch champion, when one
exists), score those predictions and the blend, then learn. Progress is made durable as
snapshots; a restart resumes from the newest snapshot's offsets, so after kill -9 no event is
learnt twice or skipped. When a new batch champion appears, the model is rebuilt from the
champion's cut-off (Kappa-style reprocessing) and the layer goes on live.

The model is chosen by configuration (`SpeedSettings.model`, a `models.model_spec.ModelSpec`)
and checked against River's contract before the first event. Each snapshot's header records
the spec; a worker started with another spec than its newest snapshot's (or whose snapshot
cannot be used) does not resume it, but re-bases on the current champion's cut-off, or on the
stream's start without a champion, and replays forward.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Event

from river import base

from common.settings import SpeedSettings
from models.blend import HedgeBlender
from models.contracts import check_speed_model
from models.model_spec import ModelSpec
from models.prequential import ViewScores, prequential_step
from models.registry import ChampionModel
from models.snapshot import SnapshotHeader, SnapshotStore, SnapshotUnreadable, SpeedSnapshot
from models.speed_model import build_speed_model
from models.texts import TextMemory
from pipelines.speed_loop import (
    DriftWatch,
    RegistrationSchedule,
    SnapshotSchedule,
    SpeedReport,
)
from streams.consumer import Consumed, EventReader

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
        state = cls.fresh(
            window, snapshot.base_version, snapshot.base_offsets, lambda: snapshot.model
        )
        state.blender = snapshot.blender
        state.events_learnt = snapshot.events_learnt
        state.learnt_texts = snapshot.learnt_texts
        return state

    def metrics(self) -> dict[str, float]:
        batch_weight, speed_weight = self.blender.layer_weights
        figures = {
            "events_learnt": float(self.events_learnt),
            "unlabelled_seen": float(self.unlabelled_seen),
            "batch_weight": batch_weight,
            "speed_weight": speed_weight,
            "batch_weight_on_batch_trained_texts": self.blender.weights_for(batch_seen=True)[0],
        }
        return figures | self.scores.figures()


class SpeedLayer:
    """The prequential loop over an `EventReader`, with snapshots and champion re-basing.

    The loop only orders the work; its collaborators decide when to snapshot
    (`SnapshotSchedule`), when to register a snapshot (`RegistrationSchedule`), watch the
    champion's error (`DriftWatch`) and report (`SpeedReport`), so each can be changed and
    tested alone.

    Parameters
    ----------
    reader
        The stream, positioned by the layer (from the newest snapshot, if any).
    store
        Where snapshots are saved and the newest is read back on start.
    settings
        The model's spec, the scoring window, and the snapshot, report, registration and
        drift-signal settings.
    current_champion
        Returns the current champion (loaded), or None; called on every poll, so it must be
        cheap (see `models.champion_watch.ChampionWatch.loaded`).
    report
        Called as `report(metrics, step)` every `settings.metrics_every_s` seconds.
    register
        Called as `register(path, snapshot)` with a snapshot just made durable, when
        `RegistrationSchedule` says so; it must return at once (see
        `pipelines.tracking.SnapshotRegistrar`).

    Raises
    ------
    ModelSpecError
        The configured factory cannot be imported or called.
    ModelContractError
        It builds something that is not a River classifier.

    Attributes
    ----------
    spec
        The configured model: every fresh model of a start or a re-base is built from it.
    state
        The model, blender, counts and scores a snapshot captures.
    champion
        The champion the layer predicts with now, or None.
    rebase_reason
        Why the layer did not resume from its newest snapshot, until `run` (or a caller) has
        re-based; None when it resumed or started on an empty store.
    schedule, registration, drift, reporter
        The collaborators above.
    """

    def __init__(
        self,
        reader: EventReader,
        store: SnapshotStore,
        settings: SpeedSettings,
        current_champion: Callable[[], ChampionModel | None] = lambda: None,
        report: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
        register: Callable[[str, SpeedSnapshot], None] | None = None,
    ) -> None:
        self.spec = ModelSpec.parse(settings.model, settings.model_params)
        first_model = self.build_model()  # a wrong model fails here, before any event
        self.reader = reader
        self.store = store
        self.settings = settings
        self.current_champion = current_champion
        self.register = register
        self.champion: ChampionModel | None = None
        self.rebase_reason: str | None = None
        snapshot = self._resumable_snapshot()
        if snapshot is None:
            self.state = SpeedState.fresh(settings.window, build_model=lambda: first_model)
        else:
            self.state = SpeedState.from_snapshot(snapshot, settings.window)
            reader.seek(snapshot.offsets)
            log.info("resumed from snapshot %s at %s", snapshot.sequence, snapshot.offsets)
        learnt = self.state.events_learnt
        self.schedule = SnapshotSchedule(settings, learnt, reader.positions)
        self.registration = RegistrationSchedule(settings)
        self.drift = DriftWatch(settings.signal_dir)
        self.reporter = SpeedReport(settings, report, learnt)

    def build_model(self) -> base.Classifier:
        """A fresh model from the configured spec, checked against River's contract."""
        return check_speed_model(self.spec.build(), f"the speed model {self.spec.factory}")

    def _resumable_snapshot(self) -> SpeedSnapshot | None:
        """The newest snapshot if the layer can go on from it; else None, and why it cannot
        in `rebase_reason` (a snapshot of another model, or one that cannot be used)."""
        try:
            snapshot = self.store.latest()
        except SnapshotUnreadable as exc:
            self.rebase_reason = str(exc)
            return None
        if snapshot is None:
            return None
        if snapshot.header.model_spec != self.spec.as_record():
            self.rebase_reason = (
                f"the speed model changed from {snapshot.header.describe_model()} "
                f"(snapshot {snapshot.sequence}) to {self.spec.describe()}"
            )
            return None
        return snapshot

    def rebase(
        self, offsets: dict[int, int], base_version: str | None, reason: str | None = None
    ) -> None:
        """Start a fresh model from `offsets` and replay forward from there."""
        if reason is None:
            log.info("re-basing on version %s from offsets %s", base_version, offsets)
        else:
            log.warning(
                "re-basing on version %s from offsets %s: %s", base_version, offsets, reason
            )
        self.rebase_reason = None
        self.state = SpeedState.fresh(
            self.settings.window, base_version, offsets, build_model=self.build_model
        )
        self.drift = DriftWatch(self.settings.signal_dir)  # a new champion's error starts anew
        self.reader.seek(offsets)
        self.schedule.restart_count()
        self.reporter.restart_count()
        self.registration.rebased()

    def rebase_on_current_champion(self, reason: str | None = None) -> None:
        """Re-base on the current champion's cut-off, or on every partition's start when there
        is no champion."""
        self.champion = champion = self.current_champion()
        if champion is None:
            self.rebase({}, None, reason)
        else:
            self.rebase(champion.info.cutoff_offsets, champion.info.version, reason)

    def _follow_champion(self) -> None:
        """Take up a new champion, re-basing on its cut-off unless the model is based on it."""
        champion = self.current_champion()
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
                self.drift.update(float(not batch_right), state.events_learnt)
            state.events_learnt += 1
            self.reporter.learnt(item.event.ts.timestamp())

    def metrics(self) -> dict[str, float]:
        """The state's figures with the drift detections since the start or last re-base."""
        return self.state.metrics() | {"drift_detections": float(self.drift.detections)}

    def snapshot_of_state(self) -> SpeedSnapshot:
        """The current state as a snapshot, positioned after the last event handed out."""
        return SpeedSnapshot(
            model=self.state.model,
            blender=self.state.blender,
            offsets=dict(self.reader.positions),
            events_learnt=self.state.events_learnt,
            metrics=self.metrics(),
            base_version=self.state.base_version,
            base_offsets=self.state.base_offsets,
            learnt_texts=self.state.learnt_texts,
            header=SnapshotHeader.current(self.spec),
        )

    def make_progress_durable(self) -> SpeedSnapshot:
        """Dead letters first, then the snapshot, then the commit: each is durable before the
        next step claims it, so a crash between steps loses or repeats no event. The snapshot
        is then handed to `register` when a registration is due."""
        self.reader.flush_dead_letters()
        snapshot = self.snapshot_of_state()
        path = self.store.save(snapshot)
        self.reporter.made_durable()
        self.reader.commit(snapshot.offsets)
        self.schedule.taken(self.state.events_learnt, snapshot.offsets)
        if self.register is not None and self.registration.due():
            self.registration.registered()
            try:
                self.register(path, snapshot)
            except Exception as exc:  # the registry's copy is for people; the stream goes on
                log.warning("could not hand snapshot %s over for registration: %s", path, exc)
        return snapshot

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_events: int | None = None
    ) -> None:
        """Loop until `stop` is set, the stream has been idle for `idle_exit_s`, or
        `max_events` have been learnt; always ends with its progress durable and a report.

        A layer that could not resume its newest snapshot (`rebase_reason`) re-bases first."""
        if self.rebase_reason is not None:
            self.rebase_on_current_champion(self.rebase_reason)
        idle_since = time.monotonic()
        while not stop.is_set():
            self._follow_champion()
            most = self.schedule.records_to_poll(self.state.events_learnt)
            consumed = self.reader.poll(timeout_ms=200, max_records=most)
            if consumed:
                idle_since = time.monotonic()
                self.learn(consumed)
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if self.schedule.due(self.state.events_learnt, self.reader.positions):
                self.make_progress_durable()
            self._report(force=False)
            if max_events is not None and self.state.events_learnt >= max_events:
                break
        if self.schedule.unsaved(self.reader.positions):
            self.make_progress_durable()
        self._report(force=True)

    def _report(self, force: bool) -> None:
        if force or self.reporter.due():
            self.reporter.send(self.state.events_learnt, self.metrics, self.reader.lag)
