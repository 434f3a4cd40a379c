"""The speed layer's collaborators and its loop, without Kafka: when snapshots are due, drift
raising the signal, what a report holds, the order that makes progress durable, the configured
model and the re-base when it changes, and when snapshots are registered."""

import json
from datetime import UTC, datetime
from threading import Event

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from common.settings import MlflowSettings, SpeedSettings
from models.blend import HedgeBlender
from models.contracts import ModelContractError
from models.model_spec import ModelSpecError
from models.registry import ChampionInfo, ChampionModel
from models.snapshot import (
    SNAPSHOT_FORMAT,
    SnapshotHeader,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
)
from pipelines.signals import SIGNAL_FILE, drift_raised_at
from pipelines.speed import schedules as speed_loop
from pipelines.speed.layer import GroupSpeedLayer, SpeedLayer
from pipelines.speed.schedules import (
    DriftWatch,
    RegistrationSchedule,
    SnapshotSchedule,
    SpeedReport,
)
from pipelines.tracking import RunReporter, SnapshotRegistrar, snapshot_tags
from streams.consumer import MAX_POLL_RECORDS, Consumed
from streams.schema import QueryEvent


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
    schedule.restart_count()  # a re-base counts from zero again
    assert schedule.records_to_poll(0) == 100


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
    report.restart_count()
    report.made_durable()
    assert not report.freshness_s and report.freshness_percentiles_s() == {}
    clock.now += 10
    assert report.send(30, dict, lambda: None)["events_per_s"] == 3.0  # counted from zero


# SpeedLayer, over a reader and a store that record what they are asked


class FakeReader:
    """One partition of labelled events, in memory; `calls` records the durable steps."""

    def __init__(self, events: int, calls: list[str]) -> None:
        self.calls = calls
        ts = datetime(2026, 1, 1, tzinfo=UTC)
        texts = ["set an alarm", "play a song", "what is the weather"]
        intents = ["alarm", "music", "weather"]
        self.events = [
            QueryEvent(query_id=f"q{i}", ts=ts, text=texts[i % 3], intent=intents[i % 3])
            for i in range(events)
        ]
        self.positions: dict[int, int] = {0: 0}
        self.committed: list[dict[int, int]] = []

    def seek(self, offsets: dict[int, int]) -> None:
        self.positions = {0: offsets.get(0, 0)}

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        start = self.positions[0]
        chosen = self.events[start : start + (max_records or len(self.events))]
        self.positions = {0: start + len(chosen)}
        return [Consumed(event, 0, start + i) for i, event in enumerate(chosen)]

    def flush_dead_letters(self) -> None:
        self.calls.append("flush dead letters")

    def commit(self, positions: dict[int, int]) -> None:
        self.calls.append("commit")
        self.committed.append(dict(positions))

    def partition_lag(self) -> dict[int, int] | None:
        return {0: len(self.events) - self.positions[0]}


class FakeStore:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.saved: list[SpeedSnapshot] = []

    def save(self, snapshot: SpeedSnapshot) -> str:
        self.calls.append("save snapshot")
        self.saved.append(snapshot)
        snapshot.sequence = len(self.saved)
        return f"snapshot-{len(self.saved)}"

    def latest(self) -> SpeedSnapshot | None:
        return self.saved[-1] if self.saved else None

    def latest_sequence(self) -> int | None:
        return len(self.saved) or None


def run_layer(tmp_path, events: int, **settings):
    calls: list[str] = []
    reader, store = FakeReader(events, calls), FakeStore(calls)
    reports: list[tuple[dict[str, float], int]] = []
    layer = SpeedLayer(
        reader,
        store,
        speed_settings(tmp_path, **settings),
        current_champion=lambda: None,
        report=lambda metrics, step: reports.append((metrics, step)),
    )
    layer.run(Event(), max_events=events)
    return layer, reader, store, calls, reports


class DownStore(FakeStore):
    """A store that refuses the saves numbered in `down` (1-based), as one that is unreachable
    for a while."""

    def __init__(self, calls: list[str], down: set[int]) -> None:
        super().__init__(calls)
        self.down, self.attempts = down, 0

    def save(self, snapshot: SpeedSnapshot) -> str:
        self.attempts += 1
        if self.attempts in self.down:
            self.calls.append("save failed")
            raise OSError("store unreachable")
        return super().save(snapshot)


def test_a_store_that_is_down_delays_the_snapshot_and_commit_but_not_the_learning(tmp_path, caplog):
    calls: list[str] = []
    reader, store = FakeReader(250, calls), DownStore(calls, down={1, 2})
    layer = SpeedLayer(reader, store, speed_settings(tmp_path, snapshot_every_events=100))
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=250)
    assert "snapshot not saved" in caplog.text and "store unreachable" in caplog.text
    assert layer.state.events_learnt == 250
    # Nothing was committed while the store was down; the next save held every event.
    assert reader.committed == [{0: 250}]
    assert [s.offsets for s in store.saved] == [{0: 250}]
    assert calls.count("commit") == 1 and calls.index("commit") > calls.index("save snapshot")


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


