"""The batch layer's pass over the history: the master dataset up to a cut-off, de-duplicated by
query id, counted into distinct (text, intent) rows and split by text hash.

Two engines count the same thing (`HistoryCounts`): `local` reads the Parquet files in place
with pyarrow, in this process; `spark` runs the pass as a Spark job
(`pipelines.batch.history_spark`) for a history that outgrows one machine, and only the aggregate
reaches this process. The holdout split and its lineage are then made from the aggregate by
`split_counts`, one function for both engines, so the two engines' holdouts agree by construction.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from common.settings import BatchSettings, StorageSettings
from common.storage import Location, Storage
from models.registry import encode_offsets
from models.texts import in_holdout, text_keys
from pipelines.batch.counts import count_examples
from streams.master_dataset import history

KEY_COLUMNS = ["query_id", "ts", "partition", "offset"]


class NoData(RuntimeError):
    """The master dataset has too little labelled history to train on."""


@dataclass(frozen=True)
class HistoryCounts:
    """The distinct labelled (text, intent) rows of the history up to a cut-off, sorted by text
    then intent, how often each occurred, and the lineage of the pass that counted them."""

    texts: list[str]
    intents: list[str]
    counts: np.ndarray
    lineage: dict[str, str]


@dataclass(frozen=True)
class HistorySplit:
    """Train counts and the holdout of one run, with the lineage of the data behind them."""

    texts: list[str]
    intents: list[str]
    weights: np.ndarray
    holdout_texts: list[str]
    holdout_intents: list[str]
    holdout_weights: np.ndarray
    lineage: dict[str, str]
    keys: np.ndarray  # `models.texts.text_key` of each training text
    holdout_keys: np.ndarray

    @property
    def holdout(self) -> tuple[list[str], list[str], np.ndarray]:
        """(texts, intents, weights) of the holdout, as `score_holdout` takes them."""
        return self.holdout_texts, self.holdout_intents, self.holdout_weights


def content_hash(names: list[str], cutoff: dict[int, int]) -> str:
    """Archived files are immutable and named by offset range, so their names and the cut-off
    identify the training data exactly."""
    digest = hashlib.sha256(encode_offsets(cutoff).encode())
    for name in sorted(Path(p).name for p in names):
        digest.update(name.encode())
    return digest.hexdigest()


def pass_lineage(
    rows: int, dropped: int, ts_min: str, ts_max: str, names: list[str], cutoff: dict[int, int]
) -> dict[str, str]:
    """The lineage every engine records of its pass: the events counted, the repeats dropped,
    their time span, the cut-off and the content hash of the files (`content_hash`)."""
    return {
        "rows": str(rows),
        "duplicates_dropped": str(dropped),
        "ts_min": ts_min,
        "ts_max": ts_max,
        "cutoff_offsets": encode_offsets(cutoff),
        "content_hash": content_hash(names, cutoff),
    }


def _row_ids(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """One int64 per row from (partition, offset): unique across the whole topic."""
    partition = table["partition"].to_numpy().astype(np.int64)
    return (partition << 40) | table["offset"].to_numpy()


def _repeated_row_ids(events: pa.Table) -> np.ndarray:
    """The row ids (`_row_ids`) of events whose query id came before: `events` sorted by
    (partition, offset), so the first of each query id is the one kept."""
    repeated = pd.Series(events["query_id"].to_numpy(zero_copy_only=False)).duplicated()
    return _row_ids(events)[repeated.to_numpy()]


def _first_of_each_query(
    dataset: ds.Dataset, labelled: pc.Expression, dropped: np.ndarray
) -> Iterator[pa.RecordBatch]:
    """The (text, intent) rows of the labelled events, in batches and without the `dropped`
    repeats, so the history is never read whole into memory."""
    for batch in dataset.to_batches(columns=["text", "intent", *KEY_COLUMNS[2:]], filter=labelled):
        keep = ~np.isin(_row_ids(batch), dropped) if len(dropped) else None
        rows = batch.select(["text", "intent"])
        yield rows if keep is None else rows.filter(pa.array(keep))


def count_history_local(
    master_dir: Location | Storage, cutoff: dict[int, int], storage: StorageSettings | None = None
) -> HistoryCounts:
    """The local engine: labelled, de-duplicated history up to `cutoff`, counted into distinct
    (text, intent) rows with pyarrow, read column-pruned in batches.

    Duplicate query ids are the same event: only the first (lowest partition, offset) counts.
    `master_dir` is a folder or an `s3://` URL on the store `storage` describes.
    """
    dataset = history(master_dir, cutoff, storage)
    labelled = pc.field("intent").is_valid()
    events = dataset.to_table(columns=KEY_COLUMNS, filter=labelled)
    if events.num_rows == 0:
        raise NoData(f"no labelled events archived in {master_dir} up to {cutoff}")
    events = events.sort_by([("partition", "ascending"), ("offset", "ascending")])
    dropped = _repeated_row_ids(events)
    texts, intents, counts = count_examples(_first_of_each_query(dataset, labelled, dropped))
    ts = events["ts"]
    lineage = {"engine": "local"} | pass_lineage(
        events.num_rows - len(dropped),
        len(dropped),
        pc.min(ts).as_py().isoformat(),
        pc.max(ts).as_py().isoformat(),
        dataset.files,
        cutoff,
    )
    return HistoryCounts(texts, intents, counts, lineage)


def count_history(
    batch: BatchSettings, cutoff: dict[int, int], storage: StorageSettings | None = None
) -> HistoryCounts:
    """The history of `batch.master_dir` up to `cutoff`, counted by the engine `batch.engine`
    names."""
    if batch.engine == "spark":
        from pipelines.batch.history_spark import count_history_spark

        return count_history_spark(
            batch.master_dir, cutoff, storage, batch.spark_master, batch.spark_conf
        )
    return count_history_local(batch.master_dir, cutoff, storage)


def split_counts(counts: HistoryCounts, holdout_fraction: float) -> HistorySplit:
    """The counted rows split by text hash (`models.texts.in_holdout`) into train and holdout,
    with the engine's lineage and the split's sizes: the driver's part of the pass, the same
    for every engine."""
    keys = text_keys(counts.texts)
    holdout = in_holdout(keys, holdout_fraction)
    train, held = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    weights = counts.counts
    lineage = counts.lineage | {
        "aggregate_rows": str(len(counts.texts)),
        "train_rows": str(int(weights[train].sum())),
        "holdout_rows": str(int(weights[held].sum())),
        "distinct_train_texts": str(len(train)),
        "distinct_holdout_texts": str(len(held)),
        "holdout_split": f"text hash, fraction {holdout_fraction}",
    }
    return HistorySplit(
        [counts.texts[i] for i in train],
        [counts.intents[i] for i in train],
        weights[train],
        [counts.texts[i] for i in held],
        [counts.intents[i] for i in held],
        weights[held],
        lineage,
        keys[train],
        keys[held],
    )


def read_history_split(
    master_dir: Location | Storage,
    cutoff: dict[int, int],
    holdout_fraction: float,
    storage: StorageSettings | None = None,
) -> HistorySplit:
    """The local engine's counts of the history up to `cutoff`, split (`split_counts`)."""
    return split_counts(count_history_local(master_dir, cutoff, storage), holdout_fraction)
