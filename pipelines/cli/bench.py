"""`lambda-ml bench`: run the benchmarks, each printing and saving its figures."""

import json
from pathlib import Path
from typing import Annotated

import typer

from bench import RESULTS_DIR
from pipelines.cli.edge import settings as edge_settings

bench_app = typer.Typer(help="Benchmarks: figures printed and saved under bench/results/.")
Repeats = Annotated[int, typer.Option(min=1, help="Repetitions; figures are medians.")]


@bench_app.command()
def speed(
    repeats: Repeats = 3,
    workers: Annotated[
        str, typer.Option(help="Consumer-group sizes to measure on 4 partitions; '' skips.")
    ] = "1,2",
) -> None:
    """The speed layer with a champion vs a tuned River loop, end to end from Kafka, and a
    consumer group of each size in `workers`; speed.json."""
    from bench.speed import main

    main(edge_settings(), repeats, workers=_numbers(workers, int))


@bench_app.command()
def retrain(
    repeats: Repeats = 1,
    sizes: Annotated[str, typer.Option(help="History sizes in events.")] = "1000000,2000000",
    distinct: Annotated[
        str, typer.Option(help="Shares of distinct texts in the history.")
    ] = "0.02,0.1,0.3",
    engine: Annotated[
        str, typer.Option(help="Engines: `local,spark` compares the history pass instead.")
    ] = "local",
) -> None:
    """CLINC150 test accuracy, and whole retrains against a bare fit of the same rows, by
    history size and share of distinct texts; or, with `--engine local,spark`, the history
    pass on each engine and the sampled fit against the full one; writes retrain.json."""
    from bench.retrain import main

    engines = tuple(part.strip() for part in engine.split(",") if part.strip())
    main(repeats, _numbers(sizes, int), _numbers(distinct, float), engines)


def _numbers(value: str, kind: type) -> tuple:
    return tuple(kind(part) for part in value.split(",") if part.strip())


@bench_app.command()
def archive(repeats: Repeats = 3) -> None:
    """Archiver throughput from Kafka to Parquet; writes archive.json."""
    from bench.archive import main

    main(edge_settings(), repeats)


@bench_app.command()
def serve(repeats: Repeats = 3) -> None:
    """The blend service vs batch-only, a no-op BentoML service and plain FastAPI; serve.json."""
    from bench.serve import main

    main(edge_settings(), ["--repeats", str(repeats)])


@bench_app.command()
def freshness(repeats: Repeats = 3) -> None:
    """Time from producing a new intent's queries to the service answering it; freshness.json."""
    from bench.freshness import main

    main(edge_settings(), repeats)


@bench_app.command()
def oos() -> None:
    """CLINC150 test: in-scope accuracy and out-of-scope recall of the batch model's scope
    decision, tuned without the test split; oos.json and docs/oos.png."""
    from bench.oos import main

    main()


@bench_app.command()
def models() -> None:
    """Every shipped speed and batch model through `evaluate` on the same stream; the table
    goes to docs/models/README.md, the figures to models.json."""
    from bench.models import main

    main()


@bench_app.command(name="all")
def run_all(repeats: Repeats = 3) -> None:
    """Every benchmark, then bench/results/summary.md beside the JSON files."""
    for job in (speed, retrain, archive, serve, freshness):
        job(repeats)
    write_summary()


def write_summary() -> Path:
    """One markdown table per benchmark, from the JSON files as they are."""
    lines = ["# Benchmark results", ""]
    for name in ("speed", "retrain", "archive", "serve", "freshness"):
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            lines += [f"## {name}", "", "not run", ""]
            continue
        figures = json.loads(path.read_text())
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        lines += [
            f"| {key} | {value} |"
            for key, value in figures.items()
            if not isinstance(value, dict | list)
        ]
        lines.append("")
    summary = RESULTS_DIR / "summary.md"
    summary.write_text("\n".join(lines))
    return summary
