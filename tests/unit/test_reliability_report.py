"""The reliability report: outcomes stick to figures, and a rerun replaces only its own rows."""

import json

from tests.reliability_report import ReliabilityReport


def test_a_failed_test_marks_its_figures_and_a_rerun_replaces_only_its_rows(tmp_path):
    first = ReliabilityReport(tmp_path)
    first.record("t::a", "archiver", "events lost", 0, "= 0")
    first.record("t::b", "broker", "old name", 1.5)
    first.settle("t::a", "passed")
    first.settle("t::b", "failed")
    first.write()
    report = (tmp_path / "reliability.md").read_text()
    assert "1 from tests that did not pass" in report
    assert "| events lost | 0 | = 0 | passed |" in report

    rerun = ReliabilityReport(tmp_path)
    rerun.record("t::b", "broker", "new name", 2)
    rerun.settle("t::b", "passed")
    rerun.write()
    rows = json.loads((tmp_path / "reliability.json").read_text())["figures"]
    assert [(r["figure"], r["outcome"]) for r in rows] == [
        ("events lost", "passed"),
        ("new name", "passed"),
    ]
    assert "all from passing tests" in (tmp_path / "reliability.md").read_text()


def test_the_header_counts_figures_per_commit_only_when_they_span_several(tmp_path):
    report = ReliabilityReport(tmp_path)
    report.commit = "aaaaaaa"
    report.record("t::a", "archiver", "events lost", 0)
    report.record("t::a", "archiver", "events duplicated", 0)
    report.settle("t::a", "passed")
    report.commit = "bbbbbbb"
    report.record("t::b", "broker", "sends failed", 0)
    report.settle("t::b", "passed")
    report.write()
    mixed = (tmp_path / "reliability.md").read_text()
    assert "commits aaaaaaa (2 figures), bbbbbbb (1 figure)" in mixed

    rerun = ReliabilityReport(tmp_path)
    rerun.commit = "bbbbbbb"
    rerun.record("t::a", "archiver", "events lost", 0)
    rerun.settle("t::a", "passed")
    rerun.write()
    assert "measured at commit bbbbbbb." in (tmp_path / "reliability.md").read_text()
