"""The `lambda-ml` command line: one subcommand per job.

Settings are read from the environment here, at the edge (`pipelines.cli.edge`), once, and
passed down to the jobs.
"""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from common import logs
from common.job_metrics import Heartbeat, JobEndpoint, MetricsPortInUse
from common.logs import LogFormat
from common.settings import KafkaSettings, Settings
from models.model_spec import ModelSpec, ModelSpecError
from pipelines.cli.bench import bench_app
from pipelines.cli.edge import settings as edge_settings
from pipelines.cli.serve import serve
from pipelines.cli.services import kafka_app, mlflow_app, s3_app
from pipelines.cli.settings_reference import settings_reference
from pipelines.produce import ReplayOptions, run_produce, run_publish_file
from streams.dataset import CLINC150_DATA
from streams.producer import ProduceStats
from streams.scenarios import DEFAULT_LATE_DOMAINS, ScenarioName

log = logging.getLogger(__name__)

app = typer.Typer(
    help="lambda-ml: a Lambda-architecture retraining pipeline for query understanding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
app.add_typer(kafka_app, name="kafka")
app.add_typer(mlflow_app, name="mlflow")
app.add_typer(s3_app, name="s3")
app.command()(serve)
app.add_typer(bench_app, name="bench")
app.command()(settings_reference)


@app.callback()
def main(
    context: typer.Context,
    log_level: Annotated[
        str | None, typer.Option(help="Logging level of the jobs (default: LOG_LEVEL, INFO).")
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            help="rich: lines for a terminal; json: one JSON object per line, for a log "
            "shipper (default: LOG_FORMAT, rich)."
        ),
    ] = None,
) -> None:
    """Set up logging once for whichever subcommand runs."""
    if log_format is not None:
        os.environ["LOG_FORMAT"] = log_format  # and for the processes a command starts
    settings = edge_settings().log
    if (log_format or settings.format) == "json":
        # MLflow's loggers then propagate to the JSON handler instead of printing their own.
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    logs.configure(
        log_level or settings.level, log_format or settings.format, context.invoked_subcommand or ""
    )
    for noisy in ("kafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def job_endpoint(
    job: Literal["speed", "archive", "schedule"], tree: Settings
) -> Iterator[JobEndpoint]:
    """The job's `/metrics` and `/healthz` on `METRICS_<JOB>_PORT` for the length of the block; a
    port another process holds fails the command at once, before any work."""
    settings = tree.metrics
    port = getattr(settings, f"{job}_port")
    try:
        endpoint = JobEndpoint(
            job, settings.host, port, Heartbeat(settings.stall_s), f"METRICS_{job.upper()}_PORT"
        )
    except MetricsPortInUse as exc:
        raise fail(str(exc)) from None
    try:
        yield endpoint
    finally:
        endpoint.close()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def fail(message: str) -> typer.Exit:
    """Print an expected failure as one red line and return the exit to raise."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


# Options `produce` and `evaluate` share: both replay a dataset through a scenario.
DataOption = Annotated[Path, typer.Option(help="JSONL file of {text, intent} objects.")]
DriftAtOption = Annotated[
    float, typer.Option(min=0, max=1, help="Drift point, as a fraction of the stream.")
]
LateDomainsOption = Annotated[
    str, typer.Option(help="new-domain: CLINC150 domains that arrive late.")
]
LabelDelayOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Query events between a query and its label. With a delay or a share below 1, "
        "queries come without intent and labels follow (on the feedback topic).",
    ),
]
LabelShareOption = Annotated[
    float,
    typer.Option(
        min=0, max=1, help="Fraction of queries that ever get a label (chosen by --seed)."
    ),
]
LateIntentsOption = Annotated[
    str, typer.Option(help="new-domain: intents that arrive late (overrides --late-domains).")
]
DEFAULT_LATE_DOMAINS_CSV = ",".join(DEFAULT_LATE_DOMAINS)


@app.command()
def produce(
    data: DataOption = CLINC150_DATA,
    scenario: Annotated[
        ScenarioName, typer.Option(help="Replay order / drift scenario.")
    ] = "shuffle",
    limit: Annotated[
        int | None, typer.Option(help="Number of events (default: dataset x repeat).")
    ] = None,
    repeat: Annotated[
        int, typer.Option(min=1, help="Passes over the dataset when no --limit.")
    ] = 1,
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second; 0 = as fast as possible.")
    ] = 0.0,
    unlabelled: Annotated[
        float, typer.Option(min=0, max=1, help="Fraction of events without intent.")
    ] = 0.0,
    drift_at: DriftAtOption = 0.5,
    late_domains: LateDomainsOption = DEFAULT_LATE_DOMAINS_CSV,
    late_intents: LateIntentsOption = "",
    splits: Annotated[
        str, typer.Option(help="Keep only these dataset splits (comma-separated).")
    ] = "",
    span_days: Annotated[
        float, typer.Option(min=0, help="Spread timestamps over the past N days (0 = wall clock).")
    ] = 0.0,
    tail: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Query-log shape: this share of events are generated variants seen about once "
            "(synthetic); the rest a Zipf head of the dataset's rows. Default: the rows as they "
            "are.",
        ),
    ] = None,
    head_exponent: Annotated[
        float,
        typer.Option(help="With --tail: skew of the head; row of rank r has weight 1/r**this."),
    ] = 1.1,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle, scenario and users.")] = 42,
    run_id: Annotated[
        str, typer.Option(help="Namespace of the query ids; a new one gives new ids.")
    ] = "replay",
    label_delay: LabelDelayOption = 0,
    label_share: LabelShareOption = 1.0,
) -> None:
    """Replay a dataset onto the `queries` topic as a Siri-style stream (acks=all, idempotent),
    its labels inline or, late, on the feedback topic."""
    options = ReplayOptions(
        data=data,
        scenario=scenario,
        limit=limit,
        repeat=repeat,
        rate=rate,
        unlabelled_fraction=unlabelled,
        drift_fraction=drift_at,
        late_domains=_csv(late_domains),
        late_intents=_csv(late_intents),
        seed=seed,
        run_id=run_id,
        span_days=span_days,
        splits=frozenset(_csv(splits)) or None,
        tail_fraction=tail,
        head_exponent=head_exponent,
        label_delay=label_delay,
        label_share=label_share,
    )
    settings = edge_settings().kafka
    try:
        stats = run_produce(settings, options, console)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    late = f" and {settings.feedback_topic}" if not options.labelling.inline else ""
    report_produced(stats, settings, settings.topic + late)


@app.command()
def publish(
    events: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="File of raw events, one JSON per line."),
    ],
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second; 0 = as fast as possible.")
    ] = 0.0,
    feedback: Annotated[
        bool,
        typer.Option(help="The file holds labels ({query_id, intent, ts, source}) for queries."),
    ] = False,
) -> None:
    """Publish a file of raw events as they are (say, dead letters after a fix): valid lines go
    to the `queries` topic (labels, with --feedback, to the feedback topic), the others to the
    dead-letter topic with their reason."""
    settings = edge_settings().kafka
    try:
        stats = run_publish_file(settings, events, rate, console, feedback)
    except ValueError as exc:
        raise fail(str(exc)) from None
    report_produced(stats, settings, settings.feedback_topic if feedback else settings.topic)


def report_produced(stats: ProduceStats, settings: KafkaSettings, topic: str | None = None) -> None:
    """One line of counts (`topic` defaults to the queries topic); exit 1 if any send was not
    acknowledged."""
    console.print(
        f"sent {stats.sent} events to {topic or settings.topic} in {stats.seconds:.1f}s "
        f"({stats.events_per_s:,.0f}/s); {stats.failed} failed, "
        f"{stats.dead_lettered} dead-lettered to {settings.dlq_topic}"
    )
    if stats.failed:
        raise typer.Exit(1)


def _offsets(value: str) -> dict[int, int]:
    """Parse `0:120,1:98` into {0: 120, 1: 98}; `earliest` is every partition's start."""
    if value.strip() == "earliest":
        return {}
    try:
        return {int(p): int(o) for p, o in (pair.split(":") for pair in _csv(value))}
    except ValueError:
        raise fail(f"offsets must look like 0:120,1:98 or be 'earliest'; got {value!r}") from None


