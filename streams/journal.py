"""A bounded, file-backed, append-only journal: records a process has promised to deliver and
has not delivered yet, kept across its crashes.

Records are appended to segment files in the journal's folder (`<sequence>.seg`), each framed
as its length, its CRC-32 and its bytes. A reader takes them in order from the oldest not yet
acknowledged; acknowledging deletes the segments wholly behind, and the position reached is
written to a small file (`acked`) at each `sync` (at each acknowledgement with
`fsync_every_s=0`), so that a restart delivers again at most what was acknowledged since the
last sync.

Durability: `append` returns once the records are in the file (the operating system's page
cache), so a crash of the process (kill -9, out of memory) loses none of them; a crash of the
machine loses what was not fsynced yet. `sync` fsyncs; with `fsync_every_s=0` every append
fsyncs before it returns (the caller then waits for the disk). A record torn by a crash in the
middle of its write fails its length or checksum when the journal is opened again, and is cut
off with everything after it in its segment.

Bound: an append that would take the journal past `max_bytes` first deletes the oldest segments
(a segment holds at most a sixteenth of the bound), and the records in them not yet acknowledged
are counted in `dropped` and reported to `on_drop`.

One process owns a journal at a time: it holds an exclusive lock on the folder's `lock` file
while the journal is open (released by the system when the process dies).
"""

import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # the record's length, its CRC-32
_SUFFIX = ".seg"
_ACKED = "acked"
_MIN_SEGMENT_BYTES = 4096


class JournalBusy(RuntimeError):
    """Another process (or another open journal of this one) holds the journal's folder."""


@dataclass
class _Segment:
    sequence: int
    path: Path
    size: int = 0
    count: int = 0


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: `offset` bytes into segment `sequence`, after `index` records of
    that segment."""

    sequence: int
    offset: int
    index: int


@dataclass(frozen=True)
class Batch:
    """Records read in order, and the position after each of them."""

    records: list[bytes]
    ends: list[Position]


def _scan(data: bytes) -> tuple[int, int]:
    """The length of the valid prefix of a segment's bytes, and the records in it."""
    offset = count = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[offset + _FRAME.size : end]) != crc:
            break
        offset, count = end, count + 1
    return offset, count


