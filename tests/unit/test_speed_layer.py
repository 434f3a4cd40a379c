"""The speed layer's collaborators and its loop, without Kafka: when snapshots are due, drift
raising the signal, what a report holds, and the order that makes progress durable."""

import json
from datetime import UTC, datetime
from threading import Event

import pytest

from common.settings import SpeedSettings
from models.snapshot import SpeedSnapshot
from pipelines import speed_loop
from pipelines.signals import SIGNAL_FILE, drift_raised_at
from pipelines.speed import SpeedLayer
from pipelines.speed_loop import DriftWatch, SnapshotSchedule, SpeedReport
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

    def recording(directory, details):
        raised.append(details)
        real(directory, details)

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
    second = report.send(170, lambda: {"events_learnt": 170.0}, lambda: 7)
    assert second == {
        "events_learnt": 170.0,
        "events_per_s": 5.0,  # 20 events in 4 s: only since the last report
        "lag": 7.0,
        "freshness_p95_s": 1.0,
    }
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
    assert not report.freshness_s and report.freshness_p95_s() is None
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

    def lag(self) -> int | None:
        return len(self.events) - self.positions[0]


class FakeStore:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.saved: list[SpeedSnapshot] = []

    def save(self, snapshot: SpeedSnapshot) -> str:
        self.calls.append("save snapshot")
        self.saved.append(snapshot)
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
        "events_per_s",
        "lag",
        "freshness_p95_s",
    }
    assert metrics["events_learnt"] == 30.0 and metrics["lag"] == 0.0
    assert set(store.saved[-1].metrics) == set(metrics) - {"events_per_s", "lag", "freshness_p95_s"}


def test_the_layer_keeps_freshness_for_its_window_of_latest_events_only(tmp_path):
    layer, *_ = run_layer(tmp_path, 40, snapshot_every_events=10, freshness_window=15)
    assert len(layer.reporter.freshness_s) == 15
