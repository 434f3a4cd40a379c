"""The archiver: the topic, copied exactly once into the master dataset.

Events are buffered per partition and flushed as Parquet files named by their offset range.
Each file is complete or absent: in a local folder it is written to a temporary name, fsynced
and renamed; on S3 it is one PUT. The position to resume from is read back from the file names,
so after kill -9 at any moment a restart neither loses nor repeats an event. Commits to the
consumer group follow the files and only report lag.

The archiver is a consumer group of one (`streams.consumer.EventReader`): each partition it is
given starts where its files end, and one it loses is flushed first.

A flush that fails (the store unreachable, a full disk) is retried with exponential backoff,
its events kept and nothing committed, until it succeeds or the archiver is stopped.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from threading import Event

import pyarrow as pa
import pyarrow.parquet as pq

from common.settings import ArchiveSettings, StorageSettings
from common.storage import LocalStorage, Location, Storage
from streams.consumer import Consumed, EventReader
from streams.master_dataset import SCHEMA, FlushFile, open_root, scan

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


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_flush(
    root: Location | Storage,
    partition: int,
    first: int,
    last: int,
    events: list[Consumed],
    settings: StorageSettings | None = None,
) -> tuple[int, int]:
    """Durably write one partition's offsets first..last, one file per event date; returns the
    files and the bytes written.

    Locally, all files are fsynced under temporary names before any is renamed, and the folders
    are fsynced after; on S3 each file is one PUT. Either way a flush is complete before its
    range counts as archived (a partial one is removed by `recover`).
    """
    by_date: dict[str, list[Consumed]] = defaultdict(list)
    for c in events:
        by_date[c.event.ts.strftime("%Y-%m-%d")].append(c)
    if not by_date:  # a range with only dead-lettered messages still needs a marker file
        by_date["1970-01-01"] = []
    objects = {
        f"date={date}/{FlushFile.name(partition, first, last, part, len(by_date))}": _parquet(
            _table(rows)
        )
        for part, (date, rows) in enumerate(sorted(by_date.items()), start=1)
    }
    open_root(root, settings).write_all(objects)
    return len(objects), sum(map(len, objects.values()))


def recover(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    partitions: Collection[int] | None = None,
) -> dict[int, int]:
    """Remove what a crash left half-done and return where each partition resumes; with
    `partitions`, of those partitions only (another archiver may be writing the others)."""
    storage = open_root(root, settings)
    if isinstance(storage, LocalStorage):  # temporary files exist in local folders only
        storage.root.mkdir(parents=True, exist_ok=True)
        patterns = (
            ["date=*/.*.tmp"]
            if partitions is None
            else [f"date=*/.p{p:03d}_*.tmp" for p in partitions]
        )
        for pattern in patterns:
            for leftover in storage.root.glob(pattern):
                leftover.unlink()
    positions, incomplete = scan(storage)
    for f in incomplete:
        if partitions is None or f.partition in partitions:
            log.warning("removing incomplete flush file %s", f.key)
            storage.delete(f.key)
    if partitions is None:
        return positions
    return {p: o for p, o in positions.items() if p in partitions}


class Archiver:
    """Buffers validated events per partition and flushes them as complete offset ranges.

    `root` is the master dataset's folder or URL; `storage` the object store's settings for an
    `s3://` root (None: read from the environment). A failed flush is retried after
    `retry_backoff_s`, doubling up to `max_retry_backoff_s`. `heartbeat` is called once a turn
    of the loop, for the job's liveness check; a flush that keeps failing holds the loop, so it
    stops the heartbeat too.

    The archiver installs the reader's callbacks: a partition it is given starts after its
    last complete flush (`recover`, for that partition; a store that cannot be read leaves it
    waiting, retried by the reader); a partition it loses is flushed once, without retries
    (the group waits meanwhile), and what a failed flush held is read again by the next owner.

    The counters (`archived`, `files_written`, `bytes_written`, `failed_flushes`) and, as of the
    last flush, `events_per_s` and `lag` (partition -> events on the topic not yet read, None
    while the broker is away) are what the job's `/metrics` shows.
    """

    retry_backoff_s = 0.5
    max_retry_backoff_s = 5.0

    def __init__(
        self,
        reader: EventReader,
        root: Location | Storage,
        settings: ArchiveSettings,
        storage: StorageSettings | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.reader = reader
        self.root = open_root(root, storage)
        self.settings = settings
        self.heartbeat = heartbeat
        self.failed_flushes = 0
        self.archived = 0
        self.files_written = 0
        self.bytes_written = 0
        self.events_per_s = 0.0
        self.lag: dict[int, int] | None = None
        self._flushed: dict[int, int] = {}
        self._read_from: dict[int, int] = {}
        self._passed_before = 0
        self._buffers: dict[int, list[Consumed]] = defaultdict(list)
        self._last_flush = time.monotonic()
        reader.on_assigned = self._on_assigned
        reader.on_revoked = self._on_revoked

    def _on_assigned(self, beginnings: Mapping[int, int]) -> dict[int, int]:
        try:
            archived = recover(self.root, partitions=list(beginnings))
        except OSError as exc:  # StorageError included: the store is down
            log.warning(
                "cannot read where partitions %s are archived to: %s", list(beginnings), exc
            )
            return {}
        starts = {p: archived.get(p, first) for p, first in beginnings.items()}
        self._flushed.update(starts)
        self._read_from.update(starts)
        log.info("assigned partitions %s, archiving from %s", sorted(starts), starts)
        return starts

    def _on_revoked(self, partitions: list[int]) -> None:
        self.reader.flush_dead_letters()
        for partition in partitions:
            first = self._flushed.get(partition, 0)
            position = self.reader.positions[partition]
            events = self._buffers.pop(partition, [])
            if position > first:
                try:
                    files, written = write_flush(self.root, partition, first, position - 1, events)
                except OSError as exc:
                    self.failed_flushes += 1
                    log.warning(
                        "partition %d revoked with offsets %d-%d not archived; its next owner "
                        "reads them again: %s",
                        partition, first, position - 1, exc,
                    )  # fmt: skip
                else:
                    self.files_written += files
                    self.bytes_written += written
                    self.archived += len(events)
            self._passed_before += position - self._read_from.pop(partition, 0)
            self._flushed.pop(partition, None)
        log.info("revoked partitions %s", partitions)

    def _passed(self) -> int:
        """Messages read since the start, valid or dead-lettered."""
        passed = self._passed_before
        for partition, position in self.reader.positions.items():
            passed += position - self._read_from.get(partition, 0)
        return passed

    def _pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush(self, stop: Event | None = None) -> bool:
        """Write every partition whose position moved since its last flush, then commit.

        A write that fails is retried with backoff until it succeeds or `stop` is set; only the
        partitions written are committed. False if `stop` ended the retries first.
        """
        self.reader.flush_dead_letters()
        archived_before = self.archived
        done = True
        for partition, position in self.reader.positions.items():
            first = self._flushed.get(partition, 0)
            if position <= first:
                continue
            events = self._buffers.get(partition, [])
            if not self._write_retrying(partition, first, position - 1, events, stop):
                done = False
                break
            self._buffers.pop(partition, None)
            self.archived += len(events)
            self._flushed[partition] = position
        self.reader.commit(self._flushed)
        now = time.monotonic()
        self.events_per_s = (self.archived - archived_before) / max(now - self._last_flush, 1e-9)
        self._last_flush = now
        self.lag = self.reader.partition_lag()
        return done

    def _write_retrying(
        self, partition: int, first: int, last: int, events: list[Consumed], stop: Event | None
    ) -> bool:
        delay = self.retry_backoff_s
        while True:
            try:
                files, written = write_flush(self.root, partition, first, last, events)
                self.files_written += files
                self.bytes_written += written
                return True
            except OSError as exc:  # StorageError included: the store is down or refused
                self.failed_flushes += 1
                log.warning(
                    "flush of partition %d offsets %d-%d to %s failed, retrying in %.1fs: %s",
                    partition, first, last, self.root.url, delay, exc,
                )  # fmt: skip
            if stop is not None and stop.wait(delay):
                log.error(
                    "stopped with offsets %d-%d of partition %d not archived; "
                    "they are read again at the next start",
                    first, last, partition,
                )  # fmt: skip
                return False
            if stop is None:
                time.sleep(delay)
            delay = min(self.max_retry_backoff_s, delay * 2)

    def run(
        self, stop: Event, idle_exit_s: float | None = None, max_messages: int | None = None
    ) -> None:
        """Archive until `stop` is set, the stream has been idle for `idle_exit_s` (waiting for
        partitions is not idleness), or the reader has passed `max_messages` messages; always
        ends with a flush."""
        idle_since = time.monotonic()
        while not stop.is_set():
            self.heartbeat()
            consumed = self.reader.poll(timeout_ms=200)
            for c in consumed:
                self._buffers[c.partition].append(c)
            if consumed:
                idle_since = time.monotonic()
            elif idle_exit_s is not None:
                if not self.reader.settled:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= idle_exit_s:
                    break
            due = time.monotonic() - self._last_flush >= self.settings.flush_every_s
            if self._pending() >= self.settings.flush_every_events or due:
                self.flush(stop)
            if max_messages is not None and self._passed() >= max_messages:
                break
        self.flush(stop)