IdleExit = Annotated[
    float | None, typer.Option(help="Stop after the stream has been idle this many seconds.")
]
SpeedModelOption = Annotated[
    str | None,
    typer.Option(
        help="The speed layer's River model, as package.module:factory "
        "(default: SPEED_MODEL, the tuned HashedTextNB)."
    ),
]
SpeedParamsOption = Annotated[
    str | None,
    typer.Option(help="JSON object of the speed model factory's arguments (SPEED_MODEL_PARAMS)."),
]
BatchModelOption = Annotated[
    str | None,
    typer.Option(
        help="The batch layer's scikit-learn model, as package.module:factory "
        "(default: BATCH_MODEL, the tuned SVM and naive Bayes blend)."
    ),
]
BatchParamsOption = Annotated[
    str | None,
    typer.Option(help="JSON object of the batch model factory's arguments (BATCH_MODEL_PARAMS)."),
]


def _with_models(
    speed_model: str | None = None,
    speed_params: str | None = None,
    batch_model: str | None = None,
    batch_params: str | None = None,
) -> Settings:
    """The edge's settings with the models the options chose; a bad spec fails here, clearly."""
    tree = edge_settings()
    speed, batch = tree.speed, tree.batch
    try:
        if speed_model is not None or speed_params is not None:
            spec = ModelSpec.parse(speed_model or speed.model, speed_params or speed.model_params)
            speed = speed.model_copy(update={"model": spec.factory, "model_params": spec.params})
        if batch_model is not None or batch_params is not None:
            spec = ModelSpec.parse(batch_model or batch.model, batch_params or batch.model_params)
            batch = batch.model_copy(update={"model": spec.factory, "model_params": spec.params})
    except ModelSpecError as exc:
        raise fail(str(exc)) from None
    return replace(tree, speed=speed, batch=batch)


