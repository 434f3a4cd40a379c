"""The speed layer's collaborators, and the worker over a consumer group in memory
(`tests.unit.fake_kafka`): each behaviour of the worker is run with a group of one worker and
of two (exactly once after a crash, re-basing on a new champion, replays, registration, the
drift signal, store outages at start and while partitions change hands), and the configured
model is checked, recorded and re-based on when it changes."""

import json
import threading
import time
from datetime import timedelta
from threading import Event

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from common.settings import MlflowSettings, SpeedSettings
from models.blend import Blender
from models.contracts import ModelContractError
from models.model_spec import ModelSpecError
from models.registry import ChampionInfo, ChampionModel
from models.scope import OOS_LABEL, ScopeClassifier
from models.snapshot import (
    SNAPSHOT_FORMAT,
    SnapshotHeader,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
    merge_snapshots,
)
from models.speed_model import build_speed_model
from pipelines.signals import SIGNAL_FILE, drift_raised_at
from pipelines.speed import schedules as speed_loop
from pipelines.speed.figures import speed_samples
from pipelines.speed.layer import SpeedLayer
from pipelines.speed.schedules import (
    DriftWatch,
    RegistrationSchedule,
    SnapshotSchedule,
    SpeedReport,
)
from pipelines.tracking import RunReporter, SnapshotRegistrar, snapshot_tags
from streams.consumer import MAX_POLL_RECORDS, EventReader
from streams.dataset import CLINC150_DATA, load_dataset
from streams.schema import QueryEvent, parse_event
from tests.unit.fake_kafka import (
    INTENTS,
    KAFKA,
    TEXTS,
    TS,
    FakeConsumer,
    FakeGroup,
    FakeLabels,
    FakeProducer,
    FakeTopic,
    event_bytes,
    label_bytes,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def speed_settings(tmp_path, **overrides) -> SpeedSettings:
    values = {
        "snapshot_dir": tmp_path / "snapshots",
        "signal_dir": tmp_path / "signals",
        "snapshot_every_events": 100,
        "snapshot_every_s": 5.0,
        "metrics_every_s": 10.0,
        "freshness_window": 1000,
        "window": 50,
    }
    return SpeedSettings(**(values | overrides))


# SnapshotSchedule


def test_a_snapshot_is_due_at_exactly_every_n_events(tmp_path):
    schedule = SnapshotSchedule(speed_settings(tmp_path), 0, {0: 0}, clock=FakeClock())
    assert not schedule.due(99, {0: 99})
    assert schedule.due(100, {0: 100})
    schedule.taken(100, {0: 100})
    assert not schedule.due(199, {0: 199})  # counted from the last snapshot, not the start
    assert schedule.due(200, {0: 200})


def test_a_snapshot_is_due_at_exactly_every_s_seconds(tmp_path):
    clock = FakeClock()
    schedule = SnapshotSchedule(speed_settings(tmp_path), 0, {0: 0}, clock=clock)
    clock.now += 4.999
    assert not schedule.due(1, {0: 1})
    clock.now += 0.001
    assert schedule.due(1, {0: 1})
    schedule.taken(1, {0: 1})
    clock.now += 4.999
    assert not schedule.due(2, {0: 2})


def test_no_snapshot_is_due_while_the_reader_stands_where_the_last_one_left_it(tmp_path):
    clock = FakeClock()
    schedule = SnapshotSchedule(speed_settings(tmp_path), 0, {0: 7}, clock=clock)
    clock.now += 60
    assert not schedule.unsaved({0: 7})
    assert not schedule.due(500, {0: 7})
    assert schedule.unsaved({0: 8}) and schedule.due(500, {0: 8})


def test_polls_stop_at_the_next_snapshot(tmp_path):
    schedule = SnapshotSchedule(speed_settings(tmp_path), 40, {0: 40}, clock=FakeClock())
    assert schedule.records_to_poll(40) == 100  # a resumed layer counts from its snapshot
    assert schedule.records_to_poll(130) == 10
    assert schedule.records_to_poll(140) == 1  # never zero, even when a snapshot is overdue
    assert schedule.records_to_poll(500) == 1
    big = SnapshotSchedule(
        speed_settings(tmp_path, snapshot_every_events=10**9), 0, {}, clock=FakeClock()
    )
    assert big.records_to_poll(0) == MAX_POLL_RECORDS


# DriftWatch


def feed_until_detected(watch: DriftWatch, errors: list[float]) -> int | None:
    """The index of the event whose error revealed a rise, or None."""
    for i, error in enumerate(errors):
        if watch.update(error, events_learnt=i):
            return i
    return None


def test_a_rising_error_raises_the_signal_once_per_detection(tmp_path, monkeypatch):
    raised: list[dict] = []
    real = speed_loop.raise_drift_signal

    def recording(directory, details, storage):
        raised.append(details)
        real(directory, details, storage)

    monkeypatch.setattr(speed_loop, "raise_drift_signal", recording)
    watch = DriftWatch(tmp_path)
    assert drift_raised_at(tmp_path) is None
    at = feed_until_detected(watch, [0.0] * 2000 + [1.0] * 500)
    assert at is not None and at >= 2000
    assert watch.detections == 1 and len(raised) == 1
    signal = json.loads((tmp_path / SIGNAL_FILE).read_text())
    assert signal["events_learnt"] == at
    assert signal["error_rate"] == pytest.approx(watch.error_rate)
    assert drift_raised_at(tmp_path) is not None
    # Every further detection is signalled once more, none in between.
    returned = sum(watch.update(1.0, events_learnt=2500 + i) for i in range(2000))
    assert watch.detections == 1 + returned and len(raised) == watch.detections


def test_a_falling_error_is_not_drift_worth_signalling(tmp_path):
    watch = DriftWatch(tmp_path)
    assert feed_until_detected(watch, [1.0] * 2000 + [0.0] * 2000) is None
    assert watch.detections == 0
    assert drift_raised_at(tmp_path) is None


# SpeedReport


def test_the_freshness_window_is_bounded_by_the_settings(tmp_path):
    """More events than `freshness_window` keep only the latest: the figures were once kept for
    every event ever learnt, and percentiled in full on every report."""
    settings = speed_settings(tmp_path, freshness_window=5)
    wall = FakeClock(10_000.0)
    report = SpeedReport(settings, lambda metrics, step: None, wall_clock=wall)
    for ts in range(9_900, 9_912):  # 12 events, each one second after the last
        report.learnt(float(ts))
    report.made_durable()
    assert len(report.freshness_s) == settings.freshness_window
    assert list(report.freshness_s) == [93.0, 92.0, 91.0, 90.0, 89.0]  # the 5 latest events
    for ts in range(9_990, 9_993):
        report.learnt(float(ts))
    report.made_durable()
    assert len(report.freshness_s) == settings.freshness_window
    assert list(report.freshness_s) == [90.0, 89.0, 10.0, 9.0, 8.0]


def test_a_report_is_due_every_metrics_every_s(tmp_path):
    clock = FakeClock()
    report = SpeedReport(speed_settings(tmp_path), lambda metrics, step: None, clock=clock)
    clock.now += 9.999
    assert not report.due()
    clock.now += 0.001
    assert report.due()
    report.send(0, dict, lambda: None)
    assert not report.due()


def test_a_report_holds_the_figures_the_rate_the_lag_and_the_freshness(tmp_path):
    sent: list[tuple[dict[str, float], int]] = []
    clock, wall = FakeClock(), FakeClock(50_000.0)
    report = SpeedReport(
        speed_settings(tmp_path), lambda m, step: sent.append((m, step)), 100, clock, wall
    )
    clock.now += 10
    first = report.send(150, lambda: {"events_learnt": 150.0}, lambda: None)
    assert first == {"events_learnt": 150.0, "events_per_s": 5.0}  # no lag, no snapshot yet
    report.learnt(49_999.0)
    report.made_durable()
    clock.now += 4
    wall.now += 2
    second = report.send(170, lambda: {"events_learnt": 170.0}, lambda: {0: 7, 1: 3})
    assert second == {
        "events_learnt": 170.0,
        "events_per_s": 5.0,  # 20 events in 4 s: only since the last report
        "lag": 10.0,
        "lag_p0": 7.0,
        "lag_p1": 3.0,
        "snapshot_age_s": 2.0,
        "freshness_p50_s": 1.0,
        "freshness_p95_s": 1.0,
        "freshness_p99_s": 1.0,
    }
    assert report.latest == second
    assert sent == [(first, 150), (second, 170)]


def test_a_failing_report_is_logged_not_raised(tmp_path, caplog):
    def broken(metrics, step):
        raise ConnectionError("mlflow is down")

    report = SpeedReport(speed_settings(tmp_path), broken)
    with caplog.at_level("WARNING"):
        report.send(1, dict, lambda: None)
    assert "could not report metrics: mlflow is down" in caplog.text


def test_a_rebase_forgets_the_events_not_yet_durable(tmp_path):
    clock = FakeClock()
    report = SpeedReport(speed_settings(tmp_path), lambda m, step: None, 500, clock)
    report.learnt(1.0)
    report.rebased()
    report.made_durable()
    assert not report.freshness_s and report.freshness_percentiles_s() == {}
    clock.now += 10
    assert report.send(530, dict, lambda: None)["events_per_s"] == 3.0  # the count goes on


def test_a_failed_snapshot_is_retried_a_whole_interval_later():
    clock = FakeClock()
    schedule = SnapshotSchedule(
        SpeedSettings(snapshot_every_events=100, snapshot_every_s=5.0), 0, {0: 0}, clock
    )
    assert schedule.due(100, {0: 100})
    schedule.failed(100)
    assert schedule.unsaved({0: 100}) and not schedule.due(150, {0: 150})
    assert schedule.records_to_poll(150) == 50  # polling goes on at full size
    assert schedule.due(200, {0: 200})
    clock.now += 5.0
    assert schedule.due(150, {0: 150})


def test_a_drift_signal_the_store_refuses_is_a_warning(tmp_path, monkeypatch, caplog):
    def refused(directory, details, storage):
        raise OSError("store unreachable")

    monkeypatch.setattr(speed_loop, "raise_drift_signal", refused)
    watch = DriftWatch(tmp_path)
    with caplog.at_level("WARNING", logger="pipelines.speed.schedules"):
        at = feed_until_detected(watch, [0.0] * 2000 + [1.0] * 500)
    assert at is not None and watch.detections == 1
    assert "could not raise the drift signal" in caplog.text


# Registration in MLflow


def test_registration_is_due_after_a_re_base_and_then_every_interval(tmp_path):
    clock = FakeClock()
    schedule = RegistrationSchedule(speed_settings(tmp_path, register_every_s=60), clock)
    assert not schedule.due()
    schedule.rebased()
    assert schedule.due()
    schedule.registered()
    clock.now += 59.9
    assert not schedule.due()
    clock.now += 0.1
    assert schedule.due()
    never = RegistrationSchedule(speed_settings(tmp_path, register_every_s=0), clock)
    clock.now += 10**6
    assert not never.due()  # 0: only after re-bases
    never.rebased()
    assert never.due()


def test_the_registrar_warns_when_mlflow_is_down_and_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = MlflowSettings(tracking_uri="http://127.0.0.1:9", registered_model="m")
    store = SnapshotStore(tmp_path / "snapshots")
    path = store.save(SpeedSnapshot(model={}, blender=Blender(), offsets={0: 1}, events_learnt=1))
    reporter = RunReporter(settings, "speed-layer", {})
    registrar = SnapshotRegistrar(settings, reporter, tmp_path / "snapshots" / ".outbox")
    with caplog.at_level("WARNING", logger="pipelines.tracking"):
        registrar(path, store.latest())
        registrar.close(timeout_s=30)
    assert "could not register speed snapshot snapshot-000000000001.pkl in MLflow as m-speed" in (
        caplog.text
    )
    assert not any((tmp_path / "snapshots" / ".outbox").iterdir())  # the staged copy is gone
    assert store.latest_sequence() == 1  # the store's own file is untouched


def test_a_registered_version_is_tagged_with_where_the_model_is_and_what_it_is():
    snapshot = SpeedSnapshot(
        model={},
        blender=Blender(),
        offsets={1: 40, 0: 7},
        events_learnt=44,
        base_version="3",
        base_offsets={0: 2},
        sequence=12,
        header=SnapshotHeader(2, {"factory": NAIVE_BAYES, "params": {}}, {"river": "0.26.1"}),
    )
    assert snapshot_tags(snapshot) == {
        "offsets": '{"0": 7, "1": 40}',
        "events_learnt": "44",
        "base_version": "3",
        "base_offsets": '{"0": 2}',
        "model_spec": '{"factory": "models.alternatives:river_naive_bayes", "params": {}}',
        "snapshot_format": "2",
        "snapshot_sequence": "12",
        "library_versions": '{"river": "0.26.1"}',
    }


# The worker over a consumer group in memory

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
DEFAULT = "models.speed_model:build_speed_model"
NAIVE_BAYES = "models.alternatives:river_naive_bayes"


def a_champion(version: str, cutoff: dict[int, int]) -> ChampionModel:
    """A champion that learnt the texts' intents before any drift."""
    estimator = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS, INTENTS)
    return ChampionModel(ChampionInfo("m", version, "run", cutoff), estimator, None)


