"""`lambda-ml demo`: the whole Lambda architecture on one machine, end to end, in minutes.

Starts Kafka and MLflow locally (unless pointed at existing ones), then runs every layer as its
own process, exactly as in production: the speed layer, the archiver, the batch scheduler
(retraining at a short interval) and the BentoML server. It replays CLINC150 with the
`new-domain` scenario, sends sample queries and prints the blended answers with the model
versions behind them, writes the offline evaluation report, and stops what it started (with
`--keep-running`, the jobs go on until Ctrl-C and Kafka and MLflow stay up after it).

Each demo run gets its own topic, data folder and registered model, so runs never mix.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from common.processes import ProcessGroup, http_ready
from common.settings import KafkaSettings, MlflowSettings, Settings
from pipelines.produce import ReplayOptions, run_produce
from pipelines.services import broker, tracking_server

LAMBDA_ML = [str(Path(sys.executable).parent / "lambda-ml")]
REPORTS = Path("reports")

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

    @property
    def url(self) -> str:
        """Where the demo's BentoML service answers."""
        return f"http://127.0.0.1:{self.serve_port}"


@dataclass(frozen=True)
class Service:
    """A service the demo runs on, whether this demo started it, and how to stop it.

    `local` is False for one configured elsewhere (KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI):
    the demo neither starts nor stops it.
    """

    name: str
    local: bool
    started: bool
    down_command: str
    down: Callable[[], object]


def lambda_ml(*args: str) -> list[str]:
    """The command line of `lambda-ml args`, from the environment this process runs in."""
    return [*LAMBDA_ML, *args]


def demo_jobs(plan: DemoPlan) -> dict[str, tuple[list[str], bool]]:
    """The demo's jobs: name -> (`lambda-ml` arguments, whether it ends by itself).

    Every layer runs until stopped; the offline evaluation ends when its report is written.
    """
    evaluate = ["evaluate", "--limit", str(plan.evaluation_events), "--no-mlflow-log"]
    return {
        "speed": (["speed"], False),
        "archive": (["archive"], False),
        "schedule": (["schedule", "--interval", str(plan.retrain_every_s)], False),
        "serve": (["serve", "--workers", "1"], False),
        "evaluate": ([*evaluate, "--output", str(REPORTS)], True),
    }


def demo_environment(plan: DemoPlan, settings: Settings) -> dict[str, str]:
    """The settings every job of this demo run shares, as environment variables."""
    kafka, tracking = settings.kafka, settings.mlflow
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
        "SPEED_MODEL": settings.speed.model,
        "SPEED_MODEL_PARAMS": json.dumps(settings.speed.model_params),
        "BATCH_MODEL": settings.batch.model,
        "BATCH_MODEL_PARAMS": json.dumps(settings.batch.model_params),
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


def run_demo(
    plan: DemoPlan, settings: Settings, console: Console, keep_running: bool = False
) -> None:
    """The demo end to end, stopping what it started even when a step fails."""
    started = time.monotonic()
    console.rule("lambda-ml demo")
    env = demo_environment(plan, settings)
    services: list[Service] = []
    jobs = ProcessGroup(plan.home / "logs", env=env)
    try:
        start_services(settings, services)
        stream = create_topics(settings.kafka, env)
        start_jobs(jobs, plan, console)
        replay(stream, plan, jobs, console)
        show_answers(plan, jobs, console)
        report(plan, settings.mlflow, env, jobs, console)
        console.print(f"demo took {time.monotonic() - started:.0f}s")
        if keep_running:
            keep_jobs_running(jobs, console)
    finally:
        console.print(shut_down(jobs, services, keep_services=keep_running))


def start_services(settings: Settings, services: list[Service]) -> None:
    """Start Kafka and MLflow unless they run already, adding each to `services` once it is up,
    so that a failure part-way still stops what was started."""
    kafka, local_broker = settings.kafka, settings.local_broker
    started = broker.up(kafka, local_broker)
    services.append(
        Service(
            "Kafka",
            kafka.uses_local_broker,
            started,
            "lambda-ml kafka down",
            lambda: broker.down(kafka, local_broker),
        )
    )
    tracking, local_mlflow = settings.mlflow, settings.local_mlflow
    started = tracking_server.up(tracking, local_mlflow)
    services.append(
        Service(
            "MLflow",
            tracking.uses_local_server,
            started,
            "lambda-ml mlflow down",
            lambda: tracking_server.down(tracking, local_mlflow),
        )
    )


