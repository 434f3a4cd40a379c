"""`lambda-ml demo`: the whole Lambda architecture on one machine, end to end, in minutes.

Starts Kafka and MLflow locally (unless pointed at existing ones), then runs every layer as its
own process, exactly as in production: the speed layer, the archiver, the batch scheduler
(retraining at a short interval) and the BentoML server. It replays CLINC150 with the
`new-domain` scenario, sends sample queries and prints the blended answers with the model
versions behind them, writes the offline evaluation report, and stops what it started.

Each demo run gets its own topic, data folder and registered model, so runs never mix.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from common.settings import KafkaSettings, MlflowSettings, Settings
from pipelines import tracking_server
from pipelines.produce import ReplayOptions, run_produce
from streams import broker

SAMPLE_QUERIES = [  # the `late` ones belong to the travel and utility domains, seen only late
    "what's my checking account balance",
    "i need to change my pin number",
    "add milk to my shopping list",
    "set an alarm for 6 in the morning",  # late
    "how do i say thank you in french",  # late
    "book a flight to denver for next tuesday",  # late
    "what is the exchange rate from dollars to euros",  # late
    "roll a dice for me",  # late
]


@dataclass
class DemoPlan:
    """How big and how fast the demo's replay is, and where its state lives."""

    events: int = 24_000
    rate: float = 400.0
    retrain_every_s: float = 30.0
    serve_port: int = 3000
    evaluation_events: int = 16_000
    home: Path = field(default_factory=lambda: Path("var/demo") / time.strftime("%Y%m%d-%H%M%S"))


class Jobs:
    """The layers as child processes, each with its log file; stopped together."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("w")
        command = [str(Path(sys.executable).parent / "lambda-ml"), *args]
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"the {name} job exited ({process.returncode}); see {self.logs / name}.log"
                )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def demo_environment(
    plan: DemoPlan, kafka: KafkaSettings, tracking: MlflowSettings
) -> dict[str, str]:
    """The settings every job of this demo run shares, as environment variables."""
    run = plan.home.name.replace("-", "")
    home = plan.home.resolve()
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_TOPIC": f"queries-demo-{run}",
        "KAFKA_DLQ_TOPIC": f"queries-demo-{run}.dlq",
        "MLFLOW_TRACKING_URI": tracking.uri,
        "MLFLOW_REGISTERED_MODEL": f"intent-classifier-demo-{run}",
        "BATCH_MASTER_DIR": str(home / "master"),
        "BATCH_LOCK_PATH": str(home / "retrain.lock"),
        "SPEED_SNAPSHOT_DIR": str(home / "snapshots"),
        "SPEED_SIGNAL_DIR": str(home / "signals"),
        "SPEED_CHAMPION_POLL_S": "5",
        "SERVING_SNAPSHOT_DIR": str(home / "snapshots"),
        "SERVING_PORT": str(plan.serve_port),
        "SERVING_POLL_S": "2",
    }


def _offsets_text(offsets: dict[str, int] | None) -> str:
    """Partition offsets as `p0:123 p1:98`, or `-` when there is no snapshot."""
    return " ".join(f"p{p}:{o}" for p, o in sorted(offsets.items())) if offsets else "-"


def _answers_table(url: str) -> Table:
    table = Table(title="Blended answers from the BentoML service")
    for column in ("query", "intent", "p", "source", "batch version", "speed snapshot offsets"):
        table.add_column(column)
    with httpx.Client(timeout=10) as client:
        for text in SAMPLE_QUERIES:
            body = client.post(f"{url}/predict", json={"text": text}).json()
            models = body["models"]
            table.add_row(
                text,
                body["intent"],
                f"{body['confidence']:.2f}",
                body["source"],
                str(models.get("batch_version") or "-"),
                _offsets_text(models.get("speed_snapshot_offsets")),
            )
    return table


def _wait_ready(url: str, jobs: Jobs, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs.check()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the service at {url} was not ready within {timeout_s:.0f}s")


def run_demo(
    plan: DemoPlan, settings: Settings, console: Console, keep_running: bool = False
) -> None:
    kafka, tracking = settings.kafka, settings.mlflow
    started = time.monotonic()
    console.rule("lambda-ml demo")
    started_kafka = broker.up(kafka, settings.local_broker)
    started_mlflow = tracking_server.up(tracking, settings.local_mlflow)
    env = demo_environment(plan, kafka, tracking)
    stream = kafka.model_copy(
        update={"topic": env["KAFKA_TOPIC"], "dlq_topic": env["KAFKA_DLQ_TOPIC"]}
    )
    broker.ensure_topics(kafka.bootstrap, {stream.topic: kafka.partitions, stream.dlq_topic: 1})
    jobs = Jobs(env, plan.home / "logs")
    url = f"http://127.0.0.1:{plan.serve_port}"
    try:
        for name, args in {
            "speed": ["speed"],
            "archive": ["archive"],
            "schedule": ["schedule", "--interval", str(plan.retrain_every_s)],
            "serve": ["serve", "--workers", "1"],
        }.items():
            jobs.start(name, *args)
            console.print(f"started the {name} job (log: {plan.home / 'logs' / name}.log)")
        evaluation = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "lambda-ml"),
                "evaluate",
                "--limit",
                str(plan.evaluation_events),
                "--output",
                str(Path("reports")),
                "--no-mlflow-log",
            ],
            env=env,
            stdout=(plan.home / "logs" / "evaluate.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        console.print(
            f"replaying {plan.events} CLINC150 queries at {plan.rate:.0f}/s "
            "(new-domain: travel and utility intents appear halfway)"
        )
        options = ReplayOptions(
            scenario="new-domain", limit=plan.events, rate=plan.rate, run_id=plan.home.name
        )
        stats = run_produce(stream, options, console)
        console.print(f"produced {stats.sent} events ({stats.events_per_s:,.0f}/s)")
        jobs.check()
        console.print("waiting for a retrain that has seen the new intents, and the service...")
        _wait_ready(url, jobs)
        time.sleep(plan.retrain_every_s)
        console.print(_answers_table(url))
        evaluation.wait()
        console.print((Path("reports") / "evaluation.md").read_text())
        console.print(f"evaluation plot: {Path('reports') / 'evaluation.png'}")
        model = env["MLFLOW_REGISTERED_MODEL"]
        console.print(
            f"MLflow UI: {tracking.uri}  (experiment {tracking.experiment}, model {model})"
        )
        console.print(f"service: {url}/predict  (OpenAPI at {url}/docs)")
        console.print(f"demo took {time.monotonic() - started:.0f}s")
        if keep_running:
            console.print("[bold]--keep-running: the jobs go on; press Ctrl-C to stop them[/bold]")
            while True:
                jobs.check()
                time.sleep(2)
    finally:
        jobs.stop()
        if not keep_running:
            if started_mlflow:
                tracking_server.down(tracking, settings.local_mlflow)
            if started_kafka:
                broker.down(kafka, settings.local_broker)
        console.print("stopped everything the demo started")
