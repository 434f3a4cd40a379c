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

`GroupSpeedLayer` is the same loop for one of several workers of a consumer group: it keeps one
`SpeedState` per partition it owns, snapshotted per partition, so a partition's model moves with
the partition and the partitions' models add up to the model of the whole stream.
"""

import functools
import logging
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from threading import Event

from river import base

from common.settings import SpeedSettings, StorageSettings
from models.blend import HedgeBlender
from models.contracts import check_speed_model
from models.model_spec import ModelSpec
from models.prequential import BatchAnswer, ViewScores, prequential_step
from models.registry import ChampionModel
from models.snapshot import (
    SnapshotHeader,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
    mergeable,
)
from models.speed_model import build_speed_model
from models.texts import TextMemories, TextMemory
from pipelines.speed.schedules import (
    DriftWatch,
    RegistrationSchedule,
    SnapshotSchedule,
    SpeedReport,
)
from streams.consumer import Consumed, EventReader, GroupReader

log = logging.getLogger(__name__)


def champion_answers(
    champion: ChampionModel | None, consumed: list[Consumed]
) -> Iterator[tuple[Consumed, BatchAnswer | None]]:
    """Each event of a poll with the champion's answer for it, from one vectorised call over
    the poll's labelled events; None for an unlabelled event, or when there is no champion."""
    labelled = [c.event.text for c in consumed if c.event.intent is not None]
    rows = iter(champion.predict_proba_matrix(labelled) if champion else ())
    for item in consumed:
        row = next(rows, None) if item.event.intent is not None else None
        yield item, (champion.classes, row) if champion is not None and row is not None else None


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
    heartbeat
        Called once a turn of the loop, for the job's liveness check.

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
        storage: StorageSettings | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = ModelSpec.parse(settings.model, settings.model_params)
        first_model = self.build_model()  # a wrong model fails here, before any event
        self.reader = reader
        self.store = store
        self.settings = settings
        self.current_champion = current_champion
        self.register = register
        self.storage = storage
        self.heartbeat = heartbeat
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
        self.drift = DriftWatch(settings.signal_dir, storage)
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
        # A new champion's error starts anew.
        self.drift = DriftWatch(self.settings.signal_dir, self.storage)
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
        for item, batch in champion_answers(champion, consumed):
            intent = item.event.intent
            if intent is None:
                state.unlabelled_seen += 1
                continue
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

    def make_progress_durable(self) -> SpeedSnapshot | None:
        """Dead letters first, then the snapshot, then the commit: each is durable before the
        next step claims it, so a crash between steps loses or repeats no event. The snapshot
        is then handed to `register` when a registration is due.

        A store that cannot be written (down, or unreachable) is a warning: the layer goes on
        learning and tries again a snapshot interval later; None is returned."""
        self.reader.flush_dead_letters()
        snapshot = self.snapshot_of_state()
        try:
            path = self.store.save(snapshot)
        except OSError as exc:
            log.warning("snapshot not saved, retrying in %.0f s: %s", self.schedule.every_s, exc)
            self.schedule.failed(self.state.events_learnt)
            return None
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
            self.heartbeat()
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
            self.reporter.send(self.state.events_learnt, self.metrics, self.reader.partition_lag)


