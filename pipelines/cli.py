"""The `lambda-ml` command line: one subcommand per job.

Settings are read from the environment here, at the edge, and passed down to the jobs.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.produce import ReplayOptions, run_produce
from streams.config import KafkaSettings
from streams.dataset import CLINC150_DATA
from streams.scenarios import DEFAULT_LATE_DOMAINS, ScenarioName

app = typer.Typer(
    help="lambda-ml: a Lambda-architecture retraining pipeline for query understanding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def fail(message: str) -> typer.Exit:
    """Print an expected failure as one red line and return the exit to raise."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@app.command()
def produce(
    data: Annotated[
        Path, typer.Option(help="JSONL file of {text, intent} objects.")
    ] = CLINC150_DATA,
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
    drift_at: Annotated[
        float, typer.Option(min=0, max=1, help="Drift point, as a fraction of the stream.")
    ] = 0.5,
    late_domains: Annotated[
        str, typer.Option(help="new-domain: CLINC150 domains that arrive late.")
    ] = ",".join(DEFAULT_LATE_DOMAINS),
    late_intents: Annotated[
        str, typer.Option(help="new-domain: intents that arrive late (overrides --late-domains).")
    ] = "",
    splits: Annotated[
        str, typer.Option(help="Keep only these dataset splits (comma-separated).")
    ] = "",
    span_days: Annotated[
        float, typer.Option(min=0, help="Spread timestamps over the past N days (0 = wall clock).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle, scenario and users.")] = 42,
    run_id: Annotated[
        str, typer.Option(help="Namespace of the query ids; a new one gives new ids.")
    ] = "replay",
) -> None:
    """Replay a dataset onto the `queries` topic as a Siri-style stream (acks=all, idempotent)."""
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
    )
    settings = KafkaSettings()
    try:
        stats = run_produce(settings, options, console)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"sent {stats.sent} events to {settings.topic} in {stats.seconds:.1f}s "
        f"({stats.events_per_s:,.0f}/s); {stats.failed} failed, "
        f"{stats.dead_lettered} dead-lettered to {settings.dlq_topic}"
    )
    if stats.failed:
        raise typer.Exit(1)