@app.command()
def archive(idle_exit: IdleExit = None) -> None:
    """Copy the `queries` topic exactly once into the Parquet master dataset."""
    from pipelines.jobs import run_archive, stop_on_signals

    tree = edge_settings()
    batch = tree.batch
    with job_endpoint("archive", tree) as endpoint:
        archiver = run_archive(
            tree.kafka,
            batch.master_dir,
            tree.archive,
            stop_on_signals(),
            idle_exit,
            tree.storage,
            endpoint,
        )
    console.print(f"archived {archiver.archived} events into {batch.master_dir}")


def _run_speed(tree: Settings, idle_exit: float | None, replay_from: dict[int, int] | None) -> None:
    from pipelines.jobs import stop_on_signals
    from pipelines.speed.job import run_speed

    with job_endpoint("speed", tree) as endpoint:
        layer = run_speed(
            tree.kafka,
            tree.speed,
            tree.mlflow,
            stop_on_signals(),
            idle_exit,
            replay_from,
            tree.storage,
            endpoint,
        )
    if not layer.parts:
        console.print(f"learnt {layer.learnt_here} events; owned no partition at the end")
        return
    state = layer.state
    console.print(
        f"learnt {layer.learnt_here} events; partitions {sorted(layer.parts)} hold "
        f"{state.events_learnt}, prequential accuracy speed {state.scores.speed.accuracy:.3f}, "
        f"blend {state.scores.blend.accuracy:.3f} (partition that learnt most)"
    )


@app.command()
def speed(
    idle_exit: IdleExit = None,
    speed_model: SpeedModelOption = None,
    speed_model_params: SpeedParamsOption = None,
) -> None:
    """Run a speed worker, one member of the consumer group SPEED_GROUP_ID: predict, score,
    then learn each event of its partitions; snapshot as it goes."""
    _run_speed(_with_models(speed_model, speed_model_params), idle_exit, None)


@app.command()
def replay(
    from_offsets: Annotated[
        str, typer.Option(help="Where to start: `0:120,1:98` or `earliest`.")
    ] = "earliest",
    idle_exit: IdleExit = None,
    speed_model: SpeedModelOption = None,
    speed_model_params: SpeedParamsOption = None,
) -> None:
    """Run a speed worker that rebuilds each partition it is given from these offsets
    (Kappa-style reprocessing), then goes on live; run every worker of the group so."""
    _run_speed(_with_models(speed_model, speed_model_params), idle_exit, _offsets(from_offsets))


