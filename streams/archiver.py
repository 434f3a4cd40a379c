"""The archiver: both topics, the queries and their labels, copied exactly once into the
master dataset.

Events are buffered per topic and partition and flushed as Parquet files named by their offset
range (`streams.master_dataset.write_flush`: queries under the root, labels under `feedback/`).
Each file is complete or absent: in a local folder it is written to a temporary name, fsynced
and renamed; on S3 it is one PUT. The position to resume from is read back from the file names,
per topic and partition, so after kill -9 at any moment a restart neither loses nor repeats an
event. Commits to the consumer group follow the files and only report lag.

The archiver is a consumer group of one (`streams.consumer.EventReader`, reading the feedback
topic too when it exists): each partition it is given starts, on each topic, where its files
end, and one it loses is flushed first.

A flush that fails (the store unreachable, a full disk) is retried with exponential backoff,
its events kept and nothing committed, until it succeeds or the archiver is stopped.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from threading import Event

from common.settings import ArchiveSettings, StorageSettings
from common.storage import LocalStorage, Location, Storage
from streams.consumer import Consumed, EventReader, Start
from streams.master_dataset import (
    FEEDBACK,
    QUERIES,
    ArchivedTopic,
    open_root,
    scan,
    write_flush,
)
from streams.schema import FeedbackEvent

log = logging.getLogger(__name__)

Lane = tuple[ArchivedTopic, int]
"""One partition of one topic: what a flush covers."""


def recover(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    partitions: Collection[int] | None = None,
    topic: ArchivedTopic = QUERIES,
) -> dict[int, int]:
    """Remove what a crash left half-done of `topic` and return where each of its partitions
    resumes; with `partitions`, of those partitions only (another archiver may be writing the
    others)."""
    storage = open_root(root, settings)
    if isinstance(storage, LocalStorage):  # temporary files exist in local folders only
        storage.root.mkdir(parents=True, exist_ok=True)
        patterns = (
            [f"{topic.prefix}date=*/.*.tmp"]
            if partitions is None
            else [f"{topic.prefix}date=*/.p{p:03d}_*.tmp" for p in partitions]
        )
        for pattern in patterns:
            for leftover in storage.root.glob(pattern):
                leftover.unlink()
    positions, incomplete = scan(storage, topic=topic)
    for f in incomplete:
        if partitions is None or f.partition in partitions:
            log.warning("removing incomplete flush file %s", f.key)
            storage.delete(f.key)
    if partitions is None:
        return positions
    return {p: o for p, o in positions.items() if p in partitions}


class Archiver:
    """Buffers validated events per topic and partition and flushes them as complete offset
    ranges.

    `root` is the master dataset's folder or URL; `storage` the object store's settings for an
    `s3://` root (None: read from the environment). A failed flush is retried after
    `retry_backoff_s`, doubling up to `max_retry_backoff_s`. `heartbeat` is called once a turn
    of the loop, for the job's liveness check; a flush that keeps failing holds the loop, so it
    stops the heartbeat too.

    The archiver installs the reader's callbacks: a partition it is given starts, on each
    topic, after its last complete flush (`recover`, for that partition; a store that cannot
    be read leaves it waiting, retried by the reader); a partition it loses is flushed once,
    without retries (the group waits meanwhile), and what a failed flush held is read again by
    the next owner.

    The counters (`archived`, labels included, `files_written`, `bytes_written`,
    `failed_flushes`) and, as of the last flush, `events_per_s` and `lag` (partition -> queries
    on the topic not yet read, None while the broker is away) are what the job's `/metrics`
    shows.
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
        self._flushed: dict[Lane, int] = {}
        self._read_from: dict[Lane, int] = {}
        self._passed_before = 0
        self._buffers: dict[Lane, list[Consumed]] = defaultdict(list)
        self._last_flush = time.monotonic()
        reader.on_assigned = self._on_assigned
        reader.on_revoked = self._on_revoked

    def _positions(self) -> dict[Lane, int]:
        """The reader's next offset in each started partition of each topic."""
        found = {(QUERIES, p): o for p, o in self.reader.positions.items()}
        return found | {(FEEDBACK, p): o for p, o in self.reader.feedback_positions.items()}

    def _on_assigned(self, beginnings: Mapping[int, Start]) -> dict[int, Start]:
        partitions = list(beginnings)
        try:
            archived = recover(self.root, partitions=partitions)
            labels = recover(self.root, partitions=partitions, topic=FEEDBACK)
        except OSError as exc:  # StorageError included: the store is down
            log.warning("cannot read where partitions %s are archived to: %s", partitions, exc)
            return {}
        starts = {
            p: Start(
                archived.get(p, first.queries),
                labels.get(p, first.feedback) if first.feedback is not None else None,
            )
            for p, first in beginnings.items()
        }
        for p, start in starts.items():
            lanes = {(QUERIES, p): start.queries}
            if start.feedback is not None:
                lanes[(FEEDBACK, p)] = start.feedback
            self._flushed.update(lanes)
            self._read_from.update(lanes)
        log.info("assigned partitions %s, archiving from %s", sorted(starts), starts)
        return starts

    def _on_revoked(self, partitions: list[int]) -> None:
        self.reader.flush_dead_letters()
        for lane, position in self._positions().items():
            topic, partition = lane
            if partition not in partitions:
                continue
            first = self._flushed.get(lane, 0)
            events = self._buffers.pop(lane, [])
            if position > first:
                try:
                    files, written = write_flush(
                        self.root, partition, first, position - 1, events, topic=topic
                    )
                except OSError as exc:
                    self.failed_flushes += 1
                    log.warning(
                        "partition %d of %s revoked with offsets %d-%d not archived; its next "
                        "owner reads them again: %s",
                        partition, topic.name, first, position - 1, exc,
                    )  # fmt: skip
                else:
                    self.files_written += files
                    self.bytes_written += written
                    self.archived += len(events)
            self._passed_before += position - self._read_from.pop(lane, 0)
            self._flushed.pop(lane, None)
        log.info("revoked partitions %s", partitions)

    def _passed(self) -> int:
        """Messages read since the start, valid or dead-lettered, of both topics."""
        passed = self._passed_before
        for lane, position in self._positions().items():
            passed += position - self._read_from.get(lane, 0)
        return passed

    def _pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush(self, stop: Event | None = None) -> bool:
        """Write every partition of each topic whose position moved since its last flush, then
        commit.

        A write that fails is retried with backoff until it succeeds or `stop` is set; only the
        partitions written are committed. False if `stop` ended the retries first.
        """
        self.reader.flush_dead_letters()
        archived_before = self.archived
        done = True
        for lane, position in self._positions().items():
            first = self._flushed.get(lane, 0)
            if position <= first:
                continue
            events = self._buffers.get(lane, [])
            if not self._write_retrying(lane, first, position - 1, events, stop):
                done = False
                break
            self._buffers.pop(lane, None)
            self.archived += len(events)
            self._flushed[lane] = position
        self.reader.commit(self._flushed_of(QUERIES), self._flushed_of(FEEDBACK))
        now = time.monotonic()
        self.events_per_s = (self.archived - archived_before) / max(now - self._last_flush, 1e-9)
        self._last_flush = now
        self.lag = self.reader.partition_lag()
        return done

    def keep(self, consumed: list[Consumed]) -> None:
        """Buffer a poll's events for the next flush of their topic and partition."""
        for c in consumed:
            topic = FEEDBACK if isinstance(c.event, FeedbackEvent) else QUERIES
            self._buffers[(topic, c.partition)].append(c)

    def _flushed_of(self, topic: ArchivedTopic) -> dict[int, int]:
        return {p: o for (t, p), o in self._flushed.items() if t is topic}

    def _write_retrying(
        self, lane: Lane, first: int, last: int, events: list[Consumed], stop: Event | None
    ) -> bool:
        topic, partition = lane
        delay = self.retry_backoff_s
        while True:
            try:
                files, written = write_flush(self.root, partition, first, last, events, topic=topic)
                self.files_written += files
                self.bytes_written += written
                return True
            except OSError as exc:  # StorageError included: the store is down or refused
                self.failed_flushes += 1
                log.warning(
                    "flush of partition %d of %s, offsets %d-%d, to %s failed, retrying in "
                    "%.1fs: %s",
                    partition, topic.name, first, last, self.root.url, delay, exc,
                )  # fmt: skip
            if stop is not None and stop.wait(delay):
                log.error(
                    "stopped with offsets %d-%d of partition %d of %s not archived; "
                    "they are read again at the next start",
                    first, last, partition, topic.name,
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
            self.keep(consumed)
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
