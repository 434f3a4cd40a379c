"""The drift signal: the speed layer raises it, the batch scheduler retrains early on it.

A small JSON file in a folder both can see (a shared volume under docker-compose), written
durably; its `raised_at` tells the scheduler whether it is newer than the last retrain.
"""

import json
import time
from pathlib import Path

from common.durable import write_durably

SIGNAL_FILE = "drift.json"


def raise_drift_signal(directory: Path, details: dict) -> None:
    write_durably(
        directory / SIGNAL_FILE, json.dumps({"raised_at": time.time(), **details}).encode()
    )


def drift_raised_at(directory: Path) -> float | None:
    """When drift was last signalled (epoch seconds), or None if never."""
    try:
        return float(json.loads((directory / SIGNAL_FILE).read_text())["raised_at"])
    except (FileNotFoundError, ValueError, KeyError):
        return None
