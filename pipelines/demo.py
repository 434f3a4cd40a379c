"""`lambda-ml demo`: the whole Lambda architecture on one machine, end to end, in minutes.

Starts Kafka and MLflow locally (unless pointed at existing ones), then runs every layer as its
own process, exactly as in production: the speed layer, the archiver, the batch scheduler
(retraining at a short interval) and the BentoML server. It replays CLINC150 with the
`new-domain` scenario, sends sample queries and prints the blended answers with the model
versions behind them, prints a summary of the offline evaluation (its full per-window report
is a file in the run's folder), and stops what it started (with `--keep-running`, the jobs go
on until Ctrl-C and Kafka and MLflow stay up after it). What it prints fits 80 columns.

Each demo run gets its own topic, data folder, report and registered model, so runs never mix.
"""

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.table import Table

from common.processes import ProcessGroup, http_ready
from common.settings import KafkaSettings, MlflowSettings, Settings
from models.registry import fetch_champion
from pipelines.evaluation.evaluate import PHASES, VIEWS
from pipelines.evaluation.report import JSON_NAME, PLOT_NAME, TABLE_NAME
from pipelines.produce import ReplayOptions, run_produce
from pipelines.services.broker import KafkaLauncher, ensure_stream_topics
from pipelines.services.launcher import Launcher
from pipelines.services.tracking_server import MlflowLauncher
from serving.metrics import BATCH_VERSION_GAUGE

LAMBDA_ML = [str(Path(sys.executable).parent / "lambda-ml")]
SCOPED_MODEL = "models.scope:scoped_model"
# A service the demo runs on, and whether the demo started it (then it stops it at the end).
Started = tuple[Launcher[Any, Any], bool]

SAMPLE_QUERIES = [  # the `late` ones belong to the travel and utility domains, seen only late
    "what's my checking account balance",
    "i need to change my pin number",
    "add milk to my shopping list",
    "set an alarm for 6 in the morning",  # late
    "how do i say thank you in french",  # late
    "book a flight to denver on tuesday",  # late
    "exchange rate from dollars to euros",  # late
    "roll a dice for me",  # late
    "who painted the sistine chapel",  # no intent covers it: out of scope
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

    @property
    def reports(self) -> Path:
        """Where the offline evaluation writes its report, table and plot."""
        return self.home / "reports"


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
        "evaluate": ([*evaluate, "--output", str(plan.reports)], True),
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
        **scoped_batch_model(settings.batch.model, settings.batch.model_params),
    }


def scoped_batch_model(model: str, params: dict[str, object]) -> dict[str, str]:
    """The configured batch model with a scope decision fitted beside it (`models.scope`), so
    that the demo's answers can say "out of scope"; a model that has one already is kept."""
    if model == SCOPED_MODEL:
        return {"BATCH_MODEL": model, "BATCH_MODEL_PARAMS": json.dumps(params)}
    wrapped = {"model": model, "model_params": params}
    return {"BATCH_MODEL": SCOPED_MODEL, "BATCH_MODEL_PARAMS": json.dumps(wrapped)}


def _offsets_text(offsets: dict[str, int] | None) -> str:
    """Partition offsets as `p0:123 p1:98`, or `-` when there is no snapshot."""
    return " ".join(f"p{p}:{o}" for p, o in sorted(offsets.items())) if offsets else "-"