class Workers:
    """Speed workers of one consumer group over `topic` (and `labels`, its feedback topic),
    sharing one snapshot store, run turn by turn. `champion` is what `current_champion`
    returns; `registered` holds each registration as (worker index, location, snapshot);
    `dead_letters` each worker's dead-letter producer."""

    def __init__(
        self, tmp_path, topic: FakeTopic, store=None, labels: FakeLabels | None = None, **settings
    ) -> None:
        self.topic = topic
        self.labels = labels
        self.group = FakeGroup(topic, labels)
        self.dead_letters: list[FakeProducer] = []
        self.store = store if store is not None else SnapshotStore(tmp_path / "snapshots")
        self.settings = speed_settings(tmp_path, **({"snapshot_every_events": 25} | settings))
        self.champion: ChampionModel | None = None
        self.layers: list[SpeedLayer] = []
        self.running: list[SpeedLayer] = []
        self.consumers: dict[int, FakeConsumer] = {}
        self.registered: list[tuple[int, str, SpeedSnapshot]] = []

    def start(self, count: int = 1, replay_from=None) -> list[SpeedLayer]:
        started = []
        for _ in range(count):
            index = len(self.layers)
            consumer = self.group.consumer()
            self.dead_letters.append(FakeProducer())
            reader = EventReader(
                consumer, self.dead_letters[-1], KAFKA, "speed", feedback=self.labels is not None
            )
            layer = SpeedLayer(
                reader,
                self.store,
                self.settings,
                current_champion=lambda: self.champion,
                register=lambda where, s, i=index: self.registered.append((i, where, s)),
                replay_from=replay_from,
            )
            self.layers.append(layer)
            self.running.append(layer)
            self.consumers[id(layer)] = consumer
            started.append(layer)
        return started

    def turns(self, count: int = 1) -> None:
        for _ in range(count):
            for layer in list(self.running):
                layer.step()

    def caught_up(self) -> bool:
        positions = {p: o for layer in self.running for p, o in layer.reader.positions.items()}
        labels = {
            p: o for layer in self.running for p, o in layer.reader.feedback_positions.items()
        }
        return (
            positions == self.topic.ends
            and (self.labels is None or labels == self.labels.ends)
            and all(layer.reader.settled for layer in self.running)
        )

    @property
    def reasons(self) -> list[str]:
        """Why each dead letter was sent, by every worker."""
        return [reason for producer in self.dead_letters for reason in producer.reasons]

    def run_to_end(self, timeout_s: float = 60.0) -> None:
        """Turns until every partition is read to its end, then each worker's last durable
        step, as `SpeedLayer.run` ends."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up():
            assert time.monotonic() < deadline, "the workers did not reach the end of the topic"
            self.turns()
        for layer in self.running:
            layer.make_progress_durable()

    def crash(self, layer: SpeedLayer) -> None:
        """kill -9: the worker is gone with whatever it had not made durable."""
        self.running.remove(layer)
        self.group.crash(self.consumers[id(layer)])

    def stop(self, layer: SpeedLayer) -> None:
        """The end of `run` and the job: progress made durable, then the reader closed."""
        layer.make_progress_durable()
        self.running.remove(layer)
        layer.reader.close()


def check_exact(store: SnapshotStore, topic: FakeTopic, base: dict[int, int] | None = None):
    """Every partition's newest snapshot holds its end, has learnt each labelled event after
    `base` once, and the snapshots add up to one model that learnt them all."""
    latest = store.latest_per_partition()
    assert {p: s.offsets for p, s in latest.items()} == {p: {p: e} for p, e in topic.ends.items()}
    assert_adds_up(latest, topic.labelled_from(base or {}))
    return latest


def assert_adds_up(latest: dict[int, SpeedSnapshot], expected: dict[int, list[tuple[str, str]]]):
    """Each partition's snapshot learnt its `expected` (text, intent) pairs once, and the
    snapshots add up to one model that learnt them all."""
    assert {p: s.events_learnt for p, s in latest.items()} == {
        p: len(pairs) for p, pairs in expected.items()
    }
    single = build_speed_model()
    for pairs in expected.values():
        for text, intent in pairs:
            single.learn_one({"text": text}, intent)
    assert merge_snapshots(latest).model.count_table() == single.count_table()


def start_workers(workers: Workers, count: int, replay_from=None) -> list[SpeedLayer]:
    """`count` workers, the second joining after the first has made progress durable (a
    rebalance mid-stream)."""
    first = workers.start(1, replay_from)
    if count == 2:
        workers.turns(4)
        assert workers.store.latest_sequences(), "no progress was durable before the rebalance"
        return first + workers.start(1, replay_from)
    return first


@WORKERS
def test_every_event_is_learnt_once_by_its_partition_and_the_snapshots_add_up(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=120, bad=3)
    group = Workers(tmp_path, topic)
    layers = start_workers(group, workers)
    group.run_to_end()
    check_exact(group.store, topic)
    assert sum(layer.reader.dead_lettered for layer in layers) >= 4  # each partition's bad one
    assert group.group.committed == topic.ends
    owned = [sorted(layer.parts) for layer in layers]
    assert owned == ([[0, 1, 2, 3]] if workers == 1 else [[0, 2], [1, 3]])


def test_a_worker_that_owns_the_one_partition_learns_each_event_once(tmp_path):
    topic = FakeTopic(partitions=1, events=200)
    group = Workers(tmp_path, topic)
    (layer,) = group.start()
    group.run_to_end()
    assert layer.view() is None and not layer.peers  # no merged view to learn into as well
    check_exact(group.store, topic)
    assert layer.state.events_learnt == layer.learnt_here == len(topic.labelled[0])


@WORKERS
def test_kill_9_loses_and_repeats_nothing(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=150)
    group = Workers(tmp_path, topic)
    layers = start_workers(group, workers)
    group.turns(3)
    victim = layers[-1]
    victim.learn(victim.reader.poll(max_records=10))  # learnt, and not made durable
    assert any(victim._unsaved(p) for p in victim.parts)
    durable = sum(s.events_learnt for s in group.store.latest_per_partition().values())
    group.crash(victim)  # what it learnt since its last snapshots is lost with it
    if workers == 1:
        group.start()  # restarted
    group.run_to_end()
    latest = check_exact(group.store, topic)
    assert sum(s.events_learnt for s in latest.values()) > durable


@WORKERS
def test_a_new_champion_re_bases_every_partition_on_its_cut_off(tmp_path, workers, caplog):
    topic = FakeTopic(partitions=4, events=100)
    group = Workers(tmp_path, topic)
    layers = start_workers(group, workers)
    group.turns(4)
    assert len(group.store.latest_sequences()) == 4  # each partition has a snapshot to drop
    cutoff = {0: 10, 1: 20, 2: 30, 3: 40}
    group.champion = a_champion("2", cutoff)
    watches = [layer.drift for layer in layers]
    with caplog.at_level("INFO", logger="pipelines.speed.layer"):
        group.run_to_end()
    latest = check_exact(group.store, topic, base=cutoff)
    assert {s.base_version for s in latest.values()} == {"2"}
    assert {p: s.base_offsets for p, s in latest.items()} == {p: {p: o} for p, o in cutoff.items()}
    assert all(layer.drift is not watch for layer, watch in zip(layers, watches, strict=True))
    assert "re-based on version 2 from offset" in caplog.text
    # The champion scored every event learnt after its cut-off.
    assert sum(s.scores.batch.seen for layer in layers for s in layer.parts.values()) == sum(
        s.events_learnt for s in latest.values()
    )


@WORKERS
def test_a_replay_starts_each_partition_afresh_from_the_given_offsets(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=100)
    first = Workers(tmp_path, topic)
    first.start(workers)
    first.run_to_end()  # every partition learnt from its start
    for layer in first.layers:
        first.stop(layer)
    replay = Workers(tmp_path, topic)
    replay.champion = a_champion("5", {0: 50})
    layers = start_workers(replay, workers, replay_from={0: 5, 2: 60})
    replay.run_to_end()
    base = {0: 5, 1: 0, 2: 60, 3: 0}
    latest = check_exact(replay.store, topic, base=base)
    assert {p: s.base_offsets for p, s in latest.items()} == {p: {p: o} for p, o in base.items()}
    assert {s.base_version for s in latest.values()} == {"5"}  # the champion of the replay
    assert sum(layer.learnt_here for layer in layers) >= sum(
        map(len, topic.labelled_from(base).values())
    )


@WORKERS
def test_the_owner_of_partition_0_registers_the_whole_model_after_a_re_base(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=60)
    group = Workers(tmp_path, topic, register_every_s=0)  # after re-bases only
    group.champion = a_champion("3", {})
    layers = group.start(workers, replay_from={})
    if workers == 2:
        for _ in range(3):  # the second worker's snapshots exist before the first registers
            layers[1].step()
    group.run_to_end()
    assert len(group.registered) == 1
    (index, location, whole), owner = group.registered[0], layers[0]
    assert index == 0 and 0 in owner.parts
    assert location.startswith(group.store.location) and location.endswith(".pkl")
    assert whole.partition is None and whole.base_version == "3"
    assert set(whole.offsets) == {0, 1, 2, 3}  # the peers' partitions too
    assert 0 < whole.events_learnt < sum(map(len, topic.labelled.values()))
    group.turns(5)
    assert len(group.registered) == 1  # no re-base since, and no interval


@WORKERS
def test_a_rising_champion_error_raises_the_drift_signal(tmp_path, workers):
    topic = FakeTopic(partitions=2, events=1600, flip_at=1000)
    group = Workers(tmp_path, topic, snapshot_every_events=1000)
    group.champion = a_champion("1", {})
    layers = group.start(workers)
    group.run_to_end()
    assert all(layer.drift.detections >= 1 for layer in layers)
    assert drift_raised_at(group.settings.signal_dir) is not None
    signal = json.loads((group.settings.signal_dir / SIGNAL_FILE).read_text())
    assert signal["events_learnt"] > 0 and signal["error_rate"] > 0
    group.champion = a_champion("2", {0: 1600, 1: 1600})
    group.turns(1)
    assert all(layer.drift.detections == 0 for layer in layers)  # watched anew


class OutageStore(SnapshotStore):
    """A snapshot store that refuses reads and writes while `down`, and counts the refusals."""

    def __init__(self, location) -> None:
        super().__init__(location)
        self.down = False
        self.refused = 0

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise OSError("store unreachable")

    def save(self, snapshot):
        self._check()
        return super().save(snapshot)

    def latest(self, partition=None):
        self._check()
        return super().latest(partition)

    def latest_sequences(self):
        self._check()
        return super().latest_sequences()


@WORKERS
def test_a_store_down_at_start_is_waited_out(tmp_path, workers, monkeypatch, caplog):
    monkeypatch.setattr("streams.consumer.RETRY_S", 0.01)
    monkeypatch.setattr("streams.consumer.MAX_RETRY_S", 0.02)
    topic = FakeTopic(partitions=4, events=100)
    store = OutageStore(tmp_path / "snapshots")
    before = Workers(tmp_path, topic, store=store)
    before.start(workers)
    before.turns(3)
    for layer in before.layers:
        before.stop(layer)
    after = Workers(tmp_path, topic, store=store)
    store.down = True
    with caplog.at_level("WARNING"):
        layers = after.start(workers)
        after.turns(20)
    assert all(not layer.parts and not layer.reader.positions for layer in layers)
    assert all(layer.learnt_here == 0 for layer in layers)  # waiting, not learning afresh
    assert "snapshot cannot be read yet: store unreachable" in caplog.text
    assert "wait: their owner cannot start them yet; trying again in" in caplog.text
    store.down = False
    after.run_to_end()
    check_exact(store, topic)


@WORKERS
def test_a_store_down_while_partitions_change_hands_loses_and_repeats_nothing(
    tmp_path, workers, caplog
):
    topic = FakeTopic(partitions=4, events=150)
    store = OutageStore(tmp_path / "snapshots")
    group = Workers(tmp_path, topic, store=store)
    (first,) = group.start()
    group.turns(3)
    store.down = True
    group.turns(2)  # learning on, snapshots refused
    refused = store.refused
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        if workers == 1:
            group.stop(first)  # its last save fails too; a new worker takes over
        group.start()  # the partitions change hands
    assert "revoked unsaved" in caplog.text or workers == 1
    assert store.refused - refused <= 1  # one failed save at most: no waiting in the rebalance
    store.down = False
    group.run_to_end()
    check_exact(store, topic)


class SpyReader(EventReader):
    def __init__(self, calls, *args, **kwargs):
        self.calls = calls
        super().__init__(*args, **kwargs)

    def flush_dead_letters(self):
        self.calls.append("flush dead letters")
        super().flush_dead_letters()

    def commit(self, positions, feedback_positions=None):
        self.calls.append("commit")
        super().commit(positions, feedback_positions)


class SpyStore(SnapshotStore):
    def __init__(self, location, calls):
        super().__init__(location)
        self.calls = calls

    def save(self, snapshot):
        self.calls.append("save snapshot")
        return super().save(snapshot)


@WORKERS
def test_progress_is_made_durable_in_order_and_committed_by_the_owner_only(tmp_path, workers):
    topic = FakeTopic(partitions=workers, events=50)  # a partition each
    group = FakeGroup(topic)
    calls: list[str] = []
    store = SpyStore(tmp_path / "snapshots", calls)
    settings = speed_settings(tmp_path, snapshot_every_events=40)
    layers: list[SpeedLayer] = []
    for _ in range(workers):
        reader = SpyReader(calls, group.consumer(), FakeProducer(), KAFKA, "speed")
        layers.append(SpeedLayer(reader, store, settings))
    while {p: o for layer in layers for p, o in layer.reader.positions.items()} != topic.ends:
        for layer in layers:
            layer.step()
    calls.clear()
    for layer in layers:
        assert layer.make_progress_durable()
    assert calls == ["flush dead letters", "save snapshot", "commit"] * workers
    assert group.committed == topic.ends
    calls.clear()
    SpyReader(calls, group.consumer(), FakeProducer(), KAFKA, "speed")  # joins: a rebalance
    assert "commit" not in calls and "save snapshot" not in calls  # all durable already


def run_layer(tmp_path, events: int, **settings):
    """One worker over a one-partition topic of `events` events, run to the end; the layer
    and its reports."""
    topic = FakeTopic(partitions=1, events=events, unlabelled_every=None)
    reports: list[tuple[dict[str, float], int]] = []
    reader = EventReader(FakeGroup(topic).consumer(), FakeProducer(), KAFKA, "speed")
    store = SnapshotStore(tmp_path / "snapshots")
    layer = SpeedLayer(
        reader,
        store,
        speed_settings(tmp_path, **settings),
        report=lambda metrics, step: reports.append((metrics, step)),
    )
    layer.run(Event(), max_events=events)
    return layer, store, reports


def test_the_layers_last_report_has_the_same_metrics_keys(tmp_path):
    layer, store, reports = run_layer(tmp_path, 30)
    metrics, step = reports[-1]
    assert step == 30
    assert layer.state.scores.figures().items() <= metrics.items()
    assert set(metrics) - set(layer.state.scores.figures()) == {
        "events_learnt",
        "unlabelled_seen",
        "batch_weight",
        "speed_weight",
        "batch_weight_on_batch_trained_texts",
        "drift_detections",
        "partitions_owned",
        *REPORTED_ONLY,
    }
    assert metrics["events_learnt"] == 30.0 and metrics["lag"] == metrics["lag_p0"] == 0.0
    assert metrics["partitions_owned"] == 1.0
    snapshot = store.latest(0)
    assert set(snapshot.metrics) == set(metrics) - REPORTED_ONLY - {
        "drift_detections",
        "partitions_owned",
    }


# What a report adds to the layer's own figures (a snapshot keeps those only).
REPORTED_ONLY = {
    "events_per_s",
    "lag",
    "lag_p0",
    "snapshot_age_s",
    "freshness_p50_s",
    "freshness_p95_s",
    "freshness_p99_s",
}


def test_the_layer_keeps_freshness_for_its_window_of_latest_events_only(tmp_path):
    layer, *_ = run_layer(tmp_path, 40, snapshot_every_events=10, freshness_window=15)
    assert len(layer.reporter.freshness_s) == 15


def test_waiting_for_partitions_is_not_idleness(tmp_path, monkeypatch):
    """A worker whose partitions wait for the store does not stop on `idle_exit_s`."""
    monkeypatch.setattr("streams.consumer.RETRY_S", 0.01)
    monkeypatch.setattr("streams.consumer.MAX_RETRY_S", 0.05)
    topic = FakeTopic(partitions=2, events=40)
    store = OutageStore(tmp_path / "snapshots")
    store.down = True
    group = Workers(tmp_path, topic, store=store)
    (layer,) = group.start()
    back = threading.Timer(0.6, lambda: setattr(store, "down", False))
    back.start()
    started = time.monotonic()
    layer.run(Event(), idle_exit_s=0.2)
    back.join()
    assert time.monotonic() - started >= 0.6
    check_exact(store, topic)


# The configured model: built from the spec, checked, recorded, and re-based on when it changes


@WORKERS
def test_the_layer_learns_the_configured_model_and_its_snapshots_say_which(tmp_path, workers):
    topic = FakeTopic(partitions=2, events=40)
    group = Workers(tmp_path, topic, model=NAIVE_BAYES, model_params={"alpha": 0.5})
    layers = group.start(workers)
    group.run_to_end()
    for layer in layers:
        assert layer.view() is None  # a River pipeline does not merge: its partition predicts
        for state in layer.parts.values():
            assert type(state.model).__name__ == "Pipeline"
            assert state.model["MultinomialNB"].alpha == 0.5
    latest = group.store.latest_per_partition()
    assert {p: s.events_learnt for p, s in latest.items()} == {
        p: len(pairs) for p, pairs in topic.labelled.items()
    }
    for snapshot in latest.values():
        assert snapshot.header.model_spec == {"factory": NAIVE_BAYES, "params": {"alpha": 0.5}}
        assert snapshot.header.format_version == SNAPSHOT_FORMAT


@WORKERS
def test_a_worker_with_the_same_spec_resumes_from_its_snapshots(tmp_path, workers):
    topic = FakeTopic(partitions=2, events=40)
    first = Workers(tmp_path, topic, model=NAIVE_BAYES)
    first.start(workers)
    first.run_to_end()
    saved = first.store.latest_per_partition()
    again = Workers(tmp_path, topic, model=NAIVE_BAYES)
    layers = again.start(workers)
    again.run_to_end()
    assert sum(layer.learnt_here for layer in layers) == 0
    for layer in layers:
        for partition, state in layer.parts.items():
            assert state.model is layer.durable[partition].model
            assert state.events_learnt == saved[partition].events_learnt


@WORKERS
def test_a_changed_spec_re_bases_from_the_start_without_a_champion(tmp_path, workers, caplog):
    topic = FakeTopic(partitions=2, events=40)
    first = Workers(tmp_path, topic, model=DEFAULT)
    first.start(workers)
    first.run_to_end()
    changed = Workers(tmp_path, topic, model=NAIVE_BAYES, model_params={"alpha": 0.5})
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        changed.start(workers)
        changed.run_to_end()
    for partition in (0, 1):
        assert (
            f"partition {partition} re-based on version None from offset 0: the speed model "
            f"changed from {DEFAULT} {{}} (snapshot "
        ) in caplog.text
    assert f') to {NAIVE_BAYES} {{"alpha": 0.5}}' in caplog.text
    latest = changed.store.latest_per_partition()
    assert {p: s.events_learnt for p, s in latest.items()} == {
        p: len(pairs) for p, pairs in topic.labelled.items()
    }  # replayed from the start, not from where the other model stood
    assert {s.header.model_spec["factory"] for s in latest.values()} == {NAIVE_BAYES}


def test_a_changed_spec_re_bases_from_the_current_champions_cut_off(tmp_path, caplog):
    topic = FakeTopic(partitions=1, events=40)
    first = Workers(tmp_path, topic, model=DEFAULT)
    first.champion = a_champion("3", {0: 10})
    first.start()
    first.run_to_end()
    changed = Workers(tmp_path, topic, model=NAIVE_BAYES)
    changed.champion = first.champion
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        (layer,) = changed.start()
        changed.run_to_end()
    assert "partition 0 re-based on version 3 from offset 10: the speed model changed" in (
        caplog.text
    )
    assert layer.champion is changed.champion
    assert (layer.state.base_version, layer.state.base_offsets) == ("3", {0: 10})
    expected = len(topic.labelled_from({0: 10})[0])
    assert layer.state.events_learnt == expected
    assert layer.state.scores.batch.seen == expected  # the champion scored every event replayed


def test_a_snapshot_that_cannot_be_read_is_re_based_on_with_the_reason(tmp_path, caplog):
    class UnreadableStore(SnapshotStore):
        def latest(self, partition=None):
            raise SnapshotUnreadable(tmp_path / "snapshot-p000-000000000007.pkl", 7, "EOFError")

    topic = FakeTopic(partitions=1, events=10)
    group = Workers(tmp_path, topic, store=UnreadableStore(tmp_path / "snapshots"))
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        (layer,) = group.start()
        group.run_to_end()
    assert (
        f"partition 0 re-based on version None from offset 0: snapshot "
        f"{tmp_path}/snapshot-p000-000000000007.pkl cannot be used: EOFError"
    ) in caplog.text
    assert layer.state.events_learnt == len(topic.labelled[0])


def test_a_factory_that_is_not_a_river_classifier_is_refused_before_any_event(tmp_path):
    group = Workers(tmp_path, FakeTopic(partitions=1, events=10), model="collections:OrderedDict")
    with pytest.raises(ModelContractError) as caught:
        group.start()
    assert str(caught.value) == (
        "the speed model collections:OrderedDict (OrderedDict) lacks learn_one, "
        "predict_proba_one: it must be a River classifier"
    )
    assert not group.store.latest_sequences()  # nothing read, nothing saved


def test_a_factory_that_cannot_be_imported_is_refused_before_any_event(tmp_path):
    group = Workers(tmp_path, FakeTopic(partitions=1, events=10), model="no_such_module:build")
    with pytest.raises(ModelSpecError, match="cannot import no_such_module"):
        group.start()


def test_the_model_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEED_MODEL", NAIVE_BAYES)
    monkeypatch.setenv("SPEED_MODEL_PARAMS", '{"alpha": 0.25}')
    monkeypatch.setenv("SPEED_REGISTER_EVERY_S", "0")
    settings = SpeedSettings()
    assert (settings.model, settings.model_params) == (NAIVE_BAYES, {"alpha": 0.25})
    assert settings.register_every_s == 0
    monkeypatch.delenv("SPEED_MODEL")
    monkeypatch.delenv("SPEED_MODEL_PARAMS")
    assert (SpeedSettings().model, SpeedSettings().model_params) == (DEFAULT, {})


# Labels on the feedback topic, joined to their queries


def intent_of(text: str) -> str:
    """The intent of a text of `FakeTopic`."""
    return INTENTS[TEXTS.index(text.rsplit(" ", 1)[0])]


def label_every(
    topic: FakeTopic, labels: FakeLabels, every: int
) -> dict[int, list[tuple[str, str]]]:
    """A label on the feedback topic for every `every`-th query of each partition, in its
    query's partition; each partition's (text, intent) pairs so labelled."""
    pairs: dict[int, list[tuple[str, str]]] = {}
    for partition, records in topic.records.items():
        pairs[partition] = []
        for record in records[::every]:
            event = parse_event(record.value)
            labels.append(partition, label_bytes(event.query_id, intent_of(event.text)))
            pairs[partition].append((event.text, intent_of(event.text)))
    return pairs


def start_joining(workers: Workers, count: int) -> list[SpeedLayer]:
    """`count` workers, the second joining once the first has made labels durable."""
    layers = workers.start(1)
    while count == 2 and not any(
        s.events_learnt for s in workers.store.latest_per_partition().values()
    ):
        workers.turns()
    return layers + (workers.start(1) if count == 2 else [])


def check_learnt(workers: Workers, expected: dict[int, list[tuple[str, str]]]) -> dict:
    """Every partition's newest snapshot holds the ends of both topics and has learnt each of
    `expected`'s pairs once, and the snapshots add up to one model of them all."""
    latest = workers.store.latest_per_partition()
    assert workers.labels is not None
    assert {p: (s.offsets, s.feedback_offsets) for p, s in latest.items()} == {
        p: ({p: end}, {p: workers.labels.ends[p]}) for p, end in workers.topic.ends.items()
    }
    assert_adds_up(latest, expected)
    return latest


