"""Result files are stamped with the commit and settings that produced them."""

import subprocess

from pipelines.provenance import PROJECT_ROOT, provenance


def test_the_stamp_names_the_checked_out_commit_and_the_settings():
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.strip()
    stamp = provenance({"events": 40_000})
    assert stamp["commit"].split("+")[0] == (head or "unknown")
    assert stamp["settings"] == {"events": 40_000}
    assert stamp["date"].endswith("Z") and stamp["machine"]["cpus"] >= 1
    # Only code makes a stamp dirty, and then the files are named.
    assert ("+dirty" in stamp["commit"]) == bool(stamp.get("uncommitted_files"))
    assert not any(path.startswith("bench/results/") for path in stamp.get("uncommitted_files", []))
