"""The retrain benchmark's own code at a tiny size: the bare fit in a fresh process with the
sampled fit's gap, and the summary's goal figures (the retrains themselves need MLflow and run
in the benchmark)."""

import pytest

from bench.retrain import HOLDOUT_FRACTION, bare_fit, in_scope, summarise, write_master
from pipelines.batch.history import read_history_split
from streams.master_dataset import archived_positions


def test_the_bare_fit_and_the_sampled_fit_at_a_tiny_size(tmp_path):
    examples = in_scope(("train", "val"))
    chosen = sorted({e.intent for e in examples})[:10]
    examples = [e for e in examples if e.intent in chosen]
    master = tmp_path / "master"
    write_master(master, examples, 3_000, tail=0.2, seed=0)
    split = read_history_split(master, archived_positions(master), HOLDOUT_FRACTION)

    figures = bare_fit(tmp_path, split, sample_share=0.5)

    assert figures["seconds"] > 0 and figures["cpu_seconds"] > 0
    assert 0 < figures["peak_rss_gib"] < 4
    sampled = figures["sampled_fit"]
    assert sampled["full_rows"] == len(split.texts)
    assert 0 < sampled["sampled_rows"] < len(split.texts)
    assert sampled["full_first_seen_accuracy"] > 0.8
    gap = sampled["full_first_seen_accuracy"] - sampled["sampled_first_seen_accuracy"]
    assert sampled["first_seen_gap_points"] == round(100 * gap, 2)
    assert list(tmp_path.glob("*.pkl")) == []  # the rows handed to the child are removed


def _run(seconds: float, bare: float, **extra) -> dict:
    figures = {
        "retrain_seconds": seconds,
        "bare_fit_seconds": bare,
        "ratio_vs_bare": seconds / bare,
        "cpu_ratio_vs_bare": 1.0,
        "peak_rss_gib": 3.5,
        "workers_peak_rss_gib": 0.5,
        "distinct_fraction": 0.3,
        "synthetic_share": 0.2,
        "distinct_train_texts": 1,
        "vocabulary_size": 1,
        "first_seen_holdout_accuracy": 0.9,
    }
    return figures | extra


def test_the_summary_holds_every_goal_figure():
    sampled = {"first_seen_gap_points": 0.3, "sampled_rows": 10, "full_rows": 100}
    smoke = {"first_seen_gap_points": 5.0, "sampled_rows": 1, "full_rows": 10}
    runs = {
        "0.1m_30pct": [_run(10.0, 9.0, sampled_fit=smoke)],  # a smaller history's sample
        "1m_30pct": [_run(120.0, 100.0), _run(140.0, 110.0)],
        "2m_30pct": [_run(260.0, 210.0, sampled_fit=sampled)],
    }
    figures = summarise(0.945, runs)

    assert figures["seconds_1m_30pct"] == 130.0  # medians of the runs
    assert figures["ratio_2m_to_1m_30pct"] == 2.0
    assert figures["fit_ratio_600k_to_300k_distinct"] == pytest.approx(210 / 105, abs=1e-3)
    assert figures["sampled_fit_first_seen_gap_points"] == 0.3
    assert figures["sampled_fit"] == sampled
    assert figures["goal_met"] == {
        "clinc150_test_accuracy >= 0.94": True,
        "seconds_1m_30pct <= 300": True,
        "ratio_vs_bare_1m_30pct <= 1.3": True,
        "ratio_2m_to_1m_30pct <= 2.2": True,
        "fit_ratio_600k_to_300k_distinct <= 2.2": True,
        "peak_rss_gib_1m_30pct (with 2 workers) <= 4": False,  # 3.5 + 2 x 0.5: workers count
        "sampled_fit_first_seen_gap_points <= 0.5": True,
    }
