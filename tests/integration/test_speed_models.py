"""The shipped alternative speed models end to end on the real broker: chosen by `SPEED_MODEL`
alone, they learn every labelled event of a replay, their snapshots' headers name them, and
serving's reloader and predict path answer with them; switching the model re-bases and replays
the stream."""

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from threading import Event

import pytest

from common.settings import KafkaSettings, SpeedSettings
from models.snapshot import SNAPSHOT_FORMAT, SnapshotStore
from pipelines.speed.job import run_speed
from serving.model_state import ModelReloader
from serving.predict import predict_texts
from streams.dataset import CLINC150_DATA, Example, load_dataset
from streams.producer import make_producer
from streams.schema import QueryEvent
from tests.integration.kafka_reading import end_offsets

pytestmark = pytest.mark.integration

INTENTS = ("alarm", "weather", "timer", "translate")
NAIVE_BAYES = "models.alternatives:river_naive_bayes"
SOFTMAX = "models.alternatives:river_softmax"


def training_rows() -> list[Example]:
    return [
        e
        for e in load_dataset(CLINC150_DATA).examples
        if e.split == "train" and e.intent in INTENTS
    ]


@pytest.fixture(scope="module")
def stream(kafka) -> tuple[KafkaSettings, int]:
    """Two shuffled passes over four intents' training rows, one event in ten unlabelled, on one
    partition; and the number of labelled events."""
    settings = kafka.fresh_settings(partitions=1)
    rng = random.Random(5)
    rows = training_rows() * 2
    rng.shuffle(rows)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    producer = make_producer(settings)
    labelled = 0
    for i, row in enumerate(rows):
        unlabelled = rng.random() < 0.1
        labelled += not unlabelled
        event = QueryEvent(
            query_id=f"q{i}",
            ts=start + timedelta(seconds=i),
            text=row.text,
            intent=None if unlabelled else row.intent,
        )
        producer.send(settings.topic, key=event.key, value=event.to_json_bytes())
    producer.flush()
    producer.close()
    return settings, labelled


def speed_settings(tmp_path, monkeypatch, factory: str) -> SpeedSettings:
    """The speed layer's settings as a worker reads them, with `SPEED_MODEL=factory`."""
    monkeypatch.setenv("SPEED_MODEL", factory)
    monkeypatch.delenv("SPEED_MODEL_PARAMS", raising=False)
    return SpeedSettings(
        snapshot_dir=tmp_path / "snapshots",
        signal_dir=tmp_path / "signals",
        group_id=f"speed-models-{uuid.uuid4().hex[:8]}",
        snapshot_every_events=250,
    )


def assert_serves_its_intents(settings: SpeedSettings) -> None:
    """Serving loads the newest snapshot and answers a trained text with its intent."""
    reloader = ModelReloader(None, SnapshotStore(settings.snapshot_dir))
    assert reloader.refresh_snapshot()
    rows = training_rows()
    predictions = predict_texts(
        reloader.current, [r.text for r in rows], top_k=3, max_snapshot_age_s=math.inf
    )
    right = [p.intent == r.intent for p, r in zip(predictions, rows, strict=True)]
    assert all(p.source == "speed" for p in predictions)
    assert sum(right) / len(right) >= 0.95
    first_of_each = {r.intent: i for i, r in reversed(list(enumerate(rows)))}
    assert all(right[i] for i in first_of_each.values())


@pytest.mark.parametrize("factory", [NAIVE_BAYES, SOFTMAX])
def test_a_shipped_alternative_learns_the_stream_and_serves_its_intents(
    stream, factory, tmp_path, monkeypatch
):
    kafka, labelled = stream
    settings = speed_settings(tmp_path, monkeypatch, factory)
    assert settings.model == factory
    layer = run_speed(kafka, settings, None, Event(), idle_exit_s=3)
    assert layer.state.events_learnt == labelled
    snapshot = SnapshotStore(settings.snapshot_dir).latest(0)
    assert snapshot.events_learnt == labelled
    assert snapshot.offsets == end_offsets(kafka.bootstrap, kafka.topic)
    assert snapshot.header.format_version == SNAPSHOT_FORMAT
    assert snapshot.header.model_spec == {"factory": factory, "params": {}}
    assert type(snapshot.model).__name__ == "Pipeline"
    assert_serves_its_intents(settings)
    # Started again with the same model, the worker resumes: nothing is learnt twice.
    again = run_speed(kafka, settings, None, Event(), idle_exit_s=2)
    assert again.learnt_here == 0 and again.state.events_learnt == labelled


def test_switching_the_model_re_bases_and_replays_the_stream(stream, tmp_path, monkeypatch, caplog):
    kafka, labelled = stream
    first = run_speed(kafka, speed_settings(tmp_path, monkeypatch, NAIVE_BAYES), None, Event(), 3)
    assert first.state.events_learnt == labelled
    settings = speed_settings(tmp_path, monkeypatch, SOFTMAX)
    with caplog.at_level("WARNING", logger="pipelines.speed.layer"):
        layer = run_speed(kafka, settings, None, Event(), idle_exit_s=3)
    sequence = SnapshotStore(settings.snapshot_dir).latest_sequence(0)
    assert (
        f"partition 0 re-based on version None from offset 0: the speed model changed from "
        f"{NAIVE_BAYES} {{}} (snapshot "
    ) in caplog.text
    assert f") to {SOFTMAX} {{}}" in caplog.text
    assert layer.state.events_learnt == labelled  # every event again, for the new model
    snapshot = SnapshotStore(settings.snapshot_dir).latest(0)
    assert snapshot.sequence == sequence and snapshot.header.model_spec["factory"] == SOFTMAX
    assert snapshot.events_learnt == labelled
    assert_serves_its_intents(settings)