def answers_table(answers: dict[str, dict[str, Any]]) -> Table:
    """The sample queries' answers (text -> `/predict` body), with the models behind them
    under the table rather than in columns, so that it fits 80 columns."""
    table = Table(
        title="Blended answers from the BentoML service", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("query")
    table.add_column("intent")
    table.add_column("p", justify="right")
    table.add_column("source")
    models = set()
    for text, body in answers.items():
        intent = (
            body["intent"] if body.get("in_scope", True) else f"{body['intent']} (out of scope)"
        )
        table.add_row(text, intent, f"{body['confidence']:.2f}", body["source"])
        found = body["models"]
        batch, offsets = found.get("batch_version"), found.get("speed_snapshot_offsets")
        models.add(f"batch version {batch or '-'}, speed snapshot {_offsets_text(offsets)}")
    table.caption = "\n".join(sorted(models))
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


# Repeated texts get columns of their own only when they are at least this share of the labelled
# queries: a handful of repeats would show an accuracy of noise.
MIN_REPEATED_SHARE = 0.01


def evaluation_summary(figures: dict[str, Any]) -> Table:
    """The offline evaluation's accuracy per phase on novel texts (no model trained on them),
    then, when there are enough of them, on texts the model had learnt, with the novel texts'
    share; the per-window detail stays in the report file."""
    novel_share = figures.get("first_seen_share")
    groups = {"novel": "novel"}
    if novel_share is not None and 1 - novel_share >= MIN_REPEATED_SHARE:
        groups["repeated"] = "learnt"
    table = Table(
        title=f"Offline evaluation: accuracy %, {' | '.join(groups.values())} texts",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("phase", no_wrap=True)
    for heading in groups.values():
        for view in VIEWS:
            table.add_column(f"{heading}: {view}" if view == VIEWS[0] else view, justify="right")
    for phase in PHASES:
        key = phase.replace(" ", "_")
        cells = [
            _percent(figures.get(f"{key}_{view}_{group}_accuracy"))
            for group in groups
            for view in VIEWS
        ]
        table.add_row(phase, *cells)
    share = "-" if novel_share is None else f"{100 * novel_share:.2f}"
    table.caption = (
        f"novel texts: {share}% of labelled queries\n"
        f"blend vs batch after the drift: "
        f"{figures['first_seen_post_drift_gain_vs_batch_points']:+.1f} points on novel texts, "
        f"{figures['post_drift_gain_vs_batch_points']:+.1f} on all"
    )
    return table


def run_demo(
    plan: DemoPlan, settings: Settings, console: Console, keep_running: bool = False
) -> None:
    """The demo end to end, stopping what it started even when a step fails."""
    started = time.monotonic()
    console.rule("lambda-ml demo")
    env = demo_environment(plan, settings)
    services: list[Started] = []
    jobs = ProcessGroup(plan.home / "logs", env=env)
    try:
        start_services(settings, services)
        stream = create_topics(settings.kafka, env)
        start_jobs(jobs, plan, console)
        sent = replay(stream, plan, jobs, console)
        champion = serves_champion_of(
            plan.url, settings.mlflow.uri, env["MLFLOW_REGISTERED_MODEL"], sent
        )
        show_answers(plan, champion, jobs, console)
        report(plan, settings.mlflow, env, jobs, console)
        console.print(f"demo took {time.monotonic() - started:.0f}s")
        if keep_running:
            keep_jobs_running(jobs, console)
    finally:
        console.print(shut_down(jobs, services, keep_services=keep_running))


def start_services(settings: Settings, services: list[Started]) -> None:
    """Start Kafka and MLflow unless they run already, adding each to `services` once it is up,
    so that a failure part-way still stops what was started."""
    for launcher in (KafkaLauncher.of(settings), MlflowLauncher.of(settings)):
        services.append((launcher, launcher.up()))


def create_topics(kafka: KafkaSettings, env: dict[str, str]) -> KafkaSettings:
    """Create this run's own topics; the settings of the stream that uses them."""
    stream = kafka.on_topic(env["KAFKA_TOPIC"])
    ensure_stream_topics(stream, kafka.partitions)
    return stream


def start_jobs(jobs: ProcessGroup, plan: DemoPlan, console: Console) -> None:
    """Start every layer as its own process, exactly as in production, and the evaluation."""
    for name, (args, finishes) in demo_jobs(plan).items():
        jobs.start(name, lambda_ml(*args), finishes=finishes)
    console.print(f"started the jobs {', '.join(jobs.children)}")
    console.print(f"their logs: {jobs.log_dir}")


def replay(stream: KafkaSettings, plan: DemoPlan, jobs: ProcessGroup, console: Console) -> int:
    """Send CLINC150 to the demo's topic, with new intents appearing halfway; how many events
    were sent."""
    console.print(f"replaying {plan.events:,} CLINC150 queries at {plan.rate:,.0f}/s")
    console.print("scenario new-domain: travel and utility intents appear halfway")
    options = ReplayOptions(
        scenario="new-domain", limit=plan.events, rate=plan.rate, run_id=plan.home.name
    )
    stats = run_produce(stream, options, console)
    console.print(f"produced {stats.sent:,} events ({stats.events_per_s:,.0f}/s)")
    jobs.check()
    return stats.sent


def show_answers(
    plan: DemoPlan, champion: Callable[[], bool], jobs: ProcessGroup, console: Console
) -> None:
    """The sample queries' blended answers, once the service is ready and the probe
    `champion` (`serves_champion_of`) says it uses a champion trained on the new intents."""
    console.print("waiting for a retrain that has seen the new intents, and the service...")
    ready = http_ready(f"{plan.url}/readyz")
    jobs.wait_until(ready, f"the service at {plan.url} to be ready", timeout_s=180, interval_s=1)
    jobs.wait_until(
        champion,
        "the service to use a champion trained on the new intents",
        timeout_s=180 + 3 * plan.retrain_every_s,
        interval_s=1,
    )
    with httpx.Client(timeout=10) as client:
        answers = {
            text: client.post(f"{plan.url}/predict", json={"text": text}).json()
            for text in SAMPLE_QUERIES
        }
    console.print(answers_table(answers))


def serves_champion_of(url: str, tracking_uri: str, name: str, events: int) -> Callable[[], bool]:
    """A probe that is True once the champion of `name` has a history of at least three
    quarters of the `events` sent (half of what came after the new intents appeared) and every
    worker of the service at `url` uses it. It reads the registry and the service's metrics, not
    `/predict`, whose answers would join the query log."""
    client = MlflowClient(tracking_uri)

    def probe() -> bool:
        try:
            champion = fetch_champion(client, name)
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
        except (MlflowException, httpx.HTTPError, OSError):
            return False
        if champion is None or 4 * sum(champion.cutoff_offsets.values()) < 3 * events:
            return False
        used = [
            sample.value
            for family in text_string_to_metric_families(metrics)
            if family.name == BATCH_VERSION_GAUGE
            for sample in family.samples
        ]
        return bool(used) and all(v == float(champion.version) for v in used)

    return probe


def report(
    plan: DemoPlan,
    tracking: MlflowSettings,
    env: dict[str, str],
    jobs: ProcessGroup,
    console: Console,
) -> None:
    """The offline evaluation's summary, once written, and where to look next."""
    jobs.wait_for("evaluate")
    console.print(evaluation_summary(json.loads((plan.reports / JSON_NAME).read_text())))
    where = Table.grid(padding=(0, 2))
    where.add_column(no_wrap=True)
    where.add_column(overflow="fold")
    for name, value in (
        ("per-window report", plan.reports / TABLE_NAME),
        ("plot", plan.reports / PLOT_NAME),
        ("MLflow UI", f"{tracking.uri} (experiment {tracking.experiment})"),
        ("registered model", env["MLFLOW_REGISTERED_MODEL"]),
        ("service", f"{plan.url}/predict (OpenAPI at /docs)"),
    ):
        where.add_row(name, str(value))
    console.print(where)


def keep_jobs_running(jobs: ProcessGroup, console: Console) -> None:
    """Watch the jobs until one fails or Ctrl-C, which ends the demo normally, not as an error."""
    with contextlib.suppress(KeyboardInterrupt):
        console.print(
            "[bold]--keep-running: the jobs go on; Ctrl-C stops them "
            "(Kafka and MLflow stay up)[/bold]"
        )
        while True:
            jobs.check()
            time.sleep(2)


def shut_down(jobs: ProcessGroup, services: Sequence[Started], keep_services: bool) -> str:
    """Stop the jobs, and the services this demo started unless `keep_services`; the closing
    message, which says what was stopped and what is still running."""
    jobs.stop()
    for launcher, started in reversed(services):
        if started and not keep_services:
            launcher.down()
    return closing_message(list(jobs.children), services, keep_services)


def closing_message(jobs: Sequence[str], services: Sequence[Started], kept: bool) -> str:
    """What the demo stopped, and which local services still run with how to stop them."""
    lines = [f"stopped the demo's jobs ({', '.join(jobs)})" if jobs else "no job was started"]
    for launcher, started in services:
        if not launcher.uses_local_server:
            continue  # configured elsewhere: not the demo's to stop
        if started and not kept:
            lines.append(f"stopped {launcher.name}")
        else:
            why = "--keep-running" if started else "it ran before the demo"
            lines.append(
                f"{launcher.name} still runs ({why}): `lambda-ml {launcher.command} down` stops it"
            )
    return "\n".join(lines)