class Journal:
    """A journal in `directory`, opened (and recovered) by the constructor.

    Parameters
    ----------
    directory
        The journal's folder, created if missing; the journal owns it.
    max_bytes
        The bound on the segments' total size.
    fsync_every_s
        0 makes every append fsync before it returns; otherwise the owner calls `sync` this
        often (`streams.outbox.Outbox` does).
    on_drop
        Called with the count of records dropped past the bound, by the append that dropped them.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        fsync_every_s: float = 1.0,
        on_drop: Callable[[int], None] = lambda _count: None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(max_bytes // 16, _MIN_SEGMENT_BYTES)
        self.fsync_every_s = fsync_every_s
        self.on_drop = on_drop
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(directory / "lock", "a+b")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise JournalBusy(f"the journal in {directory} is in use") from None
        self._mutex = threading.Lock()
        self._closed = False
        self._segments: deque[_Segment] = deque(self._recover())
        self._acked = self._read_acked()
        self._pending = sum(s.count for s in self._segments) - self._acked.index
        self._bytes = sum(s.size for s in self._segments)
        self._to_sync: list[int] = []
        self._folder_changed = False
        self._acked_changed = False
        self._fd = self._start_segment()

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self) -> list[_Segment]:
        """The segments left by the last owner, each cut after its last whole record."""
        segments = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            data = path.read_bytes()
            size, count = _scan(data)
            if size < len(data):
                log.warning(
                    "journal %s: cut %d bytes after its last whole record (a write torn by a "
                    "crash)",
                    path,
                    len(data) - size,
                )
                os.truncate(path, size)
            if count:
                segments.append(_Segment(int(path.stem), path, size, count))
            else:
                path.unlink()
        return segments

    def _read_acked(self) -> Position:
        """Where the last owner's acknowledgements reached; segments wholly behind are gone."""
        start = Position(self._segments[0].sequence, 0, 0) if self._segments else Position(0, 0, 0)
        try:
            acked = Position(**json.loads((self.directory / _ACKED).read_text()))
        except (OSError, ValueError, TypeError):
            return start
        while self._segments and self._segments[0].sequence < acked.sequence:
            self._segments.popleft().path.unlink()
        first = self._segments[0] if self._segments else None
        if first is None or first.sequence != acked.sequence or acked.offset > first.size:
            return Position(first.sequence, 0, 0) if first else start
        return acked

    # -- writing ----------------------------------------------------------------------------

    def _start_segment(self) -> int:
        sequence = self._segments[-1].sequence + 1 if self._segments else 1
        path = self.directory / f"{sequence:012d}{_SUFFIX}"
        self._segments.append(_Segment(sequence, path))
        self._folder_changed = True
        if len(self._segments) == 1:
            self._acked = Position(sequence, 0, 0)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _roll(self) -> None:
        self._to_sync.append(self._fd)
        self._fd = self._start_segment()

    def _make_room(self, size: int) -> int:
        """Roll and drop the oldest segments so that `size` more bytes fit; the records
        dropped."""
        active = self._segments[-1]
        if active.size and active.size + size > self.segment_bytes:
            self._roll()
        dropped = 0
        while self._bytes + size > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments.popleft()
            done = self._acked.index if self._acked.sequence == oldest.sequence else 0
            dropped += oldest.count - done
            self._bytes -= oldest.size
            oldest.path.unlink(missing_ok=True)
            self._acked = Position(self._segments[0].sequence, 0, 0)
        self._pending -= dropped
        return dropped

    def append(self, records: Sequence[bytes]) -> bool:
        """Write `records` at the end, in order; True once they are in the file.

        Records that cannot be written (a full disk, or more bytes than the whole bound) are
        dropped and counted as the bound's are, and False is returned.
        """
        frames = b"".join(_FRAME.pack(len(r), zlib.crc32(r)) + r for r in records)
        with self._mutex:
            if self._closed:
                raise ValueError("the journal is closed")
            written = False
            if len(frames) > self.max_bytes:
                dropped = len(records)
            else:
                dropped = self._make_room(len(frames))
                written = self._write(frames)
                if written:
                    active = self._segments[-1]
                    active.size += len(frames)
                    active.count += len(records)
                    self._bytes += len(frames)
                    self._pending += len(records)
                    if self.fsync_every_s == 0:
                        os.fsync(self._fd)
                else:
                    dropped += len(records)
            self.dropped += dropped
        if dropped:
            log.warning(
                "journal %s: %d record(s) dropped, over its bound of %d bytes or not writable",
                self.directory,
                dropped,
                self.max_bytes,
            )
            self.on_drop(dropped)
        return written

    def _write(self, frames: bytes) -> bool:
        """Append `frames` whole, or leave the segment as it was and return False."""
        active = self._segments[-1]
        view = memoryview(frames)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.error("journal %s: writing failed: %s", self.directory, exc)
            try:
                os.ftruncate(self._fd, active.size)
            except OSError:  # the segment may now end in a torn record: start another
                self._roll()
            return False
        return True

    def sync(self) -> None:
        """fsync what was appended so far, and the folder when segments came or went; write the
        position acknowledged."""
        with self._mutex:
            if self._closed:
                return
            descriptors = [os.dup(self._fd), *self._to_sync]
            self._to_sync = []
            folder, self._folder_changed = self._folder_changed, False
            if self._acked_changed:
                self._write_acked()
        for fd in descriptors:
            os.fsync(fd)
            os.close(fd)
        if folder:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended and neither acknowledged nor dropped."""
        return self._pending

    def read(self, max_records: int, max_bytes: int = 4 * 1024 * 1024) -> Batch:
        """Up to `max_records` records (and about `max_bytes`) from the oldest not acknowledged,
        in order. Reading again without acknowledging gives the same records."""
        with self._mutex:
            acked = self._acked
            plan = [(s.sequence, s.path, s.size) for s in self._segments]
        records: list[bytes] = []
        ends: list[Position] = []
        taken = 0
        for sequence, path, size in plan:
            offset, index = (acked.offset, acked.index) if sequence == acked.sequence else (0, 0)
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:  # dropped past the bound meanwhile
                break
            with handle:
                handle.seek(offset)
                while offset < size and len(records) < max_records and taken < max_bytes:
                    length, _crc = _FRAME.unpack(handle.read(_FRAME.size))
                    records.append(handle.read(length))
                    offset += _FRAME.size + length
                    index += 1
                    taken += length
                    ends.append(Position(sequence, offset, index))
            if len(records) >= max_records or taken >= max_bytes:
                break
        return Batch(records, ends)

    def acknowledge(self, batch: Batch, count: int) -> None:
        """The first `count` records of `batch` are delivered: forget them."""
        if count == 0:
            return
        reached = batch.ends[count - 1]
        with self._mutex:
            if self._closed or reached <= self._acked:  # dropped past the bound meanwhile
                return
            done = 0
            while self._segments[0].sequence < reached.sequence:
                oldest = self._segments.popleft()
                done += oldest.count - (
                    self._acked.index if self._acked.sequence == oldest.sequence else 0
                )
                self._bytes -= oldest.size
                oldest.path.unlink(missing_ok=True)
                self._folder_changed = True
                self._acked = Position(self._segments[0].sequence, 0, 0)
            done += reached.index - self._acked.index
            self._acked = reached
            first = self._segments[0]
            if reached.offset == first.size and len(self._segments) > 1:
                self._segments.popleft()
                self._bytes -= first.size
                first.path.unlink(missing_ok=True)
                self._folder_changed = True
                self._acked = Position(self._segments[0].sequence, 0, 0)
            self._pending -= done
            self._acked_changed = True
            if self.fsync_every_s == 0:
                self._write_acked()

    def _write_acked(self) -> None:
        """Record the position acknowledged (under the mutex)."""
        temporary = self.directory / f"{_ACKED}.tmp"
        temporary.write_text(json.dumps(vars(self._acked)))
        temporary.replace(self.directory / _ACKED)
        self._acked_changed = False

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """fsync, remove the files when nothing is left to deliver, and let another process
        open the journal."""
        self.sync()
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            os.close(self._fd)
            if self._pending == 0:
                for segment in self._segments:
                    segment.path.unlink(missing_ok=True)
                (self.directory / _ACKED).unlink(missing_ok=True)
        self._lock_file.close()
