"""`lambda-ml bench`: run the benchmarks, each printing and saving its figures."""

import json
from pathlib import Path
from typing import Annotated

import typer

from bench import RESULTS_DIR

bench_app = typer.Typer(help="Benchmarks: figures printed and saved under bench/results/.")
Repeats = Annotated[int, typer.Option(min=1, help="Repetitions; figures are medians.")]


@bench_app.command()
def speed(repeats: Repeats = 3) -> None:
    """Naive River loop vs the speed layer, end to end from Kafka; writes speed.json."""
    from bench.speed import main

    main(repeats)


@bench_app.command()
def retrain(repeats: Repeats = 3) -> None:
    """CLINC150 test accuracy, and retrain time and memory on 1M and 2M events; retrain.json."""
    from bench.retrain import main

    main(repeats)


@bench_app.command()
def archive(repeats: Repeats = 3) -> None:
    """Archiver throughput from Kafka to Parquet; writes archive.json."""
    from bench.archive import main

    main(repeats)


@bench_app.command()
def serve(repeats: Repeats = 3) -> None:
    """The blend service vs batch-only, a no-op BentoML service and plain FastAPI; serve.json."""
    from bench.serve import main

    main(["--repeats", str(repeats)])


@bench_app.command()
def freshness(repeats: Repeats = 3) -> None:
    """Time from producing a new intent's queries to the service answering it; freshness.json."""
    from bench.freshness import main

    main(repeats)


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
