"""The speed layer: learn from the query stream one event at a time, prequentially.

For each labelled event: predict with the speed model (and the batch champion, when one
exists), score those predictions and the blend, then learn. A worker is one member of a Kafka
consumer group (alone, a group of one) and keeps one `SpeedState` per partition it owns,
snapshotted per partition: a partition's state moves with the partition, and the partitions'
models add up to the model of the whole stream (`models.snapshot.merge_snapshots`), so one
worker or several learn the same model.

A query's label may also come later, on the feedback topic (co-partitioned with the queries,
read by the same reader): each partition then joins its labels to its queries
(`pipelines.speed.joins`). A query without a label is predicted by every view when it arrives
and waits, with those predictions, within the join window; its label, when it comes, scores
them (`models.late_labels`): prequential scores and the blend learn from predictions made
before the label existed, never after. A label read before its query waits for it; one whose
query never comes, comes past the window, or that is a query's second, is dead-lettered with
the reason (the speed layer learns a query's first label; the batch layer takes the last).
Where the query carried what the service answered (`served`), its label scores that answer
too (`served_accuracy`). A query that carries its own label is learnt at once, as before.

Progress is made durable as snapshots, each holding its partition's join and its offsets on
both topics; a partition resumes from its newest snapshot's offsets, so after kill -9 no
event or label is learnt twice or skipped. The model is chosen by configuration
(`SpeedSettings.model`, a `models.model_spec.ModelSpec`) and checked against River's contract
before the first event; each snapshot's header records the spec. A partition whose newest
snapshot is of another model, cannot be used, or is based on another champion than the
current one re-bases: a fresh model from the champion's cut-off (the partition's start without
a champion), replayed forward (Kappa-style reprocessing). A new champion re-bases every owned
partition not based on it. A re-base keeps the join of the snapshot it leaves and reads the
feedback topic on from there: the labels it had learnt for queries read again are learnt again
when they are (`Joins.rebase`), the others stay with the champion.
"""

import functools
import logging
import operator
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from threading import Event

import numpy as np
from river import base

from common.settings import SpeedSettings, StorageSettings
from models.blend import Blender
from models.contracts import check_speed_model
from models.late_labels import learn_late_label, predict_queries
from models.model_spec import ModelSpec
from models.prequential import BatchAnswer, ViewScores, prequential_step
from models.registry import ChampionModel
from models.scope import OOS_LABEL
from models.snapshot import (
    SnapshotHeader,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
    merge_snapshots,
    mergeable,
)
from models.speed_model import build_speed_model
from models.texts import TextMemories, TextMemory
from pipelines.speed.joins import Awaiting, Joins
from pipelines.speed.schedules import (
    DriftWatch,
    RegistrationSchedule,
    SnapshotSchedule,
    SpeedReport,
)
from streams.consumer import Consumed, EventReader, Start
from streams.schema import FeedbackEvent, QueryEvent

log = logging.getLogger(__name__)

Query = tuple[Consumed, QueryEvent]
"""A consumed query, with its event as a `QueryEvent`."""


def champion_answers(
    champion: ChampionModel | None, queries: list[Query], all_queries: bool = False
) -> Iterator[tuple[Query, BatchAnswer | None]]:
    """Each query of a poll with the champion's answer for it, from one vectorised call over
    the poll's labelled queries (every query with `all_queries`, when the others may be
    labelled later); None for the others, or when there is no champion."""

    def answered(event: QueryEvent) -> bool:
        return all_queries or event.intent is not None

    texts = [event.text for _, event in queries if answered(event)]
    rows = iter(champion.predict_proba_matrix(texts) if champion and texts else ())
    for query in queries:
        row = next(rows, None) if answered(query[1]) else None
        yield query, (champion.classes, row) if champion is not None and row is not None else None