@WORKERS
def test_late_labels_are_joined_to_their_queries_and_learnt_once(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=60, unlabelled_every=1)
    labels = FakeLabels(4)
    expected = label_every(topic, labels, every=3)
    group = Workers(tmp_path, topic, labels=labels)
    group.champion = a_champion("1", {})
    layers = start_joining(group, workers)
    group.run_to_end()
    check_learnt(group, expected)
    assert not group.reasons  # every label met its query
    assert group.group.committed == topic.ends and group.group.committed_labels == labels.ends
    for layer in layers:
        metrics = layer.metrics()
        assert metrics["queries_awaiting_label"] == 40 * len(layer.parts)  # the unlabelled
        assert metrics["labels_awaiting_query"] == 0
        for state in layer.parts.values():  # the champion scored what it was asked then
            assert state.scores.batch.seen == state.scores.speed.seen == state.labels_joined


def test_a_late_label_scores_the_prediction_made_when_its_query_came(tmp_path):
    topic = FakeTopic(partitions=1, events=0)
    text = "set an alarm for seven 1"
    topic.append(0, event_bytes(0, None, text))  # asked first, labelled later
    for i in range(1, 6):
        topic.append(0, event_bytes(i, "alarm", text))  # the same text, labelled inline
    labels = FakeLabels(1)
    labels.append(0, label_bytes("q0", "alarm"))
    group = Workers(tmp_path, topic, labels=labels)
    (layer,) = group.start()
    group.run_to_end()
    scores = layer.state.scores.speed
    # q0 was predicted by a model that knew nothing: a first-seen miss, however much the model
    # had learnt of its text by the time the label came.
    assert (scores.seen, scores.first_seen.seen, scores.all.correct) == (6, 2, 4)
    assert layer.state.events_learnt == 6 and layer.state.labels_joined == 1