def test_progress_is_made_durable_in_order_dead_letters_snapshot_commit(tmp_path):
    layer, reader, store, calls, _ = run_layer(tmp_path, 250, snapshot_every_events=100)
    assert calls == ["flush dead letters", "save snapshot", "commit"] * 3
    assert [s.offsets for s in store.saved] == [{0: 100}, {0: 200}, {0: 250}]
    assert reader.committed == [s.offsets for s in store.saved]
    assert [s.events_learnt for s in store.saved] == [100, 200, 250]
    calls.clear()
    assert layer.make_progress_durable().offsets == {0: 250}
    assert calls == ["flush dead letters", "save snapshot", "commit"]


def test_the_layers_last_report_has_the_same_metrics_keys(tmp_path):
    layer, _, store, _, reports = run_layer(tmp_path, 30)
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
        *REPORTED_ONLY,
    }
    assert metrics["events_learnt"] == 30.0 and metrics["lag"] == metrics["lag_p0"] == 0.0
    assert set(store.saved[-1].metrics) == set(metrics) - REPORTED_ONLY


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


# The configured model: built from the spec, checked, recorded, and re-based on when it changes

DEFAULT = "models.speed_model:build_speed_model"
NAIVE_BAYES = "models.alternatives:river_naive_bayes"


def make_layer(tmp_path, store, calls=None, events=30, champion=None, register=None, **settings):
    reader = FakeReader(events, calls if calls is not None else [])
    layer = SpeedLayer(
        reader,
        store,
        speed_settings(tmp_path, **({"snapshot_every_events": 5} | settings)),
        current_champion=lambda: champion,
        register=register,
    )
    return layer, reader


def a_champion(version: str, cutoff: dict[int, int]) -> ChampionModel:
    texts = ["set an alarm", "play a song", "what is the weather"]
    estimator = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(
        texts, ["alarm", "music", "weather"]
    )
    return ChampionModel(ChampionInfo("m", version, "run", cutoff), estimator, None)


def test_the_layer_learns_the_configured_model_and_its_snapshots_say_which(tmp_path):
    store = FakeStore([])
    layer, _ = make_layer(tmp_path, store, model=NAIVE_BAYES, model_params={"alpha": 0.5})
    assert type(layer.state.model).__name__ == "Pipeline"
    assert layer.state.model["MultinomialNB"].alpha == 0.5
    layer.run(Event(), max_events=30)
    assert layer.state.events_learnt == 30
    header = store.saved[-1].header
    assert header.model_spec == {"factory": NAIVE_BAYES, "params": {"alpha": 0.5}}
    assert header.format_version == SNAPSHOT_FORMAT


def test_a_layer_with_the_same_spec_resumes_from_its_snapshot(tmp_path):
    store = FakeStore([])
    first, _ = make_layer(tmp_path, store, model=NAIVE_BAYES)
    first.run(Event(), max_events=10)
    second, reader = make_layer(tmp_path, store, model=NAIVE_BAYES)
    assert second.rebase_reason is None
    assert second.state.model is store.saved[-1].model
    assert reader.positions == {0: 10} and second.state.events_learnt == 10


def test_a_changed_spec_re_bases_from_the_start_without_a_champion_and_says_why(tmp_path, caplog):
    store = FakeStore([])
    first, _ = make_layer(tmp_path, store, model=DEFAULT)
    first.run(Event(), max_events=20)
    assert store.saved[-1].offsets == {0: 20}
    layer, reader = make_layer(tmp_path, store, model=NAIVE_BAYES, model_params={"alpha": 0.5})
    reason = (
        f"the speed model changed from {DEFAULT} {{}} (snapshot 4) to "
        f'{NAIVE_BAYES} {{"alpha": 0.5}}'
    )
    assert layer.rebase_reason == reason
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=30)
    assert f"re-basing on version None from offsets {{}}: {reason}" in caplog.text
    assert layer.rebase_reason is None
    assert layer.state.events_learnt == 30  # replayed from the start, not from offset 20
    assert store.saved[-1].offsets == {0: 30}
    assert store.saved[-1].header.model_spec["factory"] == NAIVE_BAYES
    assert type(store.saved[-1].model).__name__ == "Pipeline"


def test_a_changed_spec_re_bases_from_the_current_champions_cut_off(tmp_path, caplog):
    store = FakeStore([])
    champion = a_champion("3", {0: 10})
    first, _ = make_layer(tmp_path, store, model=DEFAULT, champion=champion)
    first.run(Event(), max_events=20)  # re-based on the champion: events 10 to 30
    assert (store.saved[-1].base_version, store.saved[-1].offsets) == ("3", {0: 30})
    layer, reader = make_layer(tmp_path, store, model=NAIVE_BAYES, champion=champion)
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=15)
    assert "re-basing on version 3 from offsets {0: 10}: the speed model changed" in caplog.text
    assert layer.champion is champion
    assert (layer.state.base_version, layer.state.base_offsets) == ("3", {0: 10})
    assert layer.state.events_learnt == 15 and reader.positions == {0: 25}
    assert layer.state.scores.batch.seen == 15  # the champion scored every event replayed


