"""The demo supervises every job it starts (the evaluation too) and stops them on error, and its
closing message says truthfully what it stopped and what still runs. Kafka, MLflow and the
`lambda-ml` jobs are stand-ins here: the jobs are Python processes that only sleep."""

import io
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from rich.console import Console
from rich.table import Table

from common.processes import ProcessGroup, ServiceError
from common.settings import KafkaSettings, MlflowSettings, Settings
from models.model_spec import ModelSpec
from models.scope import ScopeClassifier
from pipelines import demo
from pipelines.demo import (
    DemoPlan,
    answers_table,
    demo_jobs,
    evaluation_summary,
    lambda_ml,
    run_demo,
    shut_down,
)
from pipelines.evaluation.evaluate import PHASES, VIEWS
from pipelines.services.broker import KafkaLauncher
from pipelines.services.tracking_server import MlflowLauncher

FAKE_JOB = "import time; time.sleep(60)  # a stand-in lambda-ml job"
LAYERS = ["speed", "archive", "schedule", "serve"]


@dataclass
class Stack:
    """The stand-ins' record: which services were stopped, and what the demo printed."""

    downs: list[str] = field(default_factory=list)
    output: io.StringIO = field(default_factory=io.StringIO)

    @property
    def printed(self) -> str:
        return self.output.getvalue()


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Kafka and MLflow that `up` starts and `down` records, and jobs that sleep."""
    record = Stack()
    for kind in (KafkaLauncher, MlflowLauncher):
        monkeypatch.setattr(kind, "up", lambda self: True)
        monkeypatch.setattr(kind, "down", lambda self: record.downs.append(self.name))
    monkeypatch.setattr(demo, "ensure_stream_topics", lambda *args: [])
    monkeypatch.setattr(demo, "LAMBDA_ML", [sys.executable, "-c", FAKE_JOB])
    return record


def local_settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=""), mlflow=MlflowSettings(tracking_uri="")
    )


def plan(tmp_path: Path) -> DemoPlan:
    return DemoPlan(retrain_every_s=5, home=tmp_path / "demo-run")


def console(stack: Stack) -> Console:
    return Console(file=stack.output, width=400)


def running_jobs() -> dict[str, psutil.Process]:
    """The stand-in jobs running now, by their first `lambda-ml` argument."""
    jobs = {}
    for child in psutil.Process().children():
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if FAKE_JOB in command:
            jobs[command[command.index(FAKE_JOB) + 1]] = child
    return jobs


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_demo_runs_every_layer_and_the_evaluation_as_jobs(tmp_path: Path):
    jobs = demo_jobs(plan(tmp_path))

    assert list(jobs) == [*LAYERS, "evaluate"]
    assert [name for name, (_, finishes) in jobs.items() if finishes] == ["evaluate"]
    assert Path(lambda_ml("speed")[0]).name == "lambda-ml"


def test_every_job_and_the_evaluation_are_stopped_when_the_demo_fails(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    seen: dict[str, psutil.Process] = {}

    def failing_replay(*args):
        seen.update(running_jobs())
        raise RuntimeError("the broker went away")

    monkeypatch.setattr(demo, "run_produce", failing_replay)
    with pytest.raises(RuntimeError, match="the broker went away"):
        run_demo(plan(tmp_path), local_settings(), console(stack))

    assert sorted(seen) == sorted([*LAYERS, "evaluate"])
    assert [name for name, process in seen.items() if not gone(process)] == []
    assert stack.downs == ["MLflow", "Kafka"]
    assert "stopped Kafka" in stack.printed and "stopped MLflow" in stack.printed


def test_ctrl_c_with_keep_running_says_kafka_and_mlflow_still_run(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ctrl-C is how a --keep-running demo ends: the jobs stop, the services stay up."""
    monkeypatch.setattr(demo, "run_produce", lambda *a: SimpleNamespace(sent=9, events_per_s=9.0))
    monkeypatch.setattr(demo, "show_answers", lambda *args: None)

    def report_then_ctrl_c(*args) -> None:  # Ctrl-C once the demo waits on its running jobs
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    monkeypatch.setattr(demo, "report", report_then_ctrl_c)
    run_demo(plan(tmp_path), local_settings(), console(stack), keep_running=True)

    printed = stack.printed
    assert "stopped everything" not in printed
    assert "stopped the demo's jobs (speed, archive, schedule, serve, evaluate)" in printed
    for name, command in (("Kafka", "kafka"), ("MLflow", "mlflow")):
        assert f"{name} still runs (--keep-running): `lambda-ml {command} down` stops it" in printed
    assert stack.downs == []
    assert running_jobs() == {}