@WORKERS
def test_kill_9_with_labels_pending_learns_each_label_once(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=60, unlabelled_every=1)
    labels = FakeLabels(4)
    expected = label_every(topic, labels, every=2)
    group = Workers(tmp_path, topic, labels=labels)
    layers = start_joining(group, workers)
    while not (
        len(latest := group.store.latest_per_partition()) == 4
        and all(s.events_learnt for s in latest.values())
    ):
        group.turns()
    victim = layers[-1]
    victim.learn(victim.reader.poll(max_records=10))  # labels learnt, and not made durable
    assert any(victim._unsaved(p) for p in victim.parts)
    assert any(s.joins and s.joins.awaiting for s in victim.parts.values())  # pending labels
    group.crash(victim)
    if workers == 1:
        group.start()  # restarted
    group.run_to_end()
    check_learnt(group, expected)
    assert not group.reasons


@WORKERS
def test_a_label_read_before_its_query_waits_for_it(tmp_path, workers):
    topic = FakeTopic(partitions=2, events=10, unlabelled_every=1)
    labels = FakeLabels(2)
    labels.append(1, label_bytes("q-soon", "weather"))
    group = Workers(tmp_path, topic, labels=labels)
    layers = group.start(workers)
    group.run_to_end()
    assert sum(layer.metrics()["labels_awaiting_query"] for layer in layers) == 1
    topic.append(1, QueryEvent(query_id="q-soon", ts=TS, text="will it snow").to_json_bytes())
    group.run_to_end()
    check_learnt(group, {0: [], 1: [("will it snow", "weather")]})
    assert not group.reasons