class GroupSpeedLayer:
    """The prequential loop of one worker of a consumer group, with one state per partition.

    Each partition it owns has its own `SpeedState` (model, blender, learnt texts, events
    learnt, scores), resumed from that partition's newest snapshot when the group assigns it
    (or re-based on the champion's cut-off, or the partition's start, as `SpeedLayer` does) and
    made durable when the group revokes it: dead letters flushed, the partition's snapshot
    saved, its offset committed. Every labelled event is learnt by its partition's model only,
    so the per-partition snapshots add up exactly to one model of the whole topic.

    For a model that merges (`models.snapshot.mergeable`), the worker predicts each event with
    the view: its own partitions' live models added to the other partitions' newest snapshots,
    read again every `settings.peer_refresh_s`; the view learns each event with its partition's
    model, so it stays that sum in between. A model that does not merge predicts with its
    partition's model alone. Snapshots are not registered in MLflow in this mode.

    Parameters
    ----------
    reader
        The group member; the layer installs its callbacks.
    store
        The shared snapshot folder (one snapshot per partition).
    settings, current_champion, report, heartbeat
        As for `SpeedLayer`.
    """

    def __init__(
        self,
        reader: GroupReader,
        store: SnapshotStore,
        settings: SpeedSettings,
        current_champion: Callable[[], ChampionModel | None] = lambda: None,
        report: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
        storage: StorageSettings | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = ModelSpec.parse(settings.model, settings.model_params)
        self._mergeable = mergeable(self.build_model())
        if not self._mergeable:
            log.info(
                "the speed model %s does not merge: each partition predicts with its own model",
                self.spec.describe(),
            )
        self.reader = reader
        self.store = store
        self.settings = settings
        self.storage = storage
        self.heartbeat = heartbeat
        self.current_champion = current_champion
        self.champion: ChampionModel | None = None
        self.parts: dict[int, SpeedState] = {}
        self.saved: dict[int, int | None] = {}
        self.peers: dict[int, SpeedSnapshot] = {}
        self._peer_sequences: dict[int, int] = {}
        self._peers_read_at = -float("inf")
        self._view: base.Classifier | None = None
        self.learnt_here = 0
        self._store_failing = False
        self.schedule = SnapshotSchedule(settings, 0, {})
        self.drift = DriftWatch(settings.signal_dir, storage)
        self.reporter = SpeedReport(settings, report, 0)
        reader.on_assigned = self._on_assigned
        reader.on_revoked = self._on_revoked

    def build_model(self) -> base.Classifier:
        """A fresh model from the configured spec, checked against River's contract."""
        return check_speed_model(self.spec.build(), f"the speed model {self.spec.factory}")

    # The group's callbacks (on the consumer's IO thread, while `poll` waits).

    def _on_assigned(self, partitions: list[int]) -> dict[int, int | None]:
        starts: dict[int, int | None] = {}
        for partition in partitions:
            self.parts[partition], starts[partition] = self._load(partition)
            self.saved[partition] = starts[partition]
            self.peers.pop(partition, None)
        self._view = None
        log.info("assigned partitions %s, reading from %s", partitions, starts)
        return starts

    def _load(self, partition: int) -> tuple[SpeedState, int | None]:
        """The partition's state and where to read it from: its newest snapshot when that is
        of this model and on the current champion, else a fresh model from the champion's
        cut-off (None: the partition's start)."""
        champion = self.champion
        reason = None
        try:
            snapshot = self._latest_waiting(partition)
        except SnapshotUnreadable as exc:
            snapshot, reason = None, str(exc)
        if snapshot is not None:
            if snapshot.header.model_spec != self.spec.as_record():
                reason = f"the speed model changed from {snapshot.header.describe_model()}"
            elif champion is not None and snapshot.base_version != champion.info.version:
                reason = f"a new champion {champion.info.version}"
            else:
                log.info(
                    "partition %s resumed from snapshot %s at %s",
                    partition,
                    snapshot.sequence,
                    snapshot.offsets,
                )
                state = SpeedState.from_snapshot(snapshot, self.settings.window)
                return state, snapshot.offsets.get(partition)
        return self._fresh(partition, reason)

    def _latest_waiting(self, partition: int) -> SpeedSnapshot | None:
        """The partition's newest snapshot, waiting (with backoff) while the store cannot be
        read: starting the partition without it would learn its events again."""
        delay_s = 1.0
        while True:
            try:
                return self.store.latest(partition)
            except OSError as exc:
                log.warning(
                    "partition %s's snapshot cannot be read, retrying in %.0f s: %s",
                    partition,
                    delay_s,
                    exc,
                )
                time.sleep(delay_s)
                delay_s = min(2 * delay_s, 10.0)

    def _fresh(self, partition: int, reason: str | None) -> tuple[SpeedState, int | None]:
        champion = self.champion
        cutoff = champion.info.cutoff_offsets if champion is not None else {}
        version = champion.info.version if champion is not None else None
        if reason is not None:
            log.warning("partition %s re-based on version %s: %s", partition, version, reason)
        state = SpeedState.fresh(
            self.settings.window, version, cutoff, build_model=self.build_model
        )
        return state, cutoff.get(partition)

    def _on_revoked(self, partitions: list[int]) -> None:
        """Make the revoked partitions durable, unless the store failed the last save: the
        rebalance then goes on at once (saves that fail slowly would outlast the group's
        session), and each partition's next owner learns again from its last snapshot."""
        self.reader.flush_dead_letters()
        for partition in partitions:
            if self._unsaved(partition) and (self._store_failing or not self._save(partition)):
                log.warning(
                    "partition %s revoked unsaved: its next owner learns again from its last "
                    "snapshot",
                    partition,
                )
            self.parts.pop(partition, None)
            self.saved.pop(partition, None)
        self._view = None
        log.info("revoked partitions %s", partitions)

    # Progress.

    def _unsaved(self, partition: int) -> bool:
        position = self.reader.positions.get(partition)
        return position is not None and self.saved.get(partition) != position

    def snapshot_of(self, partition: int) -> SpeedSnapshot:
        """Partition `partition`'s state as a snapshot, after its last event handed out."""
        state = self.parts[partition]
        return SpeedSnapshot(
            model=state.model,
            blender=state.blender,
            offsets={partition: self.reader.positions[partition]},
            events_learnt=state.events_learnt,
            metrics=state.metrics(),
            base_version=state.base_version,
            base_offsets=state.base_offsets,
            learnt_texts=state.learnt_texts,
            header=SnapshotHeader.current(self.spec),
            partition=partition,
        )

    def _save(self, partition: int) -> bool:
        """Save the partition's snapshot; False (with a warning) when the store is down."""
        snapshot = self.snapshot_of(partition)
        try:
            self.store.save(snapshot)
        except OSError as exc:
            log.warning("partition %s's snapshot not saved: %s", partition, exc)
            self._store_failing = True
            return False
        self._store_failing = False
        self.saved[partition] = snapshot.offsets[partition]
        return True

    def make_progress_durable(self) -> None:
        """Dead letters, then each moved partition's snapshot, then the commit. A store that
        cannot be written leaves the progress unsaved, the offsets uncommitted, and the next
        attempt a snapshot interval away."""
        self.reader.flush_dead_letters()
        moved = [p for p in self.parts if self._unsaved(p)]
        if not all([self._save(partition) for partition in moved]):
            self.schedule.failed(self.learnt_here)
            return
        self.reporter.made_durable()
        positions = dict(self.reader.positions)
        self.reader.commit(positions)
        self.schedule.taken(self.learnt_here, positions)

    # Learning.

    def _follow_champion(self) -> None:
        """Take up a new champion: every owned partition not based on it is re-based."""
        champion = self.current_champion()
        if champion is None or champion is self.champion:
            return
        self.champion = champion
        self.drift = DriftWatch(self.settings.signal_dir, self.storage)
        for partition in list(self.parts):
            if self.parts[partition].base_version != champion.info.version:
                self.parts[partition], start = self._fresh(partition, None)
                self.saved[partition] = None
                self.reader.seek_partition(partition, start)
        self._view = None

    def refresh_peers(self, force: bool = False) -> None:
        """Read the other partitions' newest snapshots if `peer_refresh_s` have passed."""
        now = time.monotonic()
        if not self._mergeable or (
            not force and now - self._peers_read_at < self.settings.peer_refresh_s
        ):
            return
        self._peers_read_at = now
        try:
            sequences = self.store.latest_sequences()
        except OSError as exc:
            log.warning("not refreshing the other partitions' snapshots: %s", exc)
            return
        for partition, sequence in sequences.items():
            if partition in self.parts or self._peer_sequences.get(partition) == sequence:
                continue
            try:
                snapshot = self.store.latest(partition)
            except (SnapshotUnreadable, OSError) as exc:
                log.warning("not predicting with partition %s's snapshot: %s", partition, exc)
                continue
            self._peer_sequences[partition] = sequence
            if snapshot is None or snapshot.header.model_spec != self.spec.as_record():
                continue
            self.peers[partition] = snapshot
            self._view = None

    def view(self) -> base.Classifier | None:
        """The sum of the own partitions' models and the others' newest snapshots' (None when
        that is one model: it then predicts alone)."""
        if self._view is None:
            models = [self.parts[p].model for p in sorted(self.parts)]
            models += [s.model for p, s in sorted(self.peers.items()) if p not in self.parts]
            if len(models) < 2 or not self._mergeable:
                return None
            self._view = functools.reduce(operator.add, models)
        return self._view

    def _view_memories(self) -> dict[int, TextMemories]:
        """Owned partition -> the texts the view trained on, its own memory first (where the
        texts it learns go): first-seen means first seen by the model that answered."""
        memories = {p: s.learnt_texts for p, s in self.parts.items()}
        memories |= {p: s.learnt_texts for p, s in self.peers.items() if p not in self.parts}
        return {
            p: TextMemories(memories[p], [m for q, m in memories.items() if q != p])
            for p in self.parts
        }

    def learn(self, consumed: list[Consumed]) -> None:
        """Predict with the view, score, and learn each event into its partition's model."""
        champion = self.champion
        view = self.view()
        memories = self._view_memories() if view is not None else {}
        for item, batch in champion_answers(champion, consumed):
            state = self.parts[item.partition]
            intent = item.event.intent
            if intent is None:
                state.unlabelled_seen += 1
                continue
            batch_right = prequential_step(
                view if view is not None else state.model,
                state.blender,
                state.scores,
                item.event.text,
                intent,
                batch,
                speed_texts=memories.get(item.partition, state.learnt_texts),
                batch_texts=champion.training_texts if champion else None,
                learners=(state.model,) if view is not None else (),
            )
            if batch_right is not None:
                self.drift.update(float(not batch_right), self.learnt_here)
            state.events_learnt += 1
            self.learnt_here += 1
            self.reporter.learnt(item.event.ts.timestamp())

    @property
    def state(self) -> SpeedState:
        """A summary of the owned partitions: their events learnt, and the scores of the one
        that learnt most."""
        parts = list(self.parts.values())
        busiest = max(parts, key=lambda s: s.events_learnt) if parts else None
        return SpeedState(
            model=self.view() or (busiest.model if busiest else self.build_model()),
            blender=busiest.blender if busiest else HedgeBlender(),
            events_learnt=sum(s.events_learnt for s in parts),
            unlabelled_seen=sum(s.unlabelled_seen for s in parts),
            scores=busiest.scores if busiest else ViewScores.with_window(self.settings.window),
        )

    def metrics(self) -> dict[str, float]:
        return self.state.metrics() | {
            "drift_detections": float(self.drift.detections),
            "partitions_owned": float(len(self.parts)),
        }

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_events: int | None = None
    ) -> None:
        """Loop until `stop`, `idle_exit_s` without events (a rebalance counts as activity),
        or `max_events` learnt by this worker; always ends with its progress durable."""
        idle_since = time.monotonic()
        rebalances = self.reader.rebalances
        while not stop.is_set():
            self.heartbeat()
            self._follow_champion()
            most = self.schedule.records_to_poll(self.learnt_here)
            consumed = self.reader.poll(timeout_ms=200, max_records=most)
            if consumed or self.reader.rebalances != rebalances:
                rebalances = self.reader.rebalances
                idle_since = time.monotonic()
            if consumed:
                self.learn(consumed)
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            self.refresh_peers()
            if self.schedule.due(self.learnt_here, self.reader.positions):
                self.make_progress_durable()
            if self.reporter.due():
                self.reporter.send(self.learnt_here, self.metrics, self.reader.partition_lag)
            if max_events is not None and self.learnt_here >= max_events:
                break
        self.make_progress_durable()
        self.reporter.send(self.learnt_here, self.metrics, self.reader.partition_lag)