def create_topics(kafka: KafkaSettings, env: dict[str, str]) -> KafkaSettings:
    """Create this run's own topics; the settings of the stream that uses them."""
    stream = kafka.model_copy(
        update={"topic": env["KAFKA_TOPIC"], "dlq_topic": env["KAFKA_DLQ_TOPIC"]}
    )
    broker.ensure_topics(kafka.bootstrap, {stream.topic: kafka.partitions, stream.dlq_topic: 1})
    return stream


def start_jobs(jobs: ProcessGroup, plan: DemoPlan, console: Console) -> None:
    """Start every layer as its own process, exactly as in production, and the evaluation."""
    for name, (args, finishes) in demo_jobs(plan).items():
        jobs.start(name, lambda_ml(*args), finishes=finishes)
        console.print(f"started the {name} job (log: {jobs[name].log_path})")


def replay(stream: KafkaSettings, plan: DemoPlan, jobs: ProcessGroup, console: Console) -> None:
    """Send CLINC150 to the demo's topic, with new intents appearing halfway."""
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


def show_answers(plan: DemoPlan, jobs: ProcessGroup, console: Console) -> None:
    """The sample queries' blended answers, once the service is ready and a retrain has seen
    the new intents."""
    console.print("waiting for a retrain that has seen the new intents, and the service...")
    ready = http_ready(f"{plan.url}/readyz")
    jobs.wait_until(ready, f"the service at {plan.url} to be ready", timeout_s=180, interval_s=1)
    time.sleep(plan.retrain_every_s)
    jobs.check()
    console.print(_answers_table(plan.url))


def report(
    plan: DemoPlan,
    tracking: MlflowSettings,
    env: dict[str, str],
    jobs: ProcessGroup,
    console: Console,
) -> None:
    """The offline evaluation's report, once written, and where to look next."""
    jobs.wait_for("evaluate")
    console.print((REPORTS / "evaluation.md").read_text())
    console.print(f"evaluation plot: {REPORTS / 'evaluation.png'}")
    model = env["MLFLOW_REGISTERED_MODEL"]
    console.print(f"MLflow UI: {tracking.uri}  (experiment {tracking.experiment}, model {model})")
    console.print(f"service: {plan.url}/predict  (OpenAPI at {plan.url}/docs)")


def keep_jobs_running(jobs: ProcessGroup, console: Console) -> None:
    """Watch the jobs until one fails or Ctrl-C, which ends the demo normally, not as an error."""
    with contextlib.suppress(KeyboardInterrupt):
        console.print(
            "[bold]--keep-running: the jobs go on; press Ctrl-C to stop them "
            "(Kafka and MLflow stay up)[/bold]"
        )
        while True:
            jobs.check()
            time.sleep(2)


def shut_down(jobs: ProcessGroup, services: Sequence[Service], keep_services: bool) -> str:
    """Stop the jobs, and the services this demo started unless `keep_services`; the closing
    message, which says what was stopped and what is still running."""
    jobs.stop()
    for service in reversed(services):
        if service.started and not keep_services:
            service.down()
    return closing_message(list(jobs.children), services, keep_services)


def closing_message(jobs: Sequence[str], services: Sequence[Service], kept: bool) -> str:
    """What the demo stopped, and which local services still run with how to stop them."""
    lines = [f"stopped the demo's jobs ({', '.join(jobs)})" if jobs else "no job was started"]
    for service in services:
        if not service.local:
            continue  # configured elsewhere: not the demo's to stop
        if service.started and not kept:
            lines.append(f"stopped {service.name}")
        else:
            why = "--keep-running" if service.started else "it was running before the demo"
            lines.append(
                f"{service.name} is still running ({why}); stop it with `{service.down_command}`"
            )
    return "\n".join(lines)