def test_a_label_past_the_join_window_is_dead_lettered_with_the_reason(tmp_path):
    topic = FakeTopic(partitions=1, events=8, unlabelled_every=1)
    labels = FakeLabels(1)
    labels.append(0, label_bytes("q0", "alarm"))  # its query left the window 5 queries later
    late = TS + timedelta(seconds=3601)
    labels.append(0, label_bytes("q7", "weather", ts=late))  # given over an hour after it
    labels.append(0, label_bytes("q6", "music"))  # in time
    group = Workers(tmp_path, topic, labels=labels, join_window_events=5, join_window_s=3600)
    (layer,) = group.start()
    group.run_to_end()
    assert group.reasons == [
        "past the join window: query 'q0' (offset 0) left the window (5 events, 3600 s) "
        "unlabelled before this label came",
        "past the join window: the label came 3601 s after query 'q7', over 3600 s",
    ]
    assert group.dead_letters[0].sent[0] == label_bytes("q0", "alarm")
    check_learnt(group, {0: [(parse_event(topic.records[0][6].value).text, "music")]})
    assert layer.state.labels_dead_lettered == 2 and layer.state.labels_joined == 1


def test_a_label_whose_query_never_comes_is_dead_lettered_once_the_window_passes(tmp_path):
    topic = FakeTopic(partitions=1, events=3, unlabelled_every=1)
    labels = FakeLabels(1)
    labels.append(0, label_bytes("q-never", "alarm"))
    group = Workers(tmp_path, topic, labels=labels, join_window_events=5)
    (layer,) = group.start()
    group.run_to_end()
    assert not group.reasons and layer.metrics()["labels_awaiting_query"] == 1
    for i in range(3, 9):  # the window passes
        topic.append(0, event_bytes(i, None, "play some jazz"))
    group.run_to_end()
    assert group.reasons == [
        "no query 'q-never' came within the join window (5 events, 86400 s) of its label"
    ]
    assert layer.metrics()["labels_awaiting_query"] == 0
    check_learnt(group, {0: []})


