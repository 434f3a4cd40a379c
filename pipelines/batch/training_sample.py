"""A training set that fits the fit: past a bound on the distinct training rows, a sample of them
whose weights keep every intent's total.

Each intent gets a share of the bound in proportion to its distinct rows (at least one row).
Its most frequent repeated rows (count above one, most frequent first, ties in text order), up
to half its share, are kept whole with their own weights: the phrasings people repeat. The rest
of its share is a uniform sample, without replacement, of its other rows (its tail), each
weighted by the tail's total weight over the sampled rows' total, so the intent's total weight
is kept (exactly up to floating-point rounding). The sample depends only on the rows and the
seed; the holdout is never sampled.
"""

from dataclasses import dataclass, replace

import numpy as np

from pipelines.batch.counts import HistorySplit

RULE = "per intent: repeated head up to half its share, uniform tail sample reweighted"


@dataclass(frozen=True)
class Sample:
    """Which training rows to keep (ascending indices), their weights, and what was taken."""

    rows: np.ndarray
    weights: np.ndarray
    lineage: dict[str, str]


def sample_rows(intents: list[str], weights: np.ndarray, max_rows: int, seed: int) -> Sample:
    """The sample of the rows `intents` and `weights` describe, of about `max_rows` rows (more
    only when there are more intents than `max_rows`); every row when they are no more.

    >>> sample = sample_rows(["a"] * 4 + ["b"] * 2, np.array([5.0, 1, 1, 1, 2, 1]), 3, seed=0)
    >>> len(sample.rows), float(sample.weights.sum())
    (3, 11.0)
    """
    total = len(intents)
    if total <= max_rows:
        return Sample(np.arange(total), weights, _lineage(False, total, total, 0, max_rows, seed))
    rng = np.random.default_rng(seed)
    _, codes = np.unique(np.asarray(intents), return_inverse=True)  # intents in sorted order
    by_intent = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_intent], np.arange(codes.max() + 2))
    kept_rows, kept_weights, head_rows = [], [], 0
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = by_intent[start:end]
        share = max(1, max_rows * len(rows) // total)
        by_count = rows[np.argsort(-weights[rows], kind="stable")]
        repeated = by_count[weights[by_count] > 1]
        head = repeated[: min(share // 2, len(repeated))]
        tail = by_count[len(head) :]
        picked = tail[np.sort(rng.choice(len(tail), min(share - len(head), len(tail)), False))]
        scale = weights[tail].sum() / weights[picked].sum() if len(picked) else 0.0
        kept_rows += [head, picked]
        kept_weights += [weights[head], weights[picked] * scale]
        head_rows += len(head)
    rows = np.concatenate(kept_rows)
    order = np.argsort(rows)
    lineage = _lineage(True, total, len(rows), head_rows, max_rows, seed)
    return Sample(rows[order], np.concatenate(kept_weights)[order], lineage)


def _lineage(
    sampled: bool, before: int, kept: int, head: int, max_rows: int, seed: int
) -> dict[str, str]:
    return {
        "sample.applied": str(sampled).lower(),
        "sample.max_distinct_rows": str(max_rows),
        "sample.distinct_rows_before": str(before),
        "sample.distinct_rows_kept": str(kept),
        "sample.head_rows": str(head),
        "sample.tail_rows": str(kept - head if sampled else 0),
        "sample.seed": str(seed),
        "sample.rule": RULE if sampled else "none: every row",
    }


def sample_split(split: HistorySplit, max_rows: int, seed: int) -> HistorySplit:
    """`split` with its training rows sampled (`sample_rows`) and what was taken added to its
    lineage; its holdout as it was."""
    sample = sample_rows(split.intents, split.weights, max_rows, seed)
    if sample.lineage["sample.applied"] == "false":
        return replace(split, lineage=split.lineage | sample.lineage)
    kept = sample.rows.tolist()
    return replace(
        split,
        texts=[split.texts[i] for i in kept],
        intents=[split.intents[i] for i in kept],
        weights=sample.weights,
        keys=split.keys[sample.rows],
        lineage=split.lineage | sample.lineage | {"distinct_train_texts": str(len(kept))},
    )