@app.command()
def retrain(
    shuffle_labels: Annotated[
        int | None, typer.Option(help="Train on shuffled labels with this seed (gate check).")
    ] = None,
    batch_model: BatchModelOption = None,
    batch_model_params: BatchParamsOption = None,
    engine: Annotated[
        Literal["local", "spark"] | None,
        typer.Option(help="Engine of the history pass (default: BATCH_ENGINE)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="When another run (the scheduler's) holds the retrain lock, wait for it "
            "instead of failing at once."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Train and register even when the champion or the challenger was trained on "
            "this history by this model."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the outcome as one JSON object.")
    ] = False,
) -> None:
    """One batch run: history -> train -> evaluate -> MLflow run -> registry -> promotion gate.

    Exits 0 when it registered a version (champion or challenger), 99 when the champion or the
    challenger was trained on this very history by this very model (nothing archived since its
    cut-off, the same model spec: nothing registered), 1 when it failed or another run held the
    lock. Another model or other parameters on the same history are new: they go to the gate.
    """
    from pipelines.batch.retrain import retrain as run_retrain
    from pipelines.batch.retrain_task import retrain_task
    from pipelines.tracking import experiment_id, runs_page, tracking_client

    tree = _with_models(batch_model=batch_model, batch_params=batch_model_params)
    if engine is not None:
        tree = replace(tree, batch=tree.batch.model_copy(update={"engine": engine}))
    if as_json:  # MLflow prints a run's address on stdout, which holds the outcome only
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    def announce(stage: str) -> None:
        if as_json:
            log.info("retrain: %s", stage)
        else:
            console.print(f"[dim]retrain: {stage}[/dim]")

    outcome = retrain_task(
        lambda: run_retrain(
            tree.batch,
            tree.mlflow,
            tree.kafka.topic,
            label_shuffle_seed=shuffle_labels,
            on_stage=announce,
            storage=tree.storage,
            force=force,
        ),
        tree.mlflow,
        tree.batch.lock_path,
        tree.storage,
        wait=wait,
    )
    if as_json:
        typer.echo(json.dumps(outcome.as_record()))
    elif outcome.kind in ("champion", "challenger"):
        colour = "green" if outcome.kind == "champion" else "yellow"
        scores, seconds = outcome.scores or {}, outcome.seconds or {}
        console.print(
            f"version {outcome.version} ([{colour}]{outcome.kind}[/{colour}]): first-seen "
            f"holdout accuracy {scores['first_seen_accuracy']:.4f} on "
            f"{scores['distinct_texts']:.0f} texts, macro-F1 {scores['macro_f1']:.4f}; "
            f"{outcome.reason}; {seconds['total']:.1f}s"
        )
        experiment = experiment_id(tracking_client(tree.mlflow), tree.mlflow.experiment)
        console.print(f"runs: {runs_page(tree.mlflow.uri, experiment)}")
    elif outcome.kind == "skipped":
        console.print(f"[yellow]skipped:[/yellow] {outcome.reason}")
    else:
        console.print(f"[red]error:[/red] {outcome.reason}")
    raise typer.Exit(outcome.exit_code)


@app.command()
def schedule(
    interval: Annotated[float | None, typer.Option(help="Seconds between retrains.")] = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression (UTC), instead of --interval.")
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option(help="Stop after this many successful runs.")
    ] = None,
    batch_model: BatchModelOption = None,
    batch_model_params: BatchParamsOption = None,
) -> None:
    """Retrain on an interval or a cron expression, and early when the speed layer signals drift."""
    from pipelines.batch.retrain import NothingNew
    from pipelines.batch.retrain import retrain as run_retrain
    from pipelines.batch.retrain_task import attempt
    from pipelines.batch.schedule import Cadence, Scheduler
    from pipelines.job_figures import schedule_collector
    from pipelines.jobs import stop_on_signals

    tree = _with_models(batch_model=batch_model, batch_params=batch_model_params)
    batch, tracking, topic = tree.batch, tree.mlflow, tree.kafka.topic
    try:
        cadence = (
            Cadence(interval_s=interval, cron=cron)
            if (interval or cron)
            else Cadence(interval_s=3600)
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    with job_endpoint("schedule", tree) as endpoint:
        scheduler = Scheduler(
            lambda: attempt(
                lambda: run_retrain(batch, tracking, topic, storage=tree.storage), tracking
            ).reraise(),
            cadence,
            batch.lock_path,
            signal_dir=tree.speed.signal_dir,
            skip_errors=(NothingNew,),
            storage=tree.storage,
            heartbeat=endpoint.heartbeat,
            run_stall_s=tree.metrics.retrain_stall_s,
        )
        endpoint.register(schedule_collector(scheduler))
        scheduler.run(stop_on_signals(), max_runs=max_runs)


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the status as one JSON object.")
    ] = False,
) -> None:
    """The whole system at a glance: broker and topic, consumer groups' lag, the master
    dataset, champion and challenger, speed snapshots, the service, the last retrain.

    Exits 1 when the broker, the registry or the master dataset cannot be read, else 0.
    """
    from pipelines.status import render, system_status

    # An unreachable broker is reported in its row; the client's retries would only be noise.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    found = system_status(edge_settings())
    if as_json:
        typer.echo(json.dumps(found.as_record()))
    else:
        console.print(render(found))
    raise typer.Exit(found.exit_code)