@WORKERS
def test_a_querys_first_label_is_learnt_and_a_second_dead_lettered(tmp_path, workers):
    topic = FakeTopic(partitions=2, events=4, unlabelled_every=1)
    labels = FakeLabels(2)
    first = parse_event(topic.records[1][2].value)
    labels.append(1, label_bytes(first.query_id, "alarm"))
    labels.append(1, label_bytes(first.query_id, "music"))  # a correction
    labels.append(1, label_bytes(first.query_id, "alarm"))  # a repeat
    labels.append(0, label_bytes("q-early", "weather"))  # twice before its query
    labels.append(0, label_bytes("q-early", "music"))
    group = Workers(tmp_path, topic, labels=labels)
    group.start(workers)
    group.run_to_end()
    topic.append(0, QueryEvent(query_id="q-early", ts=TS, text="is it sunny").to_json_bytes())
    group.run_to_end()
    second = (
        "a second label for query {!r}: the speed layer learns a query's first label only "
        "({!r}); the batch layer takes the last"
    )
    assert sorted(group.reasons) == sorted(
        [
            second.format(first.query_id, "alarm"),
            second.format(first.query_id, "alarm"),
            second.format("q-early", "weather"),
        ]
    )
    check_learnt(group, {0: [("is it sunny", "weather")], 1: [(first.text, "alarm")]})


