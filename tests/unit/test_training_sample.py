"""The sampled training set: bounded, every intent's total weight kept, the repeated head kept
whole, the same sample for the same seed, and the holdout untouched."""

from collections import defaultdict

import numpy as np
import pytest

from pipelines.batch.counts import HistoryCounts, split_counts
from pipelines.batch.training_sample import sample_rows, sample_split


def long_tail(intents: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Rows of `intents` intents of different sizes: a few repeated rows each, then a tail of
    rows seen once or twice."""
    rng = np.random.default_rng(seed)
    labels, weights = [], []
    for n in range(intents):
        size = 200 + 150 * n
        labels += [f"intent{n}"] * size
        head = rng.integers(20, 400, size=10).astype(float)
        weights += [*head, *rng.choice([1.0, 1.0, 1.0, 2.0], size=size - 10)]
    order = rng.permutation(len(labels))  # the rows come sorted by text, not by intent
    return [labels[i] for i in order], np.asarray(weights)[order]


def totals(labels, weights) -> dict[str, float]:
    summed: dict[str, float] = defaultdict(float)
    for label, weight in zip(labels, weights, strict=True):
        summed[label] += weight
    return dict(summed)


@pytest.mark.parametrize("max_rows", [50, 400, 2000])
def test_the_weights_keep_every_intents_total(max_rows):
    labels, weights = long_tail()
    sample = sample_rows(labels, weights, max_rows, seed=1)
    assert len(sample.rows) <= max_rows + 8  # at least one row an intent
    assert np.all(np.diff(sample.rows) > 0) and len(sample.rows) == len(sample.weights)
    before = totals(labels, weights)
    after = totals([labels[i] for i in sample.rows], sample.weights)
    assert after.keys() == before.keys()
    for intent, total in before.items():
        assert after[intent] == pytest.approx(total, rel=1e-12), intent
    assert sample.lineage["sample.applied"] == "true"
    assert int(sample.lineage["sample.distinct_rows_kept"]) == len(sample.rows)


def test_each_intents_most_repeated_rows_are_kept_with_their_own_weights():
    labels, weights = long_tail()
    sample = sample_rows(labels, weights, 400, seed=1)
    kept = dict(zip(sample.rows.tolist(), sample.weights, strict=True))
    for intent in set(labels):
        rows = [i for i, label in enumerate(labels) if label == intent]
        top = max(rows, key=lambda i: weights[i])
        assert kept[top] == weights[top]
    assert int(sample.lineage["sample.head_rows"]) > 0


def test_the_sample_is_deterministic_for_a_seed():
    labels, weights = long_tail()
    one, again = sample_rows(labels, weights, 300, 5), sample_rows(labels, weights, 300, 5)
    assert np.array_equal(one.rows, again.rows) and np.array_equal(one.weights, again.weights)
    other = sample_rows(labels, weights, 300, 6)
    assert not np.array_equal(one.rows, other.rows)


def test_rows_within_the_bound_are_all_kept():
    labels, weights = long_tail()
    sample = sample_rows(labels, weights, len(labels), seed=0)
    assert np.array_equal(sample.rows, np.arange(len(labels)))
    assert sample.weights is weights and sample.lineage["sample.applied"] == "false"


def test_a_sampled_split_keeps_its_holdout_and_says_what_it_took():
    labels, weights = long_tail()
    texts = [f"text {i:05d}" for i in range(len(labels))]
    split = split_counts(HistoryCounts(texts, labels, weights, {"engine": "local"}), 0.2)
    sampled = sample_split(split, 500, seed=3)
    assert sampled.holdout_texts == split.holdout_texts
    assert len(sampled.texts) == len(sampled.keys) == len(sampled.weights) < len(split.texts)
    assert set(sampled.texts) <= set(split.texts)
    assert sampled.weights.sum() == pytest.approx(split.weights.sum(), rel=1e-12)
    assert sampled.lineage["train_rows"] == split.lineage["train_rows"]
    assert sampled.lineage["distinct_train_texts"] == str(len(sampled.texts))
    assert sampled.lineage["sample.distinct_rows_before"] == str(len(split.texts))
