"""The master dataset: the archiver's immutable Parquet copy of both topics, and how to read it.

Layout: queries under `<root>/date=YYYY-MM-DD/`, the feedback topic's labels under
`<root>/feedback/date=YYYY-MM-DD/`, each file named `p<partition>_o<first>-<last>_<k>of<n>.parquet`.
One flush of one partition of a topic covers the offsets first..last and writes one file per
event date (n files). The names alone say what is archived: the next offset of a partition is
one past the highest `last` of its complete flushes, so restarts need no other bookkeeping.

A batch run reads up to a `Cutoff`: the next offset of each partition of both topics.

The root is a local folder or an `s3://bucket/prefix` URL (`common.storage`): every function
takes either, or a `Storage` already opened, and reads Parquet in place through pyarrow.
"""

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from common.settings import StorageSettings
from common.storage import Location, Storage

SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("intent", pa.string()),
        ("user_id", pa.string()),
        ("locale", pa.string()),
        ("served", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
"""The columns of the queries topic's files. `served` is what the service answered (the
event's `served` as its JSON, which may grow fields), null for a replayed query and in files
written before the column existed."""
FEEDBACK_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("intent", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
"""The columns of the feedback topic's files."""
_FILE = re.compile(r"^p(\d+)_o(\d+)-(\d+)_(\d+)of(\d+)\.parquet$")
_POSITION = ("partition", "offset")


@dataclass(frozen=True)
class ArchivedTopic:
    """One topic's part of the master dataset: the folder its files are under (`prefix`, from
    the root) and their columns; every column but the position is the event's field of that
    name."""

    name: str
    prefix: str
    schema: pa.Schema


QUERIES = ArchivedTopic("queries", "", SCHEMA)
FEEDBACK = ArchivedTopic("feedback", "feedback/", FEEDBACK_SCHEMA)


@dataclass(frozen=True)
class Cutoff:
    """Where a batch run's history ends: the next offset of each partition of the queries
    topic and of the feedback topic (a partition absent is read up to nothing).

    A cut-off recorded before labels had a topic of their own is its queries offsets alone:
    `Cutoff.of` reads it as one with no feedback offsets, so no late label is read.

    >>> Cutoff.of({0: 10}) == Cutoff(queries={0: 10}, feedback={})
    True
    """

    queries: dict[int, int]
    feedback: dict[int, int] = field(default_factory=dict)

    @staticmethod
    def of(value: "Cutoff | Mapping[int, int]") -> "Cutoff":
        """`value` as a cut-off: itself, or the queries offsets of an older record."""
        return value if isinstance(value, Cutoff) else Cutoff(queries=dict(value))


@dataclass(frozen=True)
class FlushFile:
    """One file of one flush, as its name describes it; `key` is its name under the root."""

    key: str
    partition: int
    first: int
    last: int
    part: int
    parts: int

    @staticmethod
    def name(partition: int, first: int, last: int, part: int, parts: int) -> str:
        return f"p{partition:03d}_o{first:012d}-{last:012d}_{part}of{parts}.parquet"


class _Dated(Protocol):
    @property
    def ts(self) -> datetime: ...


class Located(Protocol):
    """A valid event (a `QueryEvent` or a `FeedbackEvent`) and where it was read from, as
    `streams.consumer.Consumed` holds them."""

    @property
    def event(self) -> _Dated: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


def open_root(root: Location | Storage, settings: StorageSettings | None = None) -> Storage:
    """The storage of a master dataset given by path, URL or an opened `Storage`."""
    return root if isinstance(root, Storage) else Storage.from_url(root, settings)


def _flush_files(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    topic: ArchivedTopic = QUERIES,
) -> list[FlushFile]:
    found = []
    for key in open_root(root, settings).list(f"{topic.prefix}date="):
        folder, _, name = key.rpartition("/")
        match = _FILE.match(name)
        date = folder.removeprefix(topic.prefix)
        if (
            match
            and folder.startswith(topic.prefix)
            and date.startswith("date=")
            and "/" not in date
        ):
            p, first, last, part, parts = (int(g) for g in match.groups())
            found.append(FlushFile(key, p, first, last, part, parts))
    return found


def scan(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    topic: ArchivedTopic = QUERIES,
) -> tuple[dict[int, int], list[FlushFile]]:
    """Next offset per partition of `topic` from its complete flushes, and the files of
    incomplete ones.

    A flush is complete when all its n files exist; a crash between two renames leaves an
    incomplete one, whose files must be removed before its range is archived again.
    """
    return _scan(_flush_files(open_root(root, settings), topic=topic))


def _scan(files: list[FlushFile]) -> tuple[dict[int, int], list[FlushFile]]:
    groups: dict[tuple[int, int, int], list[FlushFile]] = defaultdict(list)
    for f in files:
        groups[(f.partition, f.first, f.last)].append(f)
    positions: dict[int, int] = {}
    incomplete: list[FlushFile] = []
    for (partition, _first, last), files in groups.items():
        if len({f.part for f in files}) < files[0].parts:
            incomplete.extend(files)
        else:
            positions[partition] = max(positions.get(partition, 0), last + 1)
    return positions, incomplete


def archived_positions(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    topic: ArchivedTopic = QUERIES,
) -> dict[int, int]:
    """The next offset to archive in each partition of `topic`: the cut-off of everything
    archived of it."""
    return scan(root, settings, topic)[0]


def archived_cutoff(root: Location | Storage, settings: StorageSettings | None = None) -> Cutoff:
    """The cut-off of everything archived, of both topics: where a batch run starting now
    stops."""
    storage = open_root(root, settings)
    return Cutoff(archived_positions(storage), archived_positions(storage, topic=FEEDBACK))


def complete_files(
    root: Location | Storage,
    settings: StorageSettings | None = None,
    topic: ArchivedTopic = QUERIES,
) -> list[FlushFile]:
    """The files of `topic`'s complete flushes: the ones every reader of the history reads."""
    files = _flush_files(open_root(root, settings), topic=topic)
    skip = {f.key for f in _scan(files)[1]}
    return [f for f in files if f.key not in skip]


def history(
    root: Location | Storage,
    cutoff: Cutoff | Mapping[int, int] | None = None,
    settings: StorageSettings | None = None,
) -> ds.Dataset:
    """The archived queries as a pyarrow dataset (lazy, column-prunable), complete flushes only.

    With `cutoff`, only events at offsets below its queries offsets in each partition
    (partitions absent from it are left out), so a batch run reads exactly the history it
    recorded.
    """
    offsets = None if cutoff is None else Cutoff.of(cutoff).queries
    return _dataset(open_root(root, settings), QUERIES, offsets)


def feedback_history(
    root: Location | Storage,
    cutoff: Cutoff | Mapping[int, int] | None = None,
    settings: StorageSettings | None = None,
) -> ds.Dataset:
    """The archived labels of the feedback topic, as `history` gives the queries: with
    `cutoff`, only those below its feedback offsets (none for a cut-off of queries alone)."""
    offsets = None if cutoff is None else Cutoff.of(cutoff).feedback
    return _dataset(open_root(root, settings), FEEDBACK, offsets)


def _dataset(storage: Storage, topic: ArchivedTopic, offsets: dict[int, int] | None) -> ds.Dataset:
    paths = [storage.pyarrow_path(f.key) for f in complete_files(storage, topic=topic)]
    dataset = (
        ds.dataset(
            paths, schema=topic.schema, format="parquet", filesystem=storage.pyarrow_filesystem()
        )
        if paths
        else ds.dataset(topic.schema.empty_table())
    )
    if offsets is None:
        return dataset
    conditions = [
        (ds.field("partition") == p) & (ds.field("offset") < o) for p, o in sorted(offsets.items())
    ]
    if not conditions:
        return dataset.filter(ds.field("offset") < 0)
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined | condition
    return dataset.filter(combined)


def flush_table(events: Sequence[Located], topic: ArchivedTopic = QUERIES) -> pa.Table:
    """`events` of `topic` as the rows of its files: the event's fields and its position."""
    fields = [name for name in topic.schema.names if name not in _POSITION]
    columns: dict[str, list] = {name: [] for name in topic.schema.names}
    for located in events:
        for name in fields:
            value = getattr(located.event, name)
            columns[name].append(
                value.model_dump_json(exclude_none=True) if isinstance(value, BaseModel) else value
            )
        columns["partition"].append(located.partition)
        columns["offset"].append(located.offset)
    return pa.Table.from_pydict(columns, schema=topic.schema)


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_flush(
    root: Location | Storage,
    partition: int,
    first: int,
    last: int,
    events: Sequence[Located],
    settings: StorageSettings | None = None,
    topic: ArchivedTopic = QUERIES,
) -> tuple[int, int]:
    """Durably write offsets first..last of one partition of `topic`, one file per event date;
    returns the files and the bytes written.

    Locally, all files are fsynced under temporary names before any is renamed, and the folders
    are fsynced after; on S3 each file is one PUT. Either way a flush is complete before its
    range counts as archived (a partial one is found by `scan` and removed by the archiver).
    """
    by_date: dict[str, list[Located]] = defaultdict(list)
    for located in events:
        by_date[located.event.ts.strftime("%Y-%m-%d")].append(located)
    if not by_date:  # a range with only dead-lettered messages still needs a marker file
        by_date["1970-01-01"] = []
    parts = len(by_date)
    objects = {
        f"{topic.prefix}date={date}/{FlushFile.name(partition, first, last, part, parts)}": (
            _parquet(flush_table(rows, topic))
        )
        for part, (date, rows) in enumerate(sorted(by_date.items()), start=1)
    }
    open_root(root, settings).write_all(objects)
    return len(objects), sum(map(len, objects.values()))


def footprint(root: Location | Storage, settings: StorageSettings | None = None) -> tuple[int, int]:
    """(files, bytes) of the archived Parquet files of both topics, from one listing of the
    root."""
    storage = open_root(root, settings)
    selector = pafs.FileSelector(
        storage.pyarrow_path("").rstrip("/"), recursive=True, allow_not_found=True
    )
    found = [
        info
        for info in storage.pyarrow_filesystem().get_file_info(selector)
        if info.type == pafs.FileType.File and _FILE.match(info.base_name)
    ]
    return len(found), sum(info.size or 0 for info in found)