@dataclass
class SpeedState:
    """What a snapshot captures, plus the scores that go with it."""

    model: base.Classifier
    blender: Blender
    events_learnt: int = 0
    unlabelled_seen: int = 0
    base_version: str | None = None
    base_offsets: dict[int, int] = field(default_factory=dict)
    scores: ViewScores = field(default_factory=lambda: ViewScores.with_window(1000))
    learnt_texts: TextMemory = field(default_factory=TextMemory)
    joins: Joins | None = None
    labels_joined: int = 0
    labels_dead_lettered: int = 0
    served_labelled: int = 0
    served_right: int = 0

    @classmethod
    def fresh(
        cls,
        window: int,
        base_version=None,
        base_offsets=None,
        build_model: Callable[[], base.Classifier] = build_speed_model,
        joins: Joins | None = None,
    ) -> "SpeedState":
        return cls(
            model=build_model(),
            blender=Blender(),
            base_version=base_version,
            base_offsets=dict(base_offsets or {}),
            scores=ViewScores.with_window(window),
            joins=joins,
        )

    @classmethod
    def from_snapshot(
        cls, snapshot: SpeedSnapshot, window: int, joins: Joins | None = None
    ) -> "SpeedState":
        state = cls.fresh(
            window, snapshot.base_version, snapshot.base_offsets, lambda: snapshot.model, joins
        )
        state.blender = snapshot.blender
        state.events_learnt = snapshot.events_learnt
        state.learnt_texts = snapshot.learnt_texts
        return state

    def served(self, answered: str, intent: str) -> None:
        """Score what the service answered to a query against its label."""
        self.served_labelled += 1
        self.served_right += answered == intent

    def metrics(self) -> dict[str, float]:
        batch_weight, speed_weight = self.blender.layer_weights
        figures = {
            "events_learnt": float(self.events_learnt),
            "unlabelled_seen": float(self.unlabelled_seen),
            "batch_weight": batch_weight,
            "speed_weight": speed_weight,
            "batch_weight_on_batch_trained_texts": self.blender.weights_for(batch_seen=True)[0],
        }
        if self.joins is not None:
            figures |= {
                "labels_joined": float(self.labels_joined),
                "labels_dead_lettered": float(self.labels_dead_lettered),
                "queries_awaiting_label": float(self.joins.awaiting),
                "labels_awaiting_query": float(len(self.joins.early)),
            }
        if self.served_labelled:
            figures |= {
                "served_labelled": float(self.served_labelled),
                "served_accuracy": self.served_right / self.served_labelled,
            }
        return figures | self.scores.figures()


