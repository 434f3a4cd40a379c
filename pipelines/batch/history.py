"""The batch layer's pass over the history: the master dataset up to a cut-off, labels joined to
queries by query id, counted into distinct (text, intent) rows and split by text hash.

The join rule, the same on every engine: a query id seen more than once is one query, its
first event (lowest partition, then offset) kept; a query's label is the last label of the
feedback topic for its query id (by partition, then offset) up to the cut-off, else its own
inline `intent` (a label known at query time: delay 0); a later label wins over an earlier one.
Queries without a label, and labels without a query, are counted in the pass's lineage
(`pipelines.batch.counts.PassTotals`), not trained on.

Two engines count the same thing (`pipelines.batch.counts.HistoryCounts`): `local`, here, reads
the Parquet files in place with pyarrow, in this process; `spark` runs the pass as a Spark job
(`pipelines.batch.history_spark`) for a history that outgrows one machine, and only the aggregate
reaches this process. The holdout split and its lineage are then made from the aggregate by
`pipelines.batch.counts.split_counts`, one function for both engines, so the two engines'
holdouts agree by construction.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

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
    PassTotals,
    count_examples,
    pass_lineage,
    split_counts,
)
from streams.master_dataset import Cutoff, feedback_history, history, open_root

KEY_COLUMNS = {
    "query_id": pc.field("query_id"),
    "ts": pc.field("ts"),
    "partition": pc.field("partition"),
    "offset": pc.field("offset"),
    "inline": pc.field("intent").is_valid(),
}
LABEL_COLUMNS = ["query_id", "intent", "partition", "offset"]
_BY_POSITION = [("partition", "ascending"), ("offset", "ascending")]


def _row_ids(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """One int64 per row from (partition, offset): unique across the whole topic."""
    partition = table["partition"].to_numpy().astype(np.int64)
    return (partition << 40) | table["offset"].to_numpy()


def _repeated(query_ids: pa.ChunkedArray, keep: str) -> np.ndarray:
    """Whether each row's query id occurs again before it (`keep="first"`) or after it
    (`keep="last"`): the rows the join does not keep."""
    ids = pd.Series(query_ids.to_numpy(zero_copy_only=False))
    return ids.duplicated(keep=keep).to_numpy()


@dataclass(frozen=True)
class _Relabel:
    """The kept queries whose label comes from the feedback topic: their row ids, sorted, and
    the label of each."""

    rows: np.ndarray
    intents: pa.Array

    def apply(self, batch: pa.RecordBatch) -> pa.Array:
        """The intents of `batch` with the joined labels in place of the inline ones."""
        rows = _row_ids(batch)
        at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        hit = self.rows[at] == rows
        if not hit.any():
            return batch["intent"]
        joined = self.intents.take(pa.array(np.where(hit, at, 0)))
        return pc.if_else(pa.array(hit), joined, batch["intent"])


def _examples(
    dataset: ds.Dataset, dropped: np.ndarray, relabel: _Relabel | None
) -> Iterator[pa.Table]:
    """The (text, label) rows of the kept queries, in batches and without the `dropped`
    repeats, so the history is never read whole into memory (unlabelled rows are skipped by
    the counting)."""
    columns = ["text", "intent", "partition", "offset"]
    only_inline = pc.field("intent").is_valid() if relabel is None else None
    for batch in dataset.to_batches(columns=columns, filter=only_inline):
        intents = batch["intent"] if relabel is None else relabel.apply(batch)
        rows = pa.table({"text": batch["text"], "intent": intents})
        yield rows.filter(pa.array(~np.isin(_row_ids(batch), dropped))) if len(dropped) else rows


def _join(
    queries: pa.Table, kept: np.ndarray, labels: pa.Table
) -> tuple[_Relabel | None, np.ndarray, dict[str, int]]:
    """The join of `labels` (sorted by position) to the `kept` rows of `queries`: what to
    relabel, which kept queries are labelled, and the label totals of `PassTotals`."""
    inline = queries["inline"].to_numpy(zero_copy_only=False)[kept]
    if labels.num_rows == 0:
        totals = {"inline": int(inline.sum()), "joined": 0, "superseded": 0, "orphans": 0}
        return None, inline, totals
    kept_ids = queries["query_id"].filter(pa.array(kept)).combine_chunks()
    last = labels.filter(pa.array(~_repeated(labels["query_id"], keep="last")))
    at = pc.index_in(last["query_id"], value_set=kept_ids)
    joined = at.is_valid().to_numpy(zero_copy_only=False)
    where = at.drop_null().to_numpy().astype(np.int64)
    of_a_query = int(pc.sum(pc.is_in(labels["query_id"], value_set=kept_ids)).as_py() or 0)
    replaced_inline = int(inline[where].sum())
    labelled = inline.copy()
    labelled[where] = True
    rows = _row_ids(queries)[kept][where]
    order = np.argsort(rows)
    intents = last["intent"].filter(pa.array(joined)).combine_chunks()
    relabel = _Relabel(rows[order], intents.take(pa.array(order)))
    totals = {
        "inline": int(inline.sum()) - replaced_inline,
        "joined": len(where),
        "superseded": of_a_query - len(where) + replaced_inline,
        "orphans": labels.num_rows - of_a_query,
    }
    return relabel, labelled, totals


def _files(dataset: ds.Dataset) -> list[str]:
    """The files a dataset reads (none for the empty one a topic without files gives)."""
    return dataset.files if isinstance(dataset, ds.FileSystemDataset) else []


def count_history_local(
    master_dir: Location | Storage,
    cutoff: Cutoff | Mapping[int, int],
    storage: StorageSettings | None = None,
) -> HistoryCounts:
    """The local engine: the history up to `cutoff`, labels joined to queries (the module's
    rule), counted into distinct (text, intent) rows with pyarrow, read column-pruned in
    batches.

    `master_dir` is a folder or an `s3://` URL on the store `storage` describes; a cut-off of
    queries offsets alone (`Cutoff.of`) reads inline labels only.
    """
    cutoff = Cutoff.of(cutoff)
    root = open_root(master_dir, storage)
    dataset, labelled_dataset = history(root, cutoff), feedback_history(root, cutoff)
    queries = dataset.to_table(columns=KEY_COLUMNS).sort_by(_BY_POSITION)
    kept = ~_repeated(queries["query_id"], keep="first")
    labels = labelled_dataset.to_table(columns=LABEL_COLUMNS).sort_by(_BY_POSITION)
    relabel, labelled, totals = _join(queries, kept, labels)
    if not labelled.any():
        raise NoData(f"no labelled queries archived in {master_dir} up to {cutoff}")
    dropped = _row_ids(queries)[~kept]
    texts, intents, counts = count_examples(_examples(dataset, dropped, relabel))
    ts = queries["ts"].filter(pa.array(kept)).filter(pa.array(labelled))
    found = PassTotals(
        queries=int(kept.sum()),
        duplicates_dropped=len(dropped),
        labels_inline=totals["inline"],
        labels_joined=totals["joined"],
        labels_superseded=totals["superseded"],
        labels_without_query=totals["orphans"],
        feedback_labels=labels.num_rows,
        ts_min=pc.min(ts).as_py().isoformat(),
        ts_max=pc.max(ts).as_py().isoformat(),
    )
    lineage = pass_lineage(found, _files(dataset), _files(labelled_dataset), cutoff)
    return HistoryCounts(texts, intents, counts, {"engine": "local"} | lineage)


def count_history(
    batch: BatchSettings,
    cutoff: Cutoff | Mapping[int, int],
    storage: StorageSettings | None = None,
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
    cutoff: Cutoff | Mapping[int, int],
    holdout_fraction: float,
    storage: StorageSettings | None = None,
) -> HistorySplit:
    """The local engine's counts of the history up to `cutoff`, split (`split_counts`)."""
    return split_counts(count_history_local(master_dir, cutoff, storage), holdout_fraction)