def test_a_snapshot_that_cannot_be_read_is_re_based_on_with_the_reason(tmp_path, caplog):
    class UnreadableStore(FakeStore):
        def latest(self):
            raise SnapshotUnreadable(tmp_path / "snapshot-000000000007.pkl", 7, "EOFError")

    store = UnreadableStore([])
    layer, reader = make_layer(tmp_path, store, events=10)
    assert (
        layer.rebase_reason
        == f"snapshot {tmp_path}/snapshot-000000000007.pkl cannot be used: EOFError"
    )
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=10)
    assert "cannot be used: EOFError" in caplog.text
    assert layer.state.events_learnt == 10


def test_a_factory_that_is_not_a_river_classifier_is_refused_before_any_event(tmp_path):
    calls: list[str] = []
    with pytest.raises(ModelContractError) as caught:
        make_layer(tmp_path, FakeStore(calls), calls, model="collections:OrderedDict")
    assert str(caught.value) == (
        "the speed model collections:OrderedDict (OrderedDict) lacks learn_one, "
        "predict_proba_one: it must be a River classifier"
    )
    assert calls == []  # nothing read, nothing saved


def test_a_factory_that_cannot_be_imported_is_refused_before_any_event(tmp_path):
    with pytest.raises(ModelSpecError, match="cannot import no_such_module"):
        make_layer(tmp_path, FakeStore([]), model="no_such_module:build")


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


# Registration in MLflow: when the layer hands a snapshot over


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


def test_the_first_snapshot_after_a_re_base_is_handed_over_for_registration(tmp_path):
    handed: list[tuple[str, SpeedSnapshot]] = []
    store = FakeStore([])
    layer, _ = make_layer(
        tmp_path,
        store,
        events=50,
        register=lambda path, snapshot: handed.append((path, snapshot)),
        snapshot_every_events=10,
        register_every_s=0,
    )
    layer.run(Event(), max_events=20)
    assert handed == []  # a plain start is not a re-base
    layer.rebase({0: 5}, "4")
    layer.run(Event(), max_events=40)
    assert [(path, s.offsets, s.base_version) for path, s in handed] == [
        ("snapshot-3", {0: 15}, "4")
    ]


def test_a_failing_registration_is_logged_and_the_stream_goes_on(tmp_path, caplog):
    def broken(path, snapshot):
        raise OSError("disk full")

    layer, _ = make_layer(
        tmp_path, FakeStore([]), events=30, register=broken, snapshot_every_events=10
    )
    layer.rebase({}, None)
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=30)
    assert "could not hand snapshot snapshot-1 over for registration: disk full" in caplog.text
    assert layer.state.events_learnt == 30


def test_the_registrar_warns_when_mlflow_is_down_and_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = MlflowSettings(tracking_uri="http://127.0.0.1:9", registered_model="m")
    store = SnapshotStore(tmp_path / "snapshots")
    path = store.save(
        SpeedSnapshot(model={}, blender=HedgeBlender(), offsets={0: 1}, events_learnt=1)
    )
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
        blender=HedgeBlender(),
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


class FakeGroupReader(FakeReader):
    """`FakeReader` as a group member owning partitions 0 and 1 (the events all in 0)."""

    def __init__(self, events: int, calls: list[str]) -> None:
        super().__init__(events, calls)
        self.on_assigned = self.on_revoked = None
        self.rebalances = 0

    def assign(self) -> None:
        self.on_assigned([0, 1])
        self.positions = {0: 0, 1: 0}

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        consumed = super().poll(timeout_ms, max_records)
        self.positions[1] = 0
        return consumed

    def latest_sequences(self) -> dict[int, int]:
        return {}


class PartitionedDownStore(DownStore):
    def latest(self, partition: int | None = None) -> SpeedSnapshot | None:
        return None

    def latest_sequences(self) -> dict[int, int]:
        return {}


def test_a_group_worker_commits_nothing_while_the_store_refuses_its_snapshots(tmp_path, caplog):
    calls: list[str] = []
    reader, store = FakeGroupReader(250, calls), PartitionedDownStore(calls, down={1})
    layer = GroupSpeedLayer(reader, store, speed_settings(tmp_path, snapshot_every_events=100))
    reader.assign()
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer.run(Event(), max_events=250)
    assert "partition 0's snapshot not saved: store unreachable" in caplog.text
    assert layer.learnt_here == 250
    # The first attempt failed: no commit until a snapshot of partition 0 was durable.
    assert calls[:2] == ["flush dead letters", "save failed"]
    assert calls.index("commit") > calls.index("save snapshot")
    first_saved = next(s for s in store.saved if s.partition == 0)
    assert reader.committed[0][0] == first_saved.offsets[0] > 100
    last_saved = [s for s in store.saved if s.partition == 0][-1]
    assert last_saved.offsets == {0: 250} and last_saved.events_learnt == 250