def test_a_service_that_fails_to_start_still_stops_the_one_started_before(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_mlflow(self):
        raise ServiceError("port 5000 on 127.0.0.1 is already in use")

    monkeypatch.setattr(MlflowLauncher, "up", no_mlflow)
    with pytest.raises(ServiceError, match="already in use"):
        run_demo(plan(tmp_path), local_settings(), console(stack))

    assert stack.downs == ["Kafka"]
    assert "no job was started\nstopped Kafka" in stack.printed


def test_shut_down_stops_only_what_the_demo_started_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    downs: list[str] = []
    monkeypatch.setattr(KafkaLauncher, "down", lambda self: downs.append(self.name))
    monkeypatch.setattr(MlflowLauncher, "down", lambda self: downs.append(self.name))
    tree = local_settings()
    elsewhere = MlflowSettings(tracking_uri="http://mlflow.internal:5000")
    jobs = ProcessGroup(tmp_path)
    speed = jobs.start("speed", [sys.executable, "-c", FAKE_JOB])
    services = [
        (KafkaLauncher.of(tree), True),
        (MlflowLauncher.of(tree), False),  # was running before the demo
        (MlflowLauncher(elsewhere, tree.local_mlflow), False),  # configured elsewhere
    ]

    message = shut_down(jobs, services, keep_services=False)

    assert downs == ["Kafka"]
    assert speed.returncode == -signal.SIGTERM
    assert message.splitlines() == [
        "stopped the demo's jobs (speed)",
        "stopped Kafka",
        "MLflow still runs (it ran before the demo): `lambda-ml mlflow down` stops it",
    ]


def evaluation_figures() -> dict[str, float]:
    """An evaluation JSON's summary: each view's accuracy per phase and group, the gains."""
    figures = {
        f"{phase.replace(' ', '_')}_{view}_{group}_accuracy": 0.5 + 0.01 * n
        for n, (phase, view, group) in enumerate(
            (p, v, g) for p in PHASES for v in VIEWS for g in ("novel", "repeated")
        )
    }
    figures["no_batch_model_yet_batch_novel_accuracy"] = float("nan")
    return figures | {
        "first_seen_share": 0.8125,
        "first_seen_post_drift_gain_vs_batch_points": 12.34,
        "post_drift_gain_vs_batch_points": 8.06,
    }


def rendered(table: Table) -> list[str]:
    """The lines `table` prints in an 80-column terminal."""
    text = io.StringIO()
    Console(file=text, width=80).print(table)
    return text.getvalue().splitlines()


def test_the_evaluation_summary_fits_80_columns_with_one_row_per_phase():
    lines = rendered(evaluation_summary(evaluation_figures()))

    assert max(len(line) for line in lines) <= 80
    rows = {line.split("  ")[0].strip(): line.split() for line in lines}
    assert [phase for phase in PHASES if phase in rows] == list(PHASES)
    assert rows["no batch model yet"][4] == "-"  # no batch model: no batch accuracy
    assert rows["after retrain"][-1] == f"{100 * (0.5 + 0.01 * 23):.1f}"
    assert "+12.3 points on novel texts, +8.1 on all" in " ".join(lines)
    assert "novel texts: 81.25% of labelled queries" in " ".join(lines)
    assert "learnt:" in " ".join(lines)


def test_the_evaluation_summary_leaves_out_a_handful_of_repeats():
    figures = evaluation_figures() | {"first_seen_share": 0.9999}
    lines = rendered(evaluation_summary(figures))

    assert "learnt" not in " ".join(lines)
    assert max(len(line.split()) for line in lines if line.startswith(" after")) == 5
    assert "novel texts: 99.99% of labelled queries" in " ".join(lines)


def test_the_answers_fit_80_columns_with_the_models_behind_them_once():
    body = {
        "intent": "restaurant_reservation",
        "confidence": 0.873,
        "source": "blend",
        "models": {"batch_version": 3, "speed_snapshot_offsets": {"0": 6021, "1": 598}},
    }
    lines = rendered(answers_table({text: body for text in demo.SAMPLE_QUERIES}))

    assert max(len(line) for line in lines) <= 80
    assert all(any(text in line for line in lines) for text in demo.SAMPLE_QUERIES)  # unwrapped
    assert " ".join(lines).count("batch version 3, speed snapshot p0:6021 p1:598") == 1
    out = {**body, "intent": "oos", "in_scope": False}
    turned_away = rendered(answers_table({"who painted the sistine chapel": out}))
    assert any("oos (out of scope)" in line for line in turned_away)


def test_the_demo_wraps_the_configured_batch_model_in_a_scope_decision():
    env = demo.scoped_batch_model("models.batch.recipe:build_batch_model", {"C": 2.0})
    assert env["BATCH_MODEL"] == "models.scope:scoped_model"
    built = ModelSpec(env["BATCH_MODEL"], json.loads(env["BATCH_MODEL_PARAMS"])).build()
    assert isinstance(built, ScopeClassifier)
    assert built.estimator.get_params()["estimator__classifier__svm__estimator__estimator__C"] == 2
    kept = demo.scoped_batch_model("models.scope:scoped_model", {"accuracy_cost": 0.02})
    assert json.loads(kept["BATCH_MODEL_PARAMS"]) == {"accuracy_cost": 0.02}
