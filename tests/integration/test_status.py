"""`lambda-ml status` against a real system (Kafka, MLflow, S3Proxy, the speed layer, the
archiver, a retrain and the BentoML service), and with its parts unreachable."""

import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from common.processes import free_ports
from pipelines.produce import ReplayOptions, run_produce
from streams.master_dataset import archived_positions
from tests.integration.cli_processes import CLI, cli_env, run_to_end, storage_env, stream_jobs_env
from tests.integration.live_service import serving_process
from tests.integration.test_retrain import archive, clinc_rows, settings_for

pytestmark = pytest.mark.integration

EVENTS = 3000


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "status", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_status_shows_every_part_of_a_running_system(kafka, mlflow_server, object_store, tmp_path):
    settings = kafka.fresh_settings(partitions=2)
    run_produce(settings, ReplayOptions(limit=EVENTS, run_id="status"), Console(file=io.StringIO()))
    tracking = settings_for(mlflow_server)
    group = f"status-{uuid.uuid4().hex[:8]}"
    master = object_store.new_url("master")
    stream = stream_jobs_env(
        settings,
        tmp_path,
        SPEED_GROUP_ID=group,
        **storage_env(object_store),
    ) | {"BATCH_MASTER_DIR": master}  # the master dataset on object storage
    run_to_end(["archive", "--idle-exit", "3"], stream)
    run_to_end(["speed", "--idle-exit", "3"], stream)
    env = stream | {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT": tracking.experiment,
        "MLFLOW_REGISTERED_MODEL": tracking.registered_model,
        "BATCH_MIN_ACCURACY": "0",
        "BATCH_LOCK_PATH": str(tmp_path / "retrain.lock"),
    }
    assert json.loads(run_to_end(["retrain", "--json"], env))["kind"] == "champion"

    server = serving_process(
        mlflow_server,
        tracking.registered_model,
        tmp_path / "snapshots",
        tmp_path / "serve",
        workers=1,
        LOG_FORMAT="json",
    )
    with server:
        server.wait_ready(timeout_s=180)
        env["SERVING_URL"] = server.url
        found = status(env, "--json")
        shown = status(env)
    assert found.returncode == 0, found.stdout + found.stderr
    record = json.loads(found.stdout)
    assert record["healthy"]
    parts = record["parts"]
    assert all(part["ok"] for part in parts.values()), parts

    kafka_part = parts["kafka"]
    ends = kafka_part["end_offsets"]
    assert kafka_part["topic"] == settings.topic and kafka_part["partitions"] == 2
    assert sum(ends.values()) == kafka_part["events"] == EVENTS
    assert kafka_part["dead_letters"] == 0
    groups = parts["consumer groups"]["groups"]
    assert groups[stream["ARCHIVE_GROUP_ID"]] == {"committed": ends, "lag": 0}
    assert groups[group]["lag"] == 0

    archive_part = parts["archive"]
    assert archive_part["location"] == master and archive_part["files"] >= 2
    assert archive_part["bytes"] > 0 and archive_part["behind_topic"] == 0
    assert archive_part["newest_offsets"] == ends

    champion = parts["registry"]["champion"]
    assert champion["version"] == "1" and champion["cutoff_offsets"] == ends
    assert 0 < champion["first_seen_accuracy"] <= 1 and champion["age_s"] >= 0
    assert parts["registry"]["challenger"] is None
    assert parts["last retrain"]["kind"] == "champion" and parts["last retrain"]["version"] == "1"

    speed = parts["speed"]["partitions"]
    assert set(speed) == {"p0", "p1"}
    for name, partition in speed.items():
        p = name[1:]
        assert partition["offsets"] == {p: ends[p]} and partition["behind_topic"] == 0
        assert not partition["stale"] and partition["events_learnt"] > 0
    assert parts["service"]["ready"] and parts["service"]["url"] == f"{server.url}/readyz"

    assert shown.returncode == 0
    table = " ".join(shown.stdout.split())
    assert "lambda-ml status: healthy" in table
    assert f"champion v1 (first-seen accuracy {champion['first_seen_accuracy']:.4f}" in table

    # The service's worker logged JSON lines, as the jobs do.
    lines = (tmp_path / "serve" / "server.log").read_text().splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(line["job"] == "serve" and line["logger"].startswith("serving") for line in logged)


def test_status_shows_what_is_down_and_still_the_rest(tmp_path: Path):
    kafka_port, mlflow_port, service_port = free_ports(3)
    master = tmp_path / "master"
    archive(master, clinc_rows(per_intent=4))
    env = cli_env(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port}",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
        BATCH_MASTER_DIR=master,
        SPEED_SNAPSHOT_DIR=tmp_path / "snapshots",
        SERVING_URL=f"http://127.0.0.1:{service_port}",
    )
    found = status(env, "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    record = json.loads(found.stdout)
    parts = record["parts"]
    assert not record["healthy"]
    assert not parts["kafka"]["ok"] and f"127.0.0.1:{kafka_port}" in parts["kafka"]["error"]
    assert not parts["consumer groups"]["ok"]
    assert not parts["registry"]["ok"] and "does not answer" in parts["registry"]["error"]
    assert not parts["service"]["ok"] and "refused" in parts["service"]["error"]
    assert not parts["speed"]["ok"] and "no snapshot" in parts["speed"]["summary"]
    archived = parts["archive"]  # read all the same
    assert archived["ok"] and archived["files"] == 2
    expected = {str(p): o for p, o in archived_positions(master).items()}
    assert archived["newest_offsets"] == expected and "behind_topic" not in archived

    shown = status(env)
    assert shown.returncode == 1
    assert "UNHEALTHY" in shown.stdout and "unreachable" in shown.stdout
    assert "Traceback" not in shown.stdout + shown.stderr
