"""Distinct labelled (text, intent) rows and how often each occurred: what the batch layer
trains on, so that millions of repeated events cost what the distinct ones cost.

The master dataset repeats texts (replays, popular queries). `count_examples` streams Arrow
batches into distinct pairs with counts; `models.batch.recipe.fit_on_counts` fits on them with
the counts as weights: exactly the model the repeated rows would give.
"""

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