def test_the_answers_served_are_scored_against_their_labels(tmp_path):
    topic = FakeTopic(partitions=1, events=0)
    served = {"intent": "alarm", "confidence": 0.9, "source": "blend", "top_k": []}
    for i, text in enumerate(["set an alarm 1", "play jazz 2", "will it rain 3"]):
        answer = served | {"batch_weight": 1.0, "speed_weight": 0.0}
        topic.append(0, event_bytes(i, None, text, served=answer))
    topic.append(0, event_bytes(3, "alarm", "wake me up 4", served=answer))  # labelled inline
    labels = FakeLabels(1)
    labels.append(0, label_bytes("q0", "alarm"))
    labels.append(0, label_bytes("q1", "music"))
    group = Workers(tmp_path, topic, labels=labels)
    (layer,) = group.start()
    group.run_to_end()
    metrics = layer.metrics()
    assert metrics["served_labelled"] == 3 and metrics["served_accuracy"] == pytest.approx(2 / 3)
    assert group.store.latest(0).metrics["served_accuracy"] == pytest.approx(2 / 3)
    samples = {(name, labels): value for name, labels, value in speed_samples(metrics)}
    assert samples[("lambda_ml_speed_served_accuracy", ())] == pytest.approx(2 / 3)
    assert samples[("lambda_ml_speed_queries_awaiting_label", ())] == 1  # q2's never came


