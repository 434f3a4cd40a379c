"""Where a figure comes from: the commit, date, machine and settings of the run that measured
it, stamped on every result file so a figure quoted in the docs can be traced to its run."""

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# Result files and docs change while benchmarks run; they are not the code that measured.
_RESULT_PATHS = ("bench/results/", "docs/", "README.md")


def provenance(settings: dict) -> dict:
    """The stamp: commit (with `+dirty` and the files when tracked code has uncommitted
    changes; "unknown" outside a checkout), UTC date, the machine's size and `settings`."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    paths = [line.split(maxsplit=1)[-1] for line in status]
    changed = [path for path in paths if not path.startswith(_RESULT_PATHS)]
    stamp: dict = {}
    if commit != "unknown" and changed:
        commit += "+dirty"
        stamp["uncommitted_files"] = changed
    return {
        "commit": commit,
        **stamp,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": settings,
    }
