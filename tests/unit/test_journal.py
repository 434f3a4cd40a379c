"""The journal on its own: order, acknowledgements across reopening, the bound and its drop
count, a torn last record, and a process killed while appending."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.journal import Journal, JournalBusy

ROOT = Path(__file__).resolve().parents[2]


def records(count: int, start: int = 0, size: int = 100) -> list[bytes]:
    return [f"{i:08d}".encode().ljust(size, b".") for i in range(start, start + count)]


def read_all(journal: Journal) -> list[bytes]:
    return journal.read(max_records=10**9, max_bytes=10**12).records


def test_records_come_back_in_order_and_again_until_acknowledged(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(records(3))
    journal.append(records(4, start=3))
    first = journal.read(max_records=5)
    assert first.records == records(5)
    assert journal.read(max_records=5).records == records(5)  # not acknowledged: the same
    journal.acknowledge(first, 2)
    assert journal.pending == 5
    assert read_all(journal) == records(5, start=2)
    journal.close()


def test_reopening_gives_back_what_was_not_acknowledged_and_nothing_else(tmp_path):
    journal = Journal(tmp_path, max_bytes=64 * 1024)  # segments of 4 KiB: several of them
    journal.append(records(300))
    batch = journal.read(max_records=130)
    journal.acknowledge(batch, 130)
    journal.close()

    again = Journal(tmp_path, max_bytes=64 * 1024)
    assert again.pending == 170
    assert read_all(again) == records(170, start=130)
    again.append(records(5, start=300))
    assert read_all(again) == records(175, start=130)
    again.acknowledge(again.read(max_records=175), 175)
    assert again.pending == 0
    again.close()
    assert [p.name for p in tmp_path.glob("*.seg")] == []
    assert Journal(tmp_path, max_bytes=64 * 1024).pending == 0


def test_past_its_bound_the_oldest_records_are_dropped_and_counted(tmp_path, caplog):
    drops: list[int] = []
    bound = 64 * 1024
    journal = Journal(tmp_path, max_bytes=bound, on_drop=drops.append)
    for start in range(0, 2000, 10):
        assert journal.append(records(10, start=start))
    segments = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    assert segments <= bound
    kept = read_all(journal)
    assert journal.dropped == sum(drops) == 2000 - len(kept) > 0
    assert journal.pending == len(kept)
    # The newest are kept, in order, with no gap: what went is the oldest.
    assert kept == records(len(kept), start=2000 - len(kept))
    assert "dropped, over its bound" in caplog.text


def test_acknowledged_records_do_not_count_as_dropped(tmp_path):
    journal = Journal(tmp_path, max_bytes=64 * 1024)
    journal.append(records(30))
    journal.acknowledge(journal.read(max_records=20), 20)
    for start in range(30, 1030, 10):
        journal.append(records(10, start=start))
    assert journal.dropped > 0
    assert journal.dropped + journal.pending == 1010


def test_a_batch_dropped_while_in_flight_is_not_acknowledged_twice(tmp_path):
    journal = Journal(tmp_path, max_bytes=64 * 1024)
    journal.append(records(20))
    in_flight = journal.read(max_records=20)
    for start in range(20, 1020, 10):  # drops the in-flight records' segment
        journal.append(records(10, start=start))
    pending = journal.pending
    journal.acknowledge(in_flight, 20)
    assert journal.pending == pending == len(read_all(journal))
    assert read_all(journal)[-1] == records(1, start=1019)[0]


def test_records_larger_than_the_bound_are_refused_and_counted(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    assert not journal.append([b"x" * (2 << 20)])
    assert journal.dropped == 1 and journal.pending == 0


def test_a_torn_last_record_is_cut_and_the_others_kept(tmp_path, caplog):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(records(10))
    journal.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = segment.stat().st_size
    with segment.open("r+b") as handle:  # the last record half written: length, part of it
        handle.truncate(whole - 40)

    again = Journal(tmp_path, max_bytes=1 << 20)
    assert read_all(again) == records(9)
    assert "a write torn by a crash" in caplog.text
    again.append(records(1, start=9))
    again.close()
    assert read_all(Journal(tmp_path, max_bytes=1 << 20)) == records(10)


def test_a_corrupt_record_ends_its_segment(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append(records(10))
    journal.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[5 * 108 + 20] ^= 0xFF  # a byte inside the sixth record (8-byte frame + 100 bytes)
    segment.write_bytes(bytes(data))
    assert read_all(Journal(tmp_path, max_bytes=1 << 20)) == records(5)


def test_one_journal_per_folder_at_a_time(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    with pytest.raises(JournalBusy):
        Journal(tmp_path, max_bytes=1 << 20)
    journal.close()
    Journal(tmp_path, max_bytes=1 << 20).close()


def test_every_append_fsynced_when_asked_still_reads_back(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20, fsync_every_s=0)
    journal.append(records(3))
    journal.sync()
    assert read_all(journal) == records(3)


APPENDER = """
import sys
from pathlib import Path
from streams.journal import Journal

journal = Journal(Path(sys.argv[1]), max_bytes=1 << 30, fsync_every_s=60)
i = 0
while True:
    journal.append([f"{i:08d}".encode().ljust(100, b".")])
    print(i, flush=True)  # acknowledged to its "client" only once appended
    i += 1
"""


def journal_writer(script: str, folder: Path) -> "subprocess.Popen[bytes]":
    """`script` in a process of its own, on the journal in `folder`, its output piped."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    return child


def test_a_process_killed_while_appending_loses_no_record_it_had_appended(tmp_path):
    """kill -9 at an arbitrary moment: every record whose append had returned is read back,
    in order, and nothing else (a torn last one is cut)."""
    child = journal_writer(APPENDER, tmp_path)
    acknowledged = -1
    deadline = time.monotonic() + 60
    while acknowledged < 20_000 and time.monotonic() < deadline:
        acknowledged = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    acknowledged = max([acknowledged, *(int(line) for line in child.stdout.read().split())])
    assert acknowledged >= 20_000

    kept = read_all(Journal(tmp_path, max_bytes=1 << 30))
    assert kept[: acknowledged + 1] == records(acknowledged + 1)
    assert len(kept) - (acknowledged + 1) in (0, 1)  # appended, killed before it said so


ACKNOWLEDGER = """
import sys, time
from pathlib import Path
from streams.journal import Journal
journal = Journal(Path(sys.argv[1]), max_bytes=1 << 20, fsync_every_s=1.0)
journal.append([f"{i:08d}".encode().ljust(100, b".") for i in range(100)])
journal.acknowledge(journal.read(max_records=60), 60)
journal.sync()
journal.acknowledge(journal.read(max_records=30), 30)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_killed_between_syncs_delivers_again_only_what_it_acknowledged_since(tmp_path):
    """The position acknowledged is written at each sync, not at each acknowledgement: a kill -9
    gives back what was acknowledged after the last sync (at least once), nothing before it,
    and loses nothing."""
    child = journal_writer(ACKNOWLEDGER, tmp_path)
    assert child.stdout.readline().strip() == b"ready"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert read_all(Journal(tmp_path, max_bytes=1 << 20)) == records(40, start=60)
