"""Champion files for benchmarks and tests: a fitted pipeline served without an MLflow server.

`serving.model_state.FileChampion` reads what `save_champion_file` writes, when
`SERVING_CHAMPION_PATH` points at it.
"""

import pickle
from collections.abc import Iterable
from pathlib import Path

from common.durable import write_durably
from models.texts import TextMemory


def save_champion_file(
    path: Path,
    estimator,
    version: str,
    cutoff_offsets: dict[int, int] | None = None,
    training_texts: Iterable[str] | None = None,
) -> None:
    """Pickle a fitted pipeline with its version, cut-off and (optionally) the texts it trained
    on for `FileChampion`, atomically (temporary file, then rename) so that a polling server
    never reads half a file."""
    record = {
        "estimator": estimator,
        "version": version,
        "cutoff_offsets": cutoff_offsets or {},
        "training_texts": None if training_texts is None else TextMemory.of(training_texts),
    }
    write_durably(path, lambda h: pickle.dump(record, h, protocol=pickle.HIGHEST_PROTOCOL))
