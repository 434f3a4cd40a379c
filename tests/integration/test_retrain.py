"""The batch layer against the real MLflow server: lineage, promotion gate, failures, the lock."""

import random
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from mlflow import MlflowClient

from models.registry import CHALLENGER, CHAMPION, CUTOFF_TAG, decode_offsets, fetch_champion
from pipelines import tracking_server
from pipelines.config import BatchSettings, MlflowSettings
from pipelines.retrain import retrain
from streams.archiver import write_flush
from streams.consumer import Consumed
from streams.dataset import CLINC150_DATA, load_dataset
from streams.schema import QueryEvent
from tests.integration.cli_processes import CLI, cli_env
from tests.integration.conftest import free_ports

pytestmark = pytest.mark.integration

INTENTS = 25


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A master dataset of CLINC150 rows of 25 intents over two partitions and three days."""
    examples = load_dataset(CLINC150_DATA).examples
    chosen = sorted({e.intent for e in examples if e.intent != "oos"})[:INTENTS]
    rows = [e for e in examples if e.intent in chosen]
    random.Random(1).shuffle(rows)
    root = tmp_path_factory.mktemp("master")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for partition in (0, 1):
        part = rows[partition::2]
        consumed = [
            Consumed(
                QueryEvent(
                    query_id=f"{partition}-{offset}",
                    ts=start + timedelta(minutes=offset),
                    text=example.text,
                    intent=example.intent,
                ),
                partition,
                offset,
            )
            for offset, example in enumerate(part)
        ]
        write_flush(root, partition, 0, len(part) - 1, consumed)
    return root, {0: (len(rows) + 1) // 2, 1: len(rows) // 2}


def settings_for(uri: str) -> MlflowSettings:
    name = f"test-{uuid.uuid4().hex[:8]}"
    return MlflowSettings(tracking_uri=uri, registered_model=name, experiment=name)


def test_a_retrain_registers_a_champion_with_its_lineage(mlflow_server, master):
    root, cutoff = master
    tracking = settings_for(mlflow_server)
    result = retrain(BatchSettings(master_dir=root), tracking, "queries")
    assert result.promoted and result.version == "1"
    assert result.scores.accuracy > 0.85

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert int(tags["lineage.rows"]) == sum(cutoff.values())
    assert int(tags["lineage.train_rows"]) + int(tags["lineage.holdout_rows"]) == sum(
        cutoff.values()
    )
    assert decode_offsets(tags["lineage.cutoff_offsets"]) == cutoff
    assert (
        tags["lineage.ts_min"].startswith("2026-11-01") and len(tags["lineage.content_hash"]) == 64
    )
    assert {"holdout_accuracy", "holdout_macro_f1", "holdout_log_loss"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert artifacts == {"report/per_intent_report.json", "report/confusion_matrix.png"}

    version = client.get_model_version(tracking.registered_model, "1")
    assert decode_offsets(version.tags[CUTOFF_TAG]) == cutoff
    assert version.tags["content_hash"] == tags["lineage.content_hash"]
    champion = fetch_champion(client, tracking.registered_model)
    assert champion and champion.version == "1" and champion.cutoff_offsets == cutoff


def test_a_worse_model_is_not_promoted(mlflow_server, master):
    root, _ = master
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=root)
    assert retrain(batch, tracking, "queries").promoted
    broken = retrain(batch, tracking, "queries", label_shuffle_seed=7)
    assert not broken.promoted
    assert broken.scores.accuracy < broken.champion_scores.accuracy
    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(tracking.registered_model, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(tracking.registered_model, CHALLENGER).version == "2"
    assert "does not beat the champion" in client.get_run(broken.run_id).data.tags["promotion"]


@pytest.mark.reliability
def test_mlflow_down_mid_run_fails_cleanly_and_the_next_run_succeeds(
    master, tmp_path, monkeypatch, reliability
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    root, _ = master
    (port,) = free_ports(1)
    # Always a server of this test's own (it is stopped mid-run), whatever the environment says.
    server = MlflowSettings(tracking_uri="", home=tmp_path / "mlflow", port=port)
    tracking = settings_for(server.uri)
    batch = BatchSettings(master_dir=root)
    assert tracking_server.up(server)
    try:
        first = retrain(batch, tracking, "queries")

        def stop_server_after_fit(stage: str) -> None:
            if stage == "evaluate":
                tracking_server.down(server)

        with pytest.raises(Exception) as failure:
            retrain(batch, tracking, "queries", on_stage=stop_server_after_fit)
        assert "Connection" in repr(failure.value) or "connect" in str(failure.value).lower()

        tracking_server.up(server)
        client = MlflowClient(server.uri)
        champion_after = fetch_champion(client, tracking.registered_model).version
        again = retrain(batch, tracking, "queries")
        scenario = "MLflow down during a retrain (between fit and evaluate)"
        reliability(scenario, "error raised by the failed run", type(failure.value).__name__)
        reliability(
            scenario, "champion kept through the failure", champion_after == first.version, "True"
        )
        reliability(scenario, "version registered by the next run", again.version, "2")
        assert champion_after == first.version
        assert again.version == "2"
        assert fetch_champion(client, tracking.registered_model).version in {"1", "2"}
    finally:
        tracking_server.down(server)


def test_two_schedulers_never_run_at_the_same_time(mlflow_server, master, tmp_path):
    root, _ = master
    tracking = settings_for(mlflow_server)
    env = cli_env(
        MLFLOW_TRACKING_URI=mlflow_server,
        MLFLOW_EXPERIMENT=tracking.experiment,
        MLFLOW_REGISTERED_MODEL=tracking.registered_model,
        BATCH_MASTER_DIR=root,
        BATCH_LOCK_PATH=tmp_path / "retrain.lock",
        SPEED_SIGNAL_DIR=tmp_path / "signals",
    )
    command = [*CLI, "schedule", "--interval", "3600", "--max-runs", "1"]
    schedulers = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [s.communicate(timeout=300)[0] for s in schedulers]
    assert [s.returncode for s in schedulers] == [0, 0], outputs
    flattened = [" ".join(out.split()) for out in outputs]  # the log wraps long lines
    assert any("another run holds the lock" in out for out in flattened), outputs

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'batch-retrain'")
    assert len(runs) == 2
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert spans[0][1] <= spans[1][0], f"runs overlapped: {spans}"