@WORKERS
def test_a_re_base_learns_again_the_labels_of_the_queries_it_reads_again(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=40, unlabelled_every=1)
    labels = FakeLabels(4)
    label_every(topic, labels, every=2)
    group = Workers(tmp_path, topic, labels=labels)
    group.start(workers)
    group.run_to_end()  # every label learnt, on no champion
    cutoff = {0: 10, 1: 20, 2: 30, 3: 40}
    group.champion = a_champion("2", cutoff)
    group.turns()  # the workers take it up
    group.run_to_end()
    # The fresh models learnt the labels of the queries read again, from the join: the labels
    # of the queries before the cut-off stay with the champion.
    expected = {
        p: [
            (e.text, intent_of(e.text))
            for e in map(parse_event, (r.value for r in topic.records[p][cutoff[p] :]))
            if int(e.query_id[1:]) % 2 == 0
        ]
        for p in range(4)
    }
    latest = check_learnt(group, expected)
    assert {s.base_version for s in latest.values()} == {"2"}
    assert not group.reasons


@WORKERS
def test_queries_labelled_inline_are_learnt_as_before_beside_a_feedback_topic(tmp_path, workers):
    topic = FakeTopic(partitions=4, events=60, bad=3)
    group = Workers(tmp_path, topic, labels=FakeLabels(4))
    start_workers(group, workers)
    group.run_to_end()
    check_exact(group.store, topic)
    assert group.reasons == ["not JSON: Expecting value at char 0"] * 4  # the bad ones only


SCOPED_INTENTS = ("alarm", "weather", "timer", "translate", OOS_LABEL)


@pytest.fixture(scope="module")
def scoped_stream():
    """A champion with a scope decision, fitted on CLINC150's train rows of a few intents and
    out-of-scope queries, and test rows of the same it never saw, shuffled."""
    examples = [e for e in load_dataset(CLINC150_DATA).examples if e.intent in SCOPED_INTENTS]
    train = [e for e in examples if e.split in ("train", "oos_train")]
    estimator = ScopeClassifier(make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)))
    estimator.fit([e.text for e in train], [e.intent for e in train])
    test = [(e.text, e.intent) for e in examples if e.split in ("test", "oos_test")]
    test = [pair for pair in test if pair[1] != OOS_LABEL] + [
        pair for pair in test if pair[1] == OOS_LABEL
    ][:60]
    return ChampionInfo("m", "4", "run", {0: 0}), estimator, sorted(test, key=hash)


@pytest.mark.parametrize("late", [False, True], ids=["inline labels", "late labels"])
def test_the_worker_scores_how_each_view_judges_scope_on_novel_texts(tmp_path, scoped_stream, late):
    """With a scoped champion, each view's judgement of a novel query's scope, made when it
    arrived, is scored against its label, labelled inline or later, and exported."""
    info, estimator, pairs = scoped_stream
    topic, labels = FakeTopic(partitions=1, events=0), FakeLabels(1)
    for i, (text, intent) in enumerate(pairs):
        topic.append(0, event_bytes(i, None if late else intent, text))
        if late:
            labels.append(0, label_bytes(f"q{i}", intent))
    group = Workers(tmp_path, topic, labels=labels)
    group.champion = ChampionModel(info, estimator, None)
    (layer,) = group.start()
    group.run_to_end()
    scores = layer.state.scores
    out = sum(intent == OOS_LABEL for _, intent in pairs)
    assert (scores.batch.scope.out_of_scope, scores.batch.scope.in_scope) == (out, len(pairs) - out)
    assert scores.batch.scope.turned_away > out / 2  # the champion's decision turns most away
    assert scores.blend.scope.out_of_scope == out
    samples = {(name, labels): value for name, labels, value in speed_samples(layer.metrics())}
    # With late labels every query came before any label: the speed model knew no intent then,
    # so it judged none of them, and only the champion and the blend are scored.
    judging = ("batch", "blend") if late else ("speed", "batch", "blend")
    for view in judging:
        score = getattr(scores, view).scope
        assert samples["lambda_ml_speed_oos_recall", (view,)] == score.oos_recall
        assert samples["lambda_ml_speed_in_scope_accuracy", (view,)] == score.in_scope_accuracy
    assert {labels for name, labels in samples if name.endswith("oos_recall")} == {
        (view,) for view in judging
    }
