"""Benchmarks that print their figures and save them under bench/results/.

Every result file is stamped with the commit, date and settings it was measured at, so a
figure quoted in the README or docs can be traced to the run that produced it.
"""

import json

from pipelines.provenance import PROJECT_ROOT, provenance

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"


def save_figures(name: str, figures: dict, settings: dict | None = None) -> dict:
    """Write `figures` with their provenance to bench/results/<name>.json and print them."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = {**figures, "provenance": provenance(settings or {})}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(stamped, indent=2) + "\n")
    for key, value in figures.items():
        if not isinstance(value, dict | list):
            print(f"{key:40} {value}")
    return stamped
