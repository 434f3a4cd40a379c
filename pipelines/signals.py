"""The drift signal: the speed layer raises it, the batch scheduler retrains early on it.

A small JSON file in a folder both can see (a shared volume under docker-compose), written
atomically; its `raised_at` tells the scheduler whether it is newer than the last retrain.
"""

import json
import os
import time
from pathlib import Path

SIGNAL_FILE = "drift.json"


def raise_drift_signal(directory: Path, details: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{SIGNAL_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps({"raised_at": time.time(), **details}))
    os.replace(temporary, directory / SIGNAL_FILE)


def drift_raised_at(directory: Path) -> float | None:
    """When drift was last signalled (epoch seconds), or None if never."""
    try:
        return float(json.loads((directory / SIGNAL_FILE).read_text())["raised_at"])
    except (FileNotFoundError, ValueError, KeyError):
        return None
