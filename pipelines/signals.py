"""The drift signal: the speed layer raises it, the batch scheduler retrains early on it.

A small JSON object in a place both can see, given by path or URL (`common.storage`): a local
folder (a shared volume under docker-compose) or an `s3://` prefix that machines share. It is
written whole (durably, locally); its `raised_at` tells the scheduler whether it is newer than
the last retrain.
"""

import json
import logging
import time

from common.settings import StorageSettings
from common.storage import Location, Storage

SIGNAL_FILE = "drift.json"

log = logging.getLogger(__name__)


def raise_drift_signal(
    directory: Location, details: dict, settings: StorageSettings | None = None
) -> None:
    """Record drift now; `settings` is the object store of an `s3://` location."""
    payload = json.dumps({"raised_at": time.time(), **details}).encode()
    Storage.from_url(directory, settings).write_bytes(SIGNAL_FILE, payload)


def drift_raised_at(directory: Location, settings: StorageSettings | None = None) -> float | None:
    """When drift was last signalled (epoch seconds), or None if never (or unreadable now)."""
    try:
        data = Storage.from_url(directory, settings).read_bytes(SIGNAL_FILE)
        return float(json.loads(data)["raised_at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    except OSError as exc:  # the store is unreachable: no early retrain until it is back
        log.warning("cannot read the drift signal in %s: %s", directory, exc)
        return None
