"""Benchmarks that print their figures and save them under bench/results/.

Every result file is stamped with the commit, date and settings it was measured at, so a
figure quoted in the README or docs can be traced to the run that produced it.
"""

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def provenance(settings: dict) -> dict:
    """The stamp every result file carries: commit (with `+dirty` for uncommitted changes),
    UTC date, the machine's size and the benchmark's own settings."""
    root = RESULTS_DIR.parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": settings,
    }


def save_figures(name: str, figures: dict, settings: dict | None = None) -> dict:
    """Write `figures` with their provenance to bench/results/<name>.json and print them."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = {**figures, "provenance": provenance(settings or {})}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(stamped, indent=2) + "\n")
    for key, value in figures.items():
        if not isinstance(value, dict | list):
            print(f"{key:40} {value}")
    return stamped
