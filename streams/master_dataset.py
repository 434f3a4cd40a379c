"""The master dataset: the archiver's immutable Parquet copy of the topic, and how to read it.

Layout: `<root>/date=YYYY-MM-DD/p<partition>_o<first>-<last>_<k>of<n>.parquet`. One flush of one
partition covers the offsets first..last and writes one file per event date (n files). The
names alone say what is archived: the next offset of a partition is one past the highest
`last` of its complete flushes, so restarts need no other bookkeeping.

The root is a local folder or an `s3://bucket/prefix` URL (`common.storage`): every function
takes either, or a `Storage` already opened, and reads Parquet in place through pyarrow.
"""

import re
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

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
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
_FILE = re.compile(r"^p(\d+)_o(\d+)-(\d+)_(\d+)of(\d+)\.parquet$")


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


def open_root(root: Location | Storage, settings: StorageSettings | None = None) -> Storage:
    """The storage of a master dataset given by path, URL or an opened `Storage`."""
    return root if isinstance(root, Storage) else Storage.from_url(root, settings)


def _flush_files(
    root: Location | Storage, settings: StorageSettings | None = None
) -> list[FlushFile]:
    found = []
    for key in open_root(root, settings).list("date="):
        folder, _, name = key.rpartition("/")
        match = _FILE.match(name)
        if match and folder.startswith("date=") and "/" not in folder:
            p, first, last, part, parts = (int(g) for g in match.groups())
            found.append(FlushFile(key, p, first, last, part, parts))
    return found


def scan(
    root: Location | Storage, settings: StorageSettings | None = None
) -> tuple[dict[int, int], list[FlushFile]]:
    """Next offset per partition from the complete flushes, and the files of incomplete ones.

    A flush is complete when all its n files exist; a crash between two renames leaves an
    incomplete one, whose files must be removed before its range is archived again.
    """
    return _scan(_flush_files(open_root(root, settings)))


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
    root: Location | Storage, settings: StorageSettings | None = None
) -> dict[int, int]:
    """The next offset to archive in each partition: the cut-off of everything archived."""
    return scan(root, settings)[0]


def complete_files(
    root: Location | Storage, settings: StorageSettings | None = None
) -> list[FlushFile]:
    """The files of the complete flushes: the ones every reader of the history reads."""
    files = _flush_files(open_root(root, settings))
    skip = {f.key for f in _scan(files)[1]}
    return [f for f in files if f.key not in skip]


def history(
    root: Location | Storage,
    cutoff: dict[int, int] | None = None,
    settings: StorageSettings | None = None,
) -> ds.Dataset:
    """The archived events as a pyarrow dataset (lazy, column-prunable), complete flushes only.

    With `cutoff`, only events at offsets below it in each partition (partitions absent from
    `cutoff` are left out), so a batch run reads exactly the history it recorded.
    """
    storage = open_root(root, settings)
    paths = [storage.pyarrow_path(f.key) for f in complete_files(storage)]
    dataset = (
        ds.dataset(paths, schema=SCHEMA, format="parquet", filesystem=storage.pyarrow_filesystem())
        if paths
        else ds.dataset(SCHEMA.empty_table())
    )
    if cutoff is None:
        return dataset
    conditions = [
        (ds.field("partition") == p) & (ds.field("offset") < o) for p, o in sorted(cutoff.items())
    ]
    if not conditions:
        return dataset.filter(ds.field("offset") < 0)
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined | condition
    return dataset.filter(combined)


def footprint(root: Location | Storage, settings: StorageSettings | None = None) -> tuple[int, int]:
    """(files, bytes) of the archived Parquet files, from one listing of the root."""
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
