"""The retrain as an orchestrator's task, against the real MLflow server and object store: exit
codes and the JSON outcome, the scheduler's lock (failing fast or waiting), JSON log lines, the
CronJob's script, and a scheduler that registers nothing again once the stream has stopped."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from mlflow import MlflowClient

from common.settings import BatchSettings
from common.storage import Storage
from pipelines.batch.retrain import NothingNew, retrain
from pipelines.batch.retrain_task import SKIPPED_EXIT_CODE, attempt, last_outcome
from pipelines.batch.schedule import Cadence, Lease, Scheduler
from tests.integration.cli_processes import CLI, cli_env, storage_env
from tests.integration.test_retrain import archive, clinc_rows, settings_for
from tests.unit.test_deploy import CRONJOB, retrain_container, script

pytestmark = pytest.mark.integration


def retrain_env(uri: str, tracking, master: Path | str, lock: Path | str, **more) -> dict:
    return cli_env(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_EXPERIMENT=tracking.experiment,
        MLFLOW_REGISTERED_MODEL=tracking.registered_model,
        BATCH_MASTER_DIR=master,
        BATCH_LOCK_PATH=lock,
        LOG_FORMAT="json",
        **more,
    )


def run_retrain(env: dict, *args: str) -> tuple[int, dict, list[dict]]:
    """`lambda-ml retrain --json ARGS`: exit code, the outcome, and the JSON log lines."""
    done = subprocess.run(
        [*CLI, "retrain", "--json", *args], env=env, capture_output=True, text=True, timeout=300
    )
    lines = done.stderr.splitlines()
    logs = [json.loads(line) for line in lines]  # every line of the log is one JSON object
    (outcome,) = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, outcome, logs


def versions(uri: str, name: str) -> list[str]:
    found = MlflowClient(uri, registry_uri=uri).search_model_versions(f"name = '{name}'")
    return sorted(v.version for v in found)


def test_retrain_exits_by_what_it_registered_and_says_so_in_json(mlflow_server, tmp_path):
    rows = clinc_rows()
    master, lock = tmp_path / "master", tmp_path / "locks" / "retrain.lock"
    offsets = archive(master, rows)
    tracking = settings_for(mlflow_server)
    env = retrain_env(mlflow_server, tracking, master, lock)

    code, outcome, logs = run_retrain(env)
    assert code == 0, outcome
    assert outcome["kind"] == "champion" and outcome["registered"] and outcome["version"] == "1"
    assert outcome["reason"].startswith("first version")
    assert outcome["cutoff_offsets"] == {str(p): o for p, o in offsets.items()}
    assert outcome["scores"]["first_seen_accuracy"] > 0.85
    assert {line["job"] for line in logs} == {"retrain"}
    done = [line for line in logs if line["logger"] == "pipelines.batch.retrain"]
    assert done and done[-1]["message"].startswith("version 1 (champion)")
    assert all({"timestamp", "level", "message"} <= set(line) for line in logs)

    code, outcome, _ = run_retrain(env)
    assert code == SKIPPED_EXIT_CODE and outcome["kind"] == "skipped"
    assert not outcome["registered"] and "champion version 1" in outcome["reason"]

    # The CronJob's own script maps "nothing new" to success.
    cronjob = script(retrain_container(yaml.safe_load(CRONJOB.read_text())))
    venv_path = {"PATH": f"{Path(CLI[0]).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.run(
        ["/bin/sh", "-c", cronjob], env=env | venv_path, capture_output=True, text=True
    )
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert json.loads(shell.stdout)["kind"] == "skipped"

    archive(master, rows[:60], offsets)
    code, outcome, _ = run_retrain(env, "--shuffle-labels", "7")
    assert code == 0 and outcome["kind"] == "challenger" and outcome["version"] == "2"
    assert "not significantly better" in outcome["reason"]
    assert (
        outcome["champion_scores"]["first_seen_accuracy"] > outcome["scores"]["first_seen_accuracy"]
    )
    assert last_outcome(tracking) == outcome  # what `lambda-ml status` shows

    with FileLock(lock):  # the scheduler's lock, held
        code, outcome, _ = run_retrain(env)
    assert code == 1 and outcome["kind"] == "locked" and str(lock) in outcome["reason"]
    assert versions(mlflow_server, tracking.registered_model) == ["1", "2"]
    assert last_outcome(tracking)["version"] == "2"  # a refused run records nothing

    broken = env | {"BATCH_MASTER_DIR": str(tmp_path / "nothing-archived")}
    code, outcome, _ = run_retrain(broken)
    assert code == 1 and outcome["kind"] == "failed" and "NoData" in outcome["reason"]
    assert last_outcome(tracking)["kind"] == "failed"


def test_retrain_waits_for_a_lease_held_on_object_storage(mlflow_server, object_store, tmp_path):
    master = tmp_path / "master"
    archive(master, clinc_rows())
    tracking = settings_for(mlflow_server)
    locks = object_store.new_url("locks")
    env = retrain_env(
        mlflow_server, tracking, master, f"{locks}/retrain.lock", **storage_env(object_store)
    )
    held = Lease(Storage.from_url(locks, object_store.settings), "retrain.lock", lease_s=600)
    assert held.acquire()
    waiting = subprocess.Popen(
        [*CLI, "retrain", "--json", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        for line in waiting.stderr:
            if "waiting for the lock" in json.loads(line)["message"]:
                break
        else:
            pytest.fail(f"retrain exited with {waiting.wait()} without waiting for the lock")
        assert waiting.poll() is None and versions(mlflow_server, tracking.registered_model) == []
        held.release()
        stdout, _ = waiting.communicate(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 0
    outcome = json.loads(stdout)
    assert outcome["kind"] == "champion" and outcome["version"] == "1"


def test_after_the_stream_stops_the_scheduler_registers_nothing_again(mlflow_server, tmp_path):
    """A challenger covers the cut-off as well as the champion does: once nothing new is
    archived, every later run is skipped, and the registry keeps one version per history."""
    rows = clinc_rows()
    master = tmp_path / "master"
    offsets = archive(master, rows)
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=master)
    shuffled: list[int | None] = [None]

    def run():
        return retrain(batch, tracking, "queries", label_shuffle_seed=shuffled[0])

    def job() -> None:  # as `lambda-ml schedule` runs it
        attempt(run, tracking).reraise()

    interval = 60.0
    scheduler = Scheduler(
        job, Cadence(interval_s=interval), tmp_path / "retrain.lock", skip_errors=(NothingNew,)
    )
    start = time.time()
    moments = iter(start + interval * (n + 1) for n in range(10))
    first = scheduler.tick(next(moments))
    assert first is not None and first.ok and not first.skipped
    archive(master, rows[:60], offsets)
    shuffled[0] = 7  # a worse model: the next version is a challenger
    second = scheduler.tick(next(moments))
    assert second is not None and second.ok and not second.skipped
    later = [scheduler.tick(next(moments)) for _ in range(3)]
    assert all(r is not None and r.ok for r in later)
    assert all("challenger version 2" in r.skipped for r in later if r is not None)
    assert versions(mlflow_server, tracking.registered_model) == ["1", "2"]
    recorded = last_outcome(tracking)
    assert recorded is not None and recorded["kind"] == "skipped"