@app.command()
def evaluate(
    data: DataOption = CLINC150_DATA,
    scenario: Annotated[ScenarioName, typer.Option(help="Drift scenario.")] = "new-domain",
    limit: Annotated[int, typer.Option(min=100, help="Events in the replay.")] = 40_000,
    drift_at: DriftAtOption = 0.5,
    late_domains: LateDomainsOption = DEFAULT_LATE_DOMAINS_CSV,
    late_intents: LateIntentsOption = "",
    retrain_at: Annotated[
        str, typer.Option(help="Batch retrains, as fractions of the stream.")
    ] = "0.125,0.625",
    window: Annotated[int | None, typer.Option(help="Events per window (default: 1/40).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the replay.")] = 42,
    tail: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Query-log shape: this share of events are generated variants seen about "
            "once (synthetic); the rest a Zipf head of the rows. Default: the rows as they are.",
        ),
    ] = None,
    probe: Annotated[
        float,
        typer.Option(
            min=0,
            max=0.5,
            help="Share of the dataset's distinct texts held out as probes: each enters the "
            "stream once and no model ever trains on it.",
        ),
    ] = 0.05,
    label_delay: LabelDelayOption = 0,
    label_share: LabelShareOption = 1.0,
    output: Annotated[Path, typer.Option(help="Folder for the JSON, table and plot.")] = Path(
        "reports"
    ),
    mlflow_log: Annotated[bool, typer.Option(help="Log the result to MLflow if it is up.")] = True,
    speed_model: SpeedModelOption = None,
    speed_model_params: SpeedParamsOption = None,
    batch_model: BatchModelOption = None,
    batch_model_params: BatchParamsOption = None,
) -> None:
    """Replay a scenario offline, prequentially: batch only vs speed only vs the blend."""
    from rich.progress import Progress

    from pipelines.evaluation import report as evaluation_report
    from pipelines.evaluation.evaluate import EvaluationPlan, run_evaluation
    from pipelines.services.tracking_server import is_healthy

    options = ReplayOptions(
        data=data,
        scenario=scenario,
        limit=limit,
        drift_fraction=drift_at,
        late_domains=_csv(late_domains),
        late_intents=_csv(late_intents),
        seed=seed,
        tail_fraction=tail,
        label_delay=label_delay,
        label_share=label_share,
    )
    try:
        fractions = [float(f) for f in _csv(retrain_at)]
    except ValueError:
        raise fail(f"--retrain-at takes fractions like 0.125,0.625; got {retrain_at!r}") from None
    tree = _with_models(speed_model, speed_model_params, batch_model, batch_model_params)
    plan = EvaluationPlan(
        replay=options,
        retrain_at=tuple(int(f * limit) for f in fractions),
        window=window or max(50, limit // 40),
        probe_fraction=probe,
        speed_model=ModelSpec(tree.speed.model, tree.speed.model_params),
        batch_model=ModelSpec(tree.batch.model, tree.batch.model_params),
    )
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("evaluating", total=limit)
            result = run_evaluation(plan, lambda n: progress.advance(task, n))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    settings = {"command": "lambda-ml evaluate", "plan": asdict(plan)}
    paths = evaluation_report.write(result, output, json.loads(json.dumps(settings, default=str)))
    console.print(evaluation_report.table(result))
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    tracking = tree.mlflow
    if mlflow_log and is_healthy(tracking.uri):
        run_id = evaluation_report.log_to_mlflow(result, paths, tracking)
        console.print(f"logged to MLflow run {run_id} at {tracking.uri}")
    elif mlflow_log:
        console.print(f"[yellow]MLflow is not up at {tracking.uri}: not logged[/yellow]")


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=1000, help="Queries to replay.")] = 24_000,
    rate: Annotated[float, typer.Option(min=1, help="Queries per second.")] = 400.0,
    retrain_every: Annotated[float, typer.Option(min=5, help="Seconds between retrains.")] = 30.0,
    keep_running: Annotated[bool, typer.Option(help="Leave the jobs running at the end.")] = False,
    speed_model: SpeedModelOption = None,
    speed_model_params: SpeedParamsOption = None,
    batch_model: BatchModelOption = None,
    batch_model_params: BatchParamsOption = None,
) -> None:
    """Everything end to end: Kafka, MLflow, speed, archive, scheduled retrains, serving."""
    from pipelines.demo import DemoPlan, run_demo

    plan = DemoPlan(events=events, rate=rate, retrain_every_s=retrain_every)
    tree = _with_models(speed_model, speed_model_params, batch_model, batch_model_params)
    try:
        run_demo(plan, tree, console, keep_running=keep_running)
    except (RuntimeError, KeyboardInterrupt) as exc:
        raise fail(str(exc) or "interrupted") from None
