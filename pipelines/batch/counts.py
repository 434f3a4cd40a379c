"""Distinct labelled (text, intent) rows and how often each occurred: what the batch layer
trains on, so that millions of repeated events cost what the distinct ones cost.

The master dataset repeats texts (replays, popular queries). `count_examples` streams Arrow
batches into distinct pairs with counts; `models.batch.recipe.fit_on_counts` fits on them with
the counts as weights: exactly the model the repeated rows would give.

Every engine of the history pass (`pipelines.batch.history`, `pipelines.batch.history_spark`)
returns its counts as `HistoryCounts` with the lineage `pass_lineage` makes, and `split_counts`
splits them into train and holdout: one function for both engines, so that their holdouts
agree by construction.
"""

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.registry import encode_offsets
from models.texts import in_holdout, text_keys
from streams.master_dataset import Cutoff

# Counts held per batch are merged once they outgrow twice the merged table plus this many rows.
_MERGE_SLACK = 100_000


def count_examples(
    batches: Iterable[pa.RecordBatch | pa.Table],
) -> tuple[list[str], list[str], np.ndarray]:
    """Distinct (text, intent) pairs of `batches` (columns `text`, `intent`) and their counts.

    Each batch is grouped in Arrow; the partial counts are merged whenever they outgrow the
    merged ones, so memory follows the number of distinct pairs, not of rows. Unlabelled rows
    (null intent) are skipped. The pairs come sorted, so the result does not depend on the
    order of the batches.

    Parameters
    ----------
    batches
        Arrow batches or tables with string columns `text` and `intent`.

    Returns
    -------
    texts, intents : list of str
        The distinct labelled pairs, sorted by text then intent.
    weights : numpy.ndarray
        How many times each pair occurred, as floats (`fit_on_counts`'s weights).

    Examples
    --------
    >>> batch = pa.RecordBatch.from_pydict(
    ...     {"text": ["hi", "hi", "bye", "hi"], "intent": ["greet", "greet", "bye", None]}
    ... )
    >>> texts, intents, weights = count_examples([batch])
    >>> texts, intents, weights.tolist()
    (['bye', 'hi'], ['bye', 'greet'], [1.0, 2.0])
    """
    parts: list[pa.Table] = []
    held = merged = 0
    for batch in batches:
        parts.append(_count_batch(batch))
        held += parts[-1].num_rows
        if held > 2 * merged + _MERGE_SLACK:
            parts = [_merge_counts(parts)]
            held = merged = parts[0].num_rows
    if not parts:
        return [], [], np.zeros(0)
    counts = _merge_counts(parts).sort_by([("text", "ascending"), ("intent", "ascending")])
    weights = counts["count"].to_numpy().astype(np.float64)
    return counts["text"].to_pylist(), counts["intent"].to_pylist(), weights


def _count_batch(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    table = pa.table(batch.select(["text", "intent"]))
    labelled = pc.and_(pc.is_valid(table["text"]), pc.is_valid(table["intent"]))
    grouped = table.filter(labelled).group_by(["text", "intent"]).aggregate([([], "count_all")])
    return grouped.rename_columns(["text", "intent", "count"])


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    grouped = pa.concat_tables(parts).group_by(["text", "intent"]).aggregate([("count", "sum")])
    return grouped.rename_columns(["text", "intent", "count"])


def count_examples_from_pairs(
    pairs: Iterable[tuple[str, str]],
) -> tuple[list[str], list[str], np.ndarray]:
    """`count_examples` for (text, intent) pairs already in memory.

    >>> count_examples_from_pairs([("hi", "greet"), ("bye", "bye"), ("hi", "greet")])
    (['bye', 'hi'], ['bye', 'greet'], array([1., 2.]))
    """
    counts = sorted(Counter(pairs).items())
    texts = [text for (text, _), _ in counts]
    intents = [intent for (_, intent), _ in counts]
    return texts, intents, np.array([count for _, count in counts], dtype=np.float64)


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


def content_hash(names: list[str], label_names: list[str], cutoff: Cutoff) -> str:
    """Archived files are immutable and named by offset range, so their names (queries' and
    labels') and the cut-off identify the training data exactly. A history without labels of
    the feedback topic hashes as it did before that topic was archived."""
    digest = hashlib.sha256(encode_offsets(cutoff.queries).encode())
    for name in sorted(Path(p).name for p in names):
        digest.update(name.encode())
    if label_names or cutoff.feedback:
        digest.update(b"\0" + encode_offsets(cutoff.feedback).encode())
        for name in sorted(Path(p).name for p in label_names):
            digest.update(b"feedback/" + name.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PassTotals:
    """What a pass found, the same on every engine: `queries` distinct query ids (their
    `duplicates_dropped` repeats left out), of which `labels_inline` are labelled by their own
    intent and `labels_joined` by the last label of the feedback topic; `labels_superseded`
    labels that a later one replaced (an inline one, or an earlier one of the topic),
    `labels_without_query` labels of the topic whose query id has no query, and the time span
    of the labelled queries.
    """

    queries: int
    duplicates_dropped: int
    labels_inline: int
    labels_joined: int
    labels_superseded: int
    labels_without_query: int
    feedback_labels: int
    ts_min: str
    ts_max: str

    @property
    def rows(self) -> int:
        """The labelled queries: the events counted into examples."""
        return self.labels_inline + self.labels_joined


def pass_lineage(
    totals: PassTotals, names: list[str], label_names: list[str], cutoff: Cutoff
) -> dict[str, str]:
    """The lineage every engine records of its pass: its totals (`PassTotals`), the cut-off of
    both topics and the content hash of the files (`content_hash`)."""
    return {
        "rows": str(totals.rows),
        "duplicates_dropped": str(totals.duplicates_dropped),
        "ts_min": totals.ts_min,
        "ts_max": totals.ts_max,
        "queries": str(totals.queries),
        "queries_without_label": str(totals.queries - totals.rows),
        "labels_inline": str(totals.labels_inline),
        "labels_joined": str(totals.labels_joined),
        "labels_superseded": str(totals.labels_superseded),
        "labels_without_query": str(totals.labels_without_query),
        "feedback_labels": str(totals.feedback_labels),
        "cutoff_offsets": encode_offsets(cutoff.queries),
        "cutoff_feedback_offsets": encode_offsets(cutoff.feedback),
        "content_hash": content_hash(names, label_names, cutoff),
    }


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
