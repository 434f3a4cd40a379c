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
