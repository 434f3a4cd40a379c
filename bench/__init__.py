"""Benchmarks that print their figures and save them under bench/results/."""

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def save_figures(name: str, figures: dict) -> dict:
    """Write `figures` to bench/results/<name>.json and print them, one per line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:28} {value}")
    return figures
