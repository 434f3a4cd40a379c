"""The archiver: the topic, copied exactly once into the master dataset.

Events are buffered per partition and flushed as Parquet files named by their offset range.
Each file is written to a temporary name, fsynced and renamed; the position to resume from is
read back from the file names, so after kill -9 at any moment a restart neither loses nor
repeats an event. Commits to the consumer group follow the files and only report lag.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from threading import Event
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from common.durable import publish, stage
from common.settings import ArchiveSettings
from streams.consumer import Consumed, EventReader
from streams.master_dataset import SCHEMA, FlushFile, scan

log = logging.getLogger(__name__)


def _table(events: list[Consumed]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for c in events:
        e = c.event
        columns["query_id"].append(e.query_id)
        columns["ts"].append(e.ts)
        columns["text"].append(e.text)
        columns["intent"].append(e.intent)
        columns["user_id"].append(e.user_id)
        columns["locale"].append(e.locale)
        columns["partition"].append(c.partition)
        columns["offset"].append(c.offset)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _parquet_writer(table: pa.Table) -> Callable[[BinaryIO], None]:
    return lambda handle: pq.write_table(table, handle, compression="zstd")


def write_flush(root: Path, partition: int, first: int, last: int, events: list[Consumed]) -> int:
    """Durably write one partition's offsets first..last, one file per event date.

    All files are fsynced under temporary names before any is renamed, and the folders are
    fsynced after, so a flush is complete on disk before its range counts as archived.
    """
    by_date: dict[str, list[Consumed]] = defaultdict(list)
    for c in events:
        by_date[c.event.ts.strftime("%Y-%m-%d")].append(c)
    if not by_date:  # a range with only dead-lettered messages still needs a marker file
        by_date["1970-01-01"] = []
    staged: list[tuple[Path, Path]] = []
    for part, (date, rows) in enumerate(sorted(by_date.items()), start=1):
        target = root / f"date={date}" / FlushFile.name(partition, first, last, part, len(by_date))
        staged.append((stage(target, _parquet_writer(_table(rows))), target))
    publish(staged, also_fsync=[root])
    return len(events)


def recover(root: Path) -> dict[int, int]:
    """Remove what a crash left half-done and return where each partition resumes."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob("date=*/.*.tmp"):
        leftover.unlink()
    positions, incomplete = scan(root)
    for f in incomplete:
        log.warning("removing incomplete flush file %s", f.path.name)
        f.path.unlink()
    return positions


class Archiver:
    """Buffers validated events per partition and flushes them as complete offset ranges."""

    def __init__(self, reader: EventReader, root: Path, settings: ArchiveSettings) -> None:
        self.reader = reader
        self.root = root
        self.settings = settings
        self.archived = 0
        self._flushed = dict(reader.positions)
        self._buffers: dict[int, list[Consumed]] = defaultdict(list)
        self._last_flush = time.monotonic()

    def _pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush(self) -> None:
        """Write every partition whose position moved since its last flush."""
        self.reader.flush_dead_letters()
        for partition, position in self.reader.positions.items():
            first = self._flushed.get(partition, 0)
            if position <= first:
                continue
            events = self._buffers.pop(partition, [])
            self.archived += write_flush(self.root, partition, first, position - 1, events)
            self._flushed[partition] = position
        self.reader.commit(self._flushed)
        self._last_flush = time.monotonic()

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_messages: int | None = None
    ) -> None:
        """Archive until `stop` is set, the stream has been idle for `idle_exit_s`, or the
        reader has passed `max_messages` messages; always ends with a flush."""
        idle_since = time.monotonic()
        started_at = sum(self.reader.positions.values())
        while not stop.is_set():
            consumed = self.reader.poll(timeout_ms=200)
            for c in consumed:
                self._buffers[c.partition].append(c)
            if consumed:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            due = time.monotonic() - self._last_flush >= self.settings.flush_every_s
            if self._pending() >= self.settings.flush_every_events or due:
                self.flush()
            passed = sum(self.reader.positions.values()) - started_at
            if max_messages is not None and passed >= max_messages:
                break
        self.flush()
