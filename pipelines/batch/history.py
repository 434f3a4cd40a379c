"""The batch layer's pass over the history: the master dataset up to a cut-off, de-duplicated by
query id, counted into distinct (text, intent) rows and split by text hash.

Two engines count the same thing (`pipelines.batch.counts.HistoryCounts`): `local`, here, reads
the Parquet files in place with pyarrow, in this process; `spark` runs the pass as a Spark job
(`pipelines.batch.history_spark`) for a history that outgrows one machine, and only the aggregate
reaches this process. The holdout split and its lineage are then made from the aggregate by
`pipelines.batch.counts.split_counts`, one function for both engines, so the two engines'
holdouts agree by construction.
"""

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from common.settings import BatchSettings, StorageSettings
from common.storage import Location, Storage
from pipelines.batch.counts import (
    HistoryCounts,
    HistorySplit,
    NoData,
    count_examples,
    pass_lineage,
    split_counts,
)
from streams.master_dataset import history

KEY_COLUMNS = ["query_id", "ts", "partition", "offset"]


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


def read_history_split(
    master_dir: Location | Storage,
    cutoff: dict[int, int],
    holdout_fraction: float,
    storage: StorageSettings | None = None,
) -> HistorySplit:
    """The local engine's counts of the history up to `cutoff`, split (`split_counts`)."""
    return split_counts(count_history_local(master_dir, cutoff, storage), holdout_fraction)
