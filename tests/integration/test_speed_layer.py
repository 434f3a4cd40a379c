"""A speed worker (a consumer group of one) on the real broker: learns a replay, survives kill -9
exactly, dead-letters, and registers the whole model in MLflow. The same behaviours at two
workers and more run in tests/unit/test_speed_layer.py over a group in memory, and two real
workers in tests/integration/test_speed_group.py."""

import contextlib
import io
import json
import random
import time
import uuid
from pathlib import Path
from threading import Event

import pytest
from mlflow.artifacts import download_artifacts
from rich.console import Console

from common.settings import SpeedSettings
from models.registry import decode_offsets
from models.snapshot import SnapshotStore, read_snapshot
from pipelines.produce import ReplayOptions, run_produce
from pipelines.speed.job import run_speed
from pipelines.tracking import tracking_client
from streams.dataset import CLINC150_DATA, load_dataset
from streams.producer import make_producer
from tests.integration.cli_processes import cli_env, kill_mid_work, run_to_end

pytestmark = pytest.mark.integration

EVENTS = 30_000
KILLS = 5


@pytest.fixture(scope="module")
def stream(kafka):
    """One single-partition replay (a total order, so two runs see the same sequence), with
    unlabelled events and a few malformed messages mixed in."""
    settings = kafka.fresh_settings(partitions=1)
    run_produce(
        settings,
        ReplayOptions(limit=EVENTS // 2, unlabelled_fraction=0.1),
        Console(file=io.StringIO()),
    )
    raw = make_producer(settings)
    for value in (b"not json", b'{"text": 1}', b"\xff"):
        raw.send(settings.topic, value=value)
    raw.close()
    run_produce(
        settings,
        ReplayOptions(limit=EVENTS // 2, unlabelled_fraction=0.1, run_id="second", seed=9),
        Console(file=io.StringIO()),
    )
    return settings


def labelled_count(settings, expected: int = EVENTS + 3) -> int:
    from streams.schema import InvalidEvent, parse_event
    from tests.integration.kafka_reading import read_all

    count = 0
    for record in read_all(settings.bootstrap, settings.topic, expected):
        with contextlib.suppress(InvalidEvent):
            count += parse_event(record.value).intent is not None
    return count


def probe_texts() -> list[str]:
    examples = load_dataset(CLINC150_DATA, frozenset({"test"})).examples
    return [e.text for e in random.Random(0).sample(examples, 300)]


@pytest.mark.reliability
def test_kill_9_and_restart_learn_exactly_what_one_uninterrupted_run_learns(
    stream, tmp_path, reliability
):
    reference_settings = SpeedSettings(
        snapshot_dir=tmp_path / "reference", signal_dir=tmp_path / "signals", group_id="reference"
    )
    layer = run_speed(stream, reference_settings, None, Event(), idle_exit_s=3)
    labelled = labelled_count(stream)
    assert layer.state.events_learnt == labelled
    assert layer.reader.dead_lettered == 3
    assert layer.state.scores.speed.accuracy > 0.6
    # Freshness is kept for the most recent events only, not for every event ever learnt.
    assert len(layer.reporter.freshness_s) == min(labelled, reference_settings.freshness_window)
    reference = SnapshotStore(reference_settings.snapshot_dir).latest(0)

    snapshots = tmp_path / "interrupted"
    env = cli_env(
        KAFKA_BOOTSTRAP_SERVERS=stream.bootstrap,
        KAFKA_TOPIC=stream.topic,
        KAFKA_DLQ_TOPIC=stream.dlq_topic,
        SPEED_SNAPSHOT_DIR=snapshots,
        SPEED_SNAPSHOT_EVERY_EVENTS=1000,
        SPEED_SIGNAL_DIR=tmp_path / "signals",
        SPEED_GROUP_ID="interrupted",
        # A worker killed with -9 keeps its partition until its session times out: the
        # broker's shortest, so that each restart waits as little as it can.
        SPEED_SESSION_TIMEOUT_MS=6000,
        SPEED_HEARTBEAT_INTERVAL_MS=1000,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # unreachable: the stream must not care
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=0,
    )
    store = SnapshotStore(snapshots)
    rng = random.Random(11)
    kills = 0
    for _ in range(2 * KILLS):  # a job that ends before its kill is started again
        if kills == KILLS:
            break
        before = store.latest_sequence(0) or 0
        kills += kill_mid_work(
            ["speed", "--idle-exit", "3"],
            env,
            working=lambda before=before: (store.latest_sequence(0) or 0) > before,
            rng=rng,
            max_delay_s=0.2,
        )
    scenario = "speed worker kill -9 at random points"
    reliability(scenario, "kills landed mid-work", kills, f"= {KILLS}")
    assert kills == KILLS, f"only {kills} kills landed mid-work: make the stream longer"
    run_to_end(["speed", "--idle-exit", "3"], env)
    restarted = store.latest(0)
    texts = probe_texts()
    differing = sum(
        restarted.model.predict_proba_one({"text": t})
        != reference.model.predict_proba_one({"text": t})
        for t in texts
    )
    reliability(scenario, "labelled events", labelled)
    reliability(scenario, "events learnt after restarts", restarted.events_learnt, "= labelled")
    reliability(
        scenario,
        "snapshot offsets equal to an uninterrupted run",
        restarted.offsets == reference.offsets,
        "True",
    )
    reliability(scenario, f"probe predictions differing (of {len(texts)})", differing, "= 0")

    assert restarted.events_learnt == labelled
    assert restarted.offsets == reference.offsets
    assert differing == 0


@pytest.fixture(scope="module")
def short_stream(kafka):
    """A short replay over two partitions, with unlabelled events."""
    settings = kafka.fresh_settings(partitions=2)
    run_produce(
        settings,
        ReplayOptions(limit=3000, unlabelled_fraction=0.1, run_id="short"),
        Console(file=io.StringIO()),
    )
    return settings


def wait_for_versions(client, name: str, timeout_s: float = 30.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        versions = client.search_model_versions(f"name='{name}'")
        if versions:
            return versions
        time.sleep(0.5)
    raise AssertionError(f"no version of {name} was registered")


def test_a_re_base_registers_the_snapshot_as_a_version_of_the_speed_model(
    short_stream, mlflow_server, mlflow_settings, tmp_path
):
    tracking = mlflow_settings.model_copy(
        update={"registered_model": f"intents-{uuid.uuid4().hex[:8]}"}
    )
    settings = SpeedSettings(
        snapshot_dir=tmp_path / "snapshots",
        signal_dir=tmp_path / "signals",
        group_id=f"register-{uuid.uuid4().hex[:8]}",
        snapshot_every_events=1000,
        register_every_s=0,  # after re-bases only: the one re-base below
    )
    layer = run_speed(short_stream, settings, tracking, Event(), idle_exit_s=3, replay_from={})
    assert layer.state.events_learnt == labelled_count(short_stream, 3000)
    client = tracking_client(tracking)
    name = f"{tracking.registered_model}-speed"
    (version,) = wait_for_versions(client, name)
    tags = version.tags
    offsets = decode_offsets(tags["offsets"])
    assert set(offsets) == {0, 1} and 0 < sum(offsets.values()) <= 3000
    assert tags["base_version"] == "none"
    assert decode_offsets(tags["base_offsets"]) == {0: 0, 1: 0}  # replayed from the start
    assert json.loads(tags["model_spec"]) == {
        "factory": "models.speed_model:build_speed_model",
        "params": {},
    }
    assert 0 < int(tags["events_learnt"]) <= layer.state.events_learnt
    # The version is the snapshot file, logged to the speed layer's own run.
    run = client.get_run(version.run_id)
    assert run.data.tags["layer"] == "speed" and run.info.run_name == "speed-layer"
    downloaded = download_artifacts(
        artifact_uri=version.source, dst_path=str(tmp_path / "dl"), tracking_uri=tracking.uri
    )
    path = Path(downloaded)
    with path.open("rb") as handle:
        snapshot = read_snapshot(handle, path, int(tags["snapshot_sequence"]))
    assert snapshot.offsets == offsets
    assert snapshot.events_learnt == int(tags["events_learnt"])
    assert snapshot.header.model_spec == json.loads(tags["model_spec"])
    assert not any((settings.snapshot_dir / ".mlflow-outbox").iterdir())