class SpeedLayer:
    """The prequential loop of one worker of the consumer group, with one state per partition.

    Each partition the group gives the worker has its own `SpeedState` (model, blender, learnt
    texts, events learnt, scores): resumed from the partition's newest snapshot, or re-based
    (see the module), when the reader starts the partition; made durable when the group takes
    it away (one save: a store that failed the last save is not waited on, and the next owner
    learns again from the last snapshot). Every labelled event is learnt by its partition's
    model, so the per-partition snapshots add up exactly to one model of the whole topic.

    For a model that merges (`models.snapshot.mergeable`), a worker that owns several
    partitions, or has peers, predicts each event with the view: its own partitions' live
    models added to the other partitions' newest snapshots, read again every
    `settings.peer_refresh_s`; the view learns each event with its partition's model, so it
    stays that sum in between. A worker that owns the one partition of a topic learns each
    event once, into that partition's model. A model that does not merge predicts with its
    partition's model alone (serving answers with the average of the partitions' models).

    The loop only orders the work; its collaborators decide when to snapshot
    (`SnapshotSchedule`), when to register the model (`RegistrationSchedule`), watch the
    champion's error (`DriftWatch`) and report (`SpeedReport`).

    Parameters
    ----------
    reader
        The group member; the layer installs its callbacks. When it reads the feedback topic
        too (`EventReader.reads_feedback`), each partition joins its labels to its queries
        within `settings.join_window_events` and `settings.join_window_s`.
    store
        The snapshot store shared by the group (one snapshot per partition); a partition
        waits, retried with backoff by the reader, while its snapshot cannot be read.
    settings
        The model's spec, the scoring window, and the snapshot, report, registration,
        drift-signal and peer-refresh settings.
    current_champion
        Returns the current champion (loaded), or None; called on every turn of the loop, so it
        must be cheap (see `models.champion_watch.ChampionWatch.loaded`).
    report
        Called as `report(metrics, step)` every `settings.metrics_every_s` seconds.
    register
        Called as `register(location, snapshot)` with the whole stream's model (every
        partition's newest snapshot merged) when `RegistrationSchedule` says so, by the worker
        that owns partition 0 (one worker of the group registers for all); it must return at
        once (see `pipelines.tracking.SnapshotRegistrar`).
    storage
        The object store of an `s3://` signal folder.
    heartbeat
        Called once a turn of the loop, for the job's liveness check.
    replay_from
        Partition -> offset: each partition the worker starts for the first time starts
        afresh there (a partition not named, at its beginning), on the current champion, and
        goes on live (`lambda-ml replay`), with the join and the feedback position of its
        newest snapshot, as a re-base; None resumes as usual.

    Raises
    ------
    ModelSpecError
        The configured factory cannot be imported or called.
    ModelContractError
        It builds something that is not a River classifier.

    Attributes
    ----------
    spec
        The configured model: every fresh model is built from it.
    parts
        Owned partition -> its state.
    durable
        Owned partition -> its last durable snapshot (missing while it has none).
    peers
        Other partitions -> their newest snapshot, for the view.
    champion
        The champion the worker predicts with now, or None.
    learnt_here
        Labelled events this worker learnt since it started.
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
        replay_from: Mapping[int, int] | None = None,
    ) -> None:
        self.spec = ModelSpec.parse(settings.model, settings.model_params)
        self._mergeable = mergeable(self.build_model())  # a wrong model fails here
        if not self._mergeable:
            log.info(
                "the speed model %s does not merge: each partition predicts with its own model",
                self.spec.describe(),
            )
        self.reader = reader
        self.store = store
        self.settings = settings
        self.current_champion = current_champion
        self.register = register
        self.storage = storage
        self.heartbeat = heartbeat
        self.champion: ChampionModel | None = None
        self.parts: dict[int, SpeedState] = {}
        self.durable: dict[int, SpeedSnapshot] = {}
        self.peers: dict[int, SpeedSnapshot] = {}
        self.learnt_here = 0
        self._replay = dict(replay_from) if replay_from is not None else None
        self._started: set[int] = set()
        self._peer_sequences: dict[int, int] = {}
        self._peers_read_at = -float("inf")
        self._view: base.Classifier | None = None
        self._store_failing = False
        self.schedule = SnapshotSchedule(settings, 0, {})
        self.registration = RegistrationSchedule(settings)
        self.drift = DriftWatch(settings.signal_dir, storage)
        self.reporter = SpeedReport(settings, report, 0)
        reader.on_assigned = self._on_assigned
        reader.on_revoked = self._on_revoked

    def build_model(self) -> base.Classifier:
        """A fresh model from the configured spec, checked against River's contract."""
        return check_speed_model(self.spec.build(), f"the speed model {self.spec.factory}")

    # Partitions coming and going.

    def _on_assigned(self, beginnings: Mapping[int, Start]) -> dict[int, Start]:
        """Where each partition given starts (its state made ready); one whose snapshot cannot
        be read now is left out, to wait."""
        starts: dict[int, Start] = {}
        for partition, first in sorted(beginnings.items()):
            try:
                starts[partition] = self._start(partition, first)
            except OSError as exc:
                log.warning("partition %s's snapshot cannot be read yet: %s", partition, exc)
                continue
            self._started.add(partition)
            self.peers.pop(partition, None)
        if starts:
            self._view = None
            log.info("assigned partitions %s, reading from %s", sorted(starts), starts)
        return starts

    def _start(self, partition: int, first: Start) -> Start:
        """Make the partition's state ready and return the offsets to read it from: its newest
        snapshot's, when that is of this model and on the current champion; else a fresh
        model's, from the replay's offset or the champion's cut-off (`first`, the partition's
        first offsets, without either), with the snapshot's join and feedback position."""
        champion = self.champion
        version = champion.info.version if champion is not None else None
        reason, quiet = None, False
        try:
            snapshot = self.store.latest(partition)
        except SnapshotUnreadable as exc:
            snapshot, reason = None, str(exc)
        if self._replay is not None and partition not in self._started:
            offset = self._replay.get(partition, first.queries)
            reason, quiet = f"a replay from offset {offset}", True
            return self._fresh(partition, offset, reason, quiet, snapshot, first)
        if snapshot is None:
            pass
        elif snapshot.header.model_spec != self.spec.as_record():
            reason = (
                f"the speed model changed from {snapshot.header.describe_model()} "
                f"(snapshot {snapshot.sequence}) to {self.spec.describe()}"
            )
        elif champion is not None and snapshot.base_version != version:
            reason, quiet = f"a new champion {version}", True
        else:
            joins = self._joins_of(snapshot) or self._no_joins()
            self.parts[partition] = SpeedState.from_snapshot(snapshot, self.settings.window, joins)
            self.durable[partition] = snapshot
            log.info(
                "partition %s resumed from snapshot %s at %s",
                partition,
                snapshot.sequence,
                snapshot.offsets,
            )
            return Start(snapshot.offsets[partition], self._feedback_start(snapshot, first))
        cutoff = champion.info.cutoff_offsets if champion is not None else {}
        offset = cutoff.get(partition, first.queries)
        return self._fresh(partition, offset, reason, quiet, snapshot, first)

    def _fresh(
        self,
        partition: int,
        offset: int,
        reason: str | None,
        quiet: bool,
        snapshot: SpeedSnapshot | None,
        first: Start,
    ) -> Start:
        """A fresh model for the partition, based on the current champion, from `offset`; the
        join of `snapshot` (the partition's newest, if any) goes on, re-based there."""
        version = self.champion.info.version if self.champion is not None else None
        joins = self._joins_of(snapshot) if snapshot is not None else None
        if joins is not None:
            joins.rebase(offset)
        self.parts[partition] = SpeedState.fresh(
            self.settings.window,
            version,
            {partition: offset},
            build_model=self.build_model,
            joins=joins or self._no_joins(),
        )
        self.durable.pop(partition, None)
        if reason is None:
            log.info("partition %s starts on version %s at offset %s", partition, version, offset)
        else:
            self.registration.rebased()
            log.log(
                logging.INFO if quiet else logging.WARNING,
                "partition %s re-based on version %s from offset %s: %s",
                partition,
                version,
                offset,
                reason,
            )
        return Start(offset, self._feedback_start(snapshot, first))

    def _no_joins(self) -> Joins | None:
        """An empty join, when the reader reads labels."""
        if not self.reader.reads_feedback:
            return None
        return Joins(self.settings.join_window_events, self.settings.join_window_s)

    def _joins_of(self, snapshot: SpeedSnapshot | None) -> Joins | None:
        """The snapshot's join, with this worker's window, when the reader reads labels and
        the snapshot holds one it can read."""
        if snapshot is None or not snapshot.joins or not self.reader.reads_feedback:
            return None
        try:
            joins = pickle.loads(snapshot.joins)
        except Exception as exc:  # a join this code cannot read: its labels become orphans
            log.warning("partition %s's join cannot be read: %s", snapshot.partition, exc)
            return None
        joins.window_events = self.settings.join_window_events
        joins.window_s = self.settings.join_window_s
        return joins

    def _feedback_start(self, snapshot: SpeedSnapshot | None, first: Start) -> int | None:
        """Where the partition's labels are read from: where its snapshot left them, else the
        feedback topic's beginning (None when the reader reads no labels)."""
        if first.feedback is None or snapshot is None or snapshot.partition is None:
            return first.feedback
        return snapshot.feedback_offsets.get(snapshot.partition, first.feedback)

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
            self.durable.pop(partition, None)
        self._view = None
        log.info("revoked partitions %s", partitions)

    def _follow_champion(self) -> None:
        """Take up a new champion: its error is watched anew, and every owned partition not
        based on it re-bases on its cut-off."""
        champion = self.current_champion()
        if champion is None or champion is self.champion:
            return
        version = champion.info.version
        if self.champion is None or self.champion.info.version != version:
            self.drift = DriftWatch(self.settings.signal_dir, self.storage)
        self.champion = champion
        stale = [p for p, state in self.parts.items() if state.base_version != version]
        if not stale:
            return
        for partition in stale:  # started again, they find their snapshots on another champion
            del self.parts[partition]
            self.durable.pop(partition, None)
        self.reader.restart(stale)
        self.reporter.rebased()
        self.registration.rebased()
        self._view = None

    # Progress.

    def _unsaved(self, partition: int) -> bool:
        position = self.reader.positions.get(partition)
        durable = self.durable.get(partition)
        return position is not None and (
            durable is None
            or durable.offsets != {partition: position}
            or durable.feedback_offsets != self._feedback_offsets(partition)
        )

    def _feedback_offsets(self, partition: int) -> dict[int, int]:
        feedback = self.reader.feedback_positions.get(partition)
        return {partition: feedback} if feedback is not None else {}

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
            feedback_offsets=self._feedback_offsets(partition),
            joins=(
                pickle.dumps(state.joins, protocol=pickle.HIGHEST_PROTOCOL)
                if state.joins is not None
                else b""
            ),
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
        self.durable[partition] = snapshot
        return True

    def make_progress_durable(self) -> bool:
        """Dead letters first, then each moved partition's snapshot, then the commit: each is
        durable before the next step claims it, so a crash between steps loses or repeats no
        event. The whole model is then registered when that is due.

        A store that cannot be written (down, or unreachable) is a warning: the worker goes on
        learning, commits nothing, and tries again a snapshot interval later; False is
        returned."""
        self.reader.flush_dead_letters()
        moved = [p for p in sorted(self.parts) if self._unsaved(p)]
        for partition in moved:
            if not self._save(partition):
                self.schedule.failed(self.learnt_here)
                return False
        self.reporter.made_durable()
        progress = self.reader.progress
        self.reader.commit(dict(self.reader.positions), dict(self.reader.feedback_positions))
        self.schedule.taken(self.learnt_here, progress)
        if moved:
            self._register_if_due()
        return True

    def whole_snapshot(self) -> SpeedSnapshot:
        """The model of the whole stream: the owned partitions' durable snapshots merged with
        the others' newest (`merge_snapshots`)."""
        snapshots = dict(self.durable)
        for partition in self.store.latest_sequences():
            if partition not in snapshots:
                snapshot = self.store.latest(partition)
                if snapshot is not None:
                    snapshots[partition] = snapshot
        return merge_snapshots(snapshots)

    def _register_if_due(self) -> None:
        if self.register is None or 0 not in self.parts or not self.registration.due():
            return
        self.registration.registered()
        try:
            whole = self.whole_snapshot()
            self.register(f"{self.store.location.rstrip('/')}/speed-{time.time_ns()}.pkl", whole)
        except Exception as exc:  # the registry's copy is for people; the stream goes on
            log.warning("could not hand the speed model over for registration: %s", exc)

    # Learning.

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
        """Learn a poll: its queries first, in order (a labelled one is predicted, scored and
        learnt into its partition's model; with labels on the feedback topic, an unlabelled one
        is predicted by every view and waits for its label), then its labels, each joined to
        its query's predictions and learnt, or waiting for its query, or dead-lettered."""
        champion = self.champion
        view = self.view()
        memories = self._view_memories() if view is not None else {}
        queries = [(c, c.event) for c in consumed if isinstance(c.event, QueryEvent)]
        joining = self.reader.reads_feedback
        run: list[tuple[Query, BatchAnswer | None]] = []  # unlabelled, predicted together
        for query, batch in champion_answers(champion, queries, all_queries=joining):
            item, event = query
            state = self.parts[item.partition]
            joins = state.joins
            intent = event.intent
            if joins is not None:
                joins.advance(item.offset, event.ts.timestamp())
                intent = intent or joins.relearnt(item.offset, event.query_id)
            if intent is None:
                state.unlabelled_seen += 1
                if joins is None or joins.is_known(event.query_id):
                    continue  # nothing will label it, or it is a query seen already
                if event.query_id in joins.early:  # its label came first: learnt at once
                    self._await([*run, (query, batch)], view, memories)
                    run = []
                else:
                    run.append((query, batch))
                continue
            self._await(run, view, memories)
            run = []
            batch_right = prequential_step(
                view if view is not None else state.model,
                state.blender,
                state.scores,
                event.text,
                intent,
                batch,
                speed_texts=memories.get(item.partition, state.learnt_texts),
                batch_texts=champion.training_texts if champion else None,
                learners=(state.model,) if view is not None else (),
                scope=champion.scope if champion else None,
            )
            if event.served is not None:
                state.served(event.served.intent, intent)
            self._learnt(state, batch_right, event.ts.timestamp())
        self._await(run, view, memories)
        for item in consumed:
            if isinstance(item.event, FeedbackEvent):
                state = self.parts[item.partition]
                found = state.joins.label(item.event, item.offset) if state.joins else None
                if found is not None:
                    self._learn_late(item.partition, found, item.event, view, memories)
        self._dead_letter_rejected()

    def _await(
        self,
        run: list[tuple[Query, BatchAnswer | None]],
        view: base.Classifier | None,
        memories: Mapping[int, TextMemories],
    ) -> None:
        """Predict a run of unlabelled queries (no model learns between them) with one call per
        partition and view, and keep each in its partition's join; one whose label came first
        is learnt at once."""
        champion = self.champion
        for partition in sorted({item.partition for (item, _), _ in run}):
            mine = [(item, event, b) for (item, event), b in run if item.partition == partition]
            state = self.parts[partition]
            assert state.joins is not None  # only a joining partition has unlabelled runs
            rows = [b[1] for _, _, b in mine if b is not None]
            predictions = predict_queries(
                view if view is not None else state.model,
                state.blender,
                [event.text for _, event, _ in mine],
                (champion.classes, np.vstack(rows)) if champion is not None and rows else None,
                memories.get(partition, state.learnt_texts),
                champion.training_texts if champion else None,
                scope=champion.scope if champion else None,
            )
            for (item, event, _), prediction in zip(mine, predictions, strict=True):
                query = Awaiting(
                    event.query_id,
                    item.offset,
                    event.ts.timestamp(),
                    event.text,
                    prediction,
                    event.served.intent if event.served is not None else None,
                )
                early = state.joins.add(query)
                if early is not None:
                    self._learn_late(partition, query, early, view, memories)

    def _learn_late(
        self,
        partition: int,
        query: Awaiting,
        label: FeedbackEvent,
        view: base.Classifier | None,
        memories: Mapping[int, TextMemories],
    ) -> None:
        """Learn a query's label from the feedback topic, scoring what was predicted when the
        query arrived."""
        state = self.parts[partition]
        assert query.prediction is not None and state.joins is not None
        scope = self.champion.scope if self.champion is not None else None
        batch_right = learn_late_label(
            query.prediction,
            query.text,
            label.intent,
            state.blender,
            state.scores,
            [view, state.model] if view is not None else [state.model],
            memories.get(partition, state.learnt_texts),
            scope.oos_label if scope is not None else OOS_LABEL,
        )
        if query.served is not None:
            state.served(query.served, label.intent)
        state.joins.learnt(query, label.intent)
        state.labels_joined += 1
        self._learnt(state, batch_right, label.ts.timestamp())

    def _learnt(self, state: SpeedState, batch_right: bool | None, ts: float) -> None:
        """Count a labelled event learnt; the champion's error on it goes to the drift watch."""
        if batch_right is not None:
            self.drift.update(float(not batch_right), self.learnt_here)
        state.events_learnt += 1
        self.learnt_here += 1
        self.reporter.learnt(ts)

    def _dead_letter_rejected(self) -> None:
        """Send the labels the joins rejected to the dead-letter topic, with their reasons."""
        for partition, state in self.parts.items():
            if state.joins is None:
                continue
            for rejected in state.joins.take_rejected():
                self.reader.dead_letter(
                    Consumed(rejected.event, partition, rejected.offset), rejected.reason
                )
                state.labels_dead_lettered += 1

    # Figures.

    @property
    def state(self) -> SpeedState:
        """The state of the owned partition that learnt most, with the events and labels of
        every owned partition counted: a worker that owns the one partition of a topic, its
        whole state."""
        parts = list(self.parts.values())
        if not parts:
            raise LookupError("this worker owns no partition")
        busiest = max(parts, key=lambda s: s.events_learnt)
        counts = (
            "events_learnt",
            "unlabelled_seen",
            "labels_joined",
            "labels_dead_lettered",
            "served_labelled",
            "served_right",
        )
        return replace(busiest, **{name: sum(getattr(s, name) for s in parts) for name in counts})

    def metrics(self) -> dict[str, float]:
        """The busiest partition's figures (`state`), with the queries and labels waiting in
        every owned partition's join, the drift detections since the champion was taken up and
        the partitions owned."""
        figures = self.state.metrics() if self.parts else {}
        joins = [s.joins for s in self.parts.values() if s.joins is not None]
        if joins:
            figures["queries_awaiting_label"] = float(sum(j.awaiting for j in joins))
            figures["labels_awaiting_query"] = float(sum(len(j.early) for j in joins))
        return figures | {
            "drift_detections": float(self.drift.detections),
            "partitions_owned": float(len(self.parts)),
        }

    # The loop.

    def step(self) -> int:
        """One turn of the loop: follow the champion, poll, learn, refresh the peers, make
        progress durable and report when due; returns the events handed out."""
        self.heartbeat()
        self._follow_champion()
        most = self.schedule.records_to_poll(self.learnt_here)
        consumed = self.reader.poll(timeout_ms=200, max_records=most)
        if consumed:
            self.learn(consumed)
        self.refresh_peers()
        if self.schedule.due(self.learnt_here, self.reader.progress):
            self.make_progress_durable()
        if self.reporter.due():
            self.reporter.send(self.learnt_here, self.metrics, self.reader.partition_lag)
        return len(consumed)

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_events: int | None = None
    ) -> None:
        """Loop until `stop` is set, `idle_exit_s` pass without events while every partition
        the worker was given is started (waiting for partitions is not idleness), or
        `max_events` are learnt by this worker; always ends with its progress durable and a
        report."""
        idle_since = time.monotonic()
        while not stop.is_set():
            if self.step() or not self.reader.settled:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if max_events is not None and self.learnt_here >= max_events:
                break
        self.make_progress_durable()
        self.reporter.send(self.learnt_here, self.metrics, self.reader.partition_lag)
