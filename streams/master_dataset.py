"""The master dataset: the archiver's immutable Parquet copy of the topic, and how to read it.

Layout: `<root>/date=YYYY-MM-DD/p<partition>_o<first>-<last>_<k>of<n>.parquet`. One flush of one
partition covers the offsets first..last and writes one file per event date (n files). The
names alone say what is archived: the next offset of a partition is one past the highest
`last` of its complete flushes, so restarts need no other bookkeeping.
"""

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

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
    """One file of one flush, as its name describes it."""

    path: Path
    partition: int
    first: int
    last: int
    part: int
    parts: int

    @staticmethod
    def name(partition: int, first: int, last: int, part: int, parts: int) -> str:
        return f"p{partition:03d}_o{first:012d}-{last:012d}_{part}of{parts}.parquet"


def _flush_files(root: Path) -> list[FlushFile]:
    found = []
    for path in root.glob("date=*/*.parquet"):
        match = _FILE.match(path.name)
        if match:
            p, first, last, part, parts = (int(g) for g in match.groups())
            found.append(FlushFile(path, p, first, last, part, parts))
    return found


def scan(root: Path) -> tuple[dict[int, int], list[FlushFile]]:
    """Next offset per partition from the complete flushes, and the files of incomplete ones.

    A flush is complete when all its n files exist; a crash between two renames leaves an
    incomplete one, whose files must be removed before its range is archived again.
    """
    groups: dict[tuple[int, int, int], list[FlushFile]] = defaultdict(list)
    for f in _flush_files(root):
        groups[(f.partition, f.first, f.last)].append(f)
    positions: dict[int, int] = {}
    incomplete: list[FlushFile] = []
    for (partition, _first, last), files in groups.items():
        if len({f.part for f in files}) < files[0].parts:
            incomplete.extend(files)
        else:
            positions[partition] = max(positions.get(partition, 0), last + 1)
    return positions, incomplete


def archived_positions(root: Path) -> dict[int, int]:
    """The next offset to archive in each partition: the cut-off of everything archived."""
    return scan(root)[0]


def history(root: Path, cutoff: dict[int, int] | None = None) -> ds.Dataset:
    """The archived events as a pyarrow dataset (lazy, column-prunable), complete flushes only.

    With `cutoff`, only events at offsets below it in each partition (partitions absent from
    `cutoff` are left out), so a batch run reads exactly the history it recorded.
    """
    positions, incomplete = scan(root)
    skip = {f.path for f in incomplete}
    paths = [str(f.path) for f in _flush_files(root) if f.path not in skip]
    dataset = (
        ds.dataset(paths, schema=SCHEMA, format="parquet")
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
