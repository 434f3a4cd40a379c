"""Speed-layer snapshots: the model, where in the stream it is, how it is doing, and which model
it is.

A snapshot file holds two pickles: first its header (`SnapshotHeader.as_record`, plain dicts
and strings, so it reads without importing the model's code), then the `SpeedSnapshot`. A
reader checks the header's format version before it unpickles the model, and a snapshot whose
model's module is gone still says which model it was. Files written before the header existed
hold the `SpeedSnapshot` alone; they read as format version 1 of the default model.

A snapshot is written whole (`common.storage`: in a folder fsynced, renamed, folder fsynced; on
object storage one PUT), so a reader or a restart after kill -9 sees either the previous
snapshot or the new one, never half. The store is a folder or an `s3://` prefix by the same
code, so workers and serving replicas on several machines share one.

Speed workers of one consumer group each snapshot the partitions they own, one snapshot per
partition (`snapshot-p003-000000000012.pkl`: partition 3, its 12th), numbered and pruned per
partition so that workers never collide. Files named without a partition (one worker over every
partition, as before groups) still load through `latest()`; `latest_per_partition` and the
workers of a group ignore them. The file's layout is unchanged (format 2): the partition is a
field of the `SpeedSnapshot`, and its name.
"""

import functools
import io
import logging
import operator
import pickle
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import Any, BinaryIO

from common.settings import StorageSettings
from common.storage import Location, Storage
from models.blend import Blender
from models.model_spec import ModelSpec
from models.texts import TextMemory

log = logging.getLogger(__name__)

_NAME = re.compile(r"^snapshot-(?:p(\d{3,})-)?(\d{12})\.pkl$")

SNAPSHOT_FORMAT = 2
"""The format this code writes: 1 was the `SpeedSnapshot` pickled alone, 2 adds the header."""
READABLE_FORMATS = frozenset({1, SNAPSHOT_FORMAT})
"""The formats this code reads; a reader refuses any other rather than guess at it."""
DEFAULT_MODEL_SPEC = ModelSpec("models.speed_model:build_speed_model")
"""The model of every snapshot written before snapshots recorded theirs (`SpeedSettings.model`'s
default, which it was the only choice of then)."""
_VERSIONED = ("river", "numpy", "scikit-learn", "lambda-ml")


@functools.cache
def library_versions() -> dict[str, str]:
    """Python's version and the installed versions of the libraries a pickled model depends on
    (and of this project), as a snapshot header records them."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = installed_version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot says about itself: its format, its model's spec, the libraries it was
    pickled with.

    Attributes
    ----------
    format_version
        How the file is laid out (`SNAPSHOT_FORMAT` when written by this code).
    model_spec
        `ModelSpec.as_record()` of the factory that built the model, or None when whoever
        wrote the snapshot did not record it.
    versions
        Library -> version at pickling time: python, river, numpy, scikit-learn, lambda-ml.
    """

    format_version: int
    model_spec: dict[str, Any] | None
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls, spec: ModelSpec | None = None) -> "SnapshotHeader":
        """The header this code writes for a model built by `spec`."""
        record = spec.as_record() if spec is not None else None
        return cls(SNAPSHOT_FORMAT, record, dict(library_versions()))

    @classmethod
    def legacy(cls) -> "SnapshotHeader":
        """The header of a snapshot written before headers: format 1, the default model."""
        return cls(1, DEFAULT_MODEL_SPEC.as_record(), {})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "SnapshotHeader":
        """The header from `as_record`'s dict; a missing or odd field raises ValueError."""
        try:
            spec = record.get("model_spec")
            return cls(
                int(record["format_version"]),
                dict(spec) if spec is not None else None,
                {str(k): str(v) for k, v in dict(record.get("versions") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a snapshot header ({type(exc).__name__}: {exc})") from None

    def as_record(self) -> dict[str, Any]:
        """The header as plain dicts, as the file's first pickle holds it."""
        return {
            "format_version": self.format_version,
            "model_spec": self.model_spec,
            "versions": dict(self.versions),
        }

    @property
    def spec(self) -> ModelSpec | None:
        """The model's spec, not imported (its code may not be importable here)."""
        if self.model_spec is None:
            return None
        return ModelSpec(str(self.model_spec.get("factory")), self.model_spec.get("params") or {})

    def describe_model(self) -> str:
        """The model's spec in one line, for logs."""
        spec = self.spec
        return spec.describe() if spec is not None else "an unrecorded model"


class SnapshotUnreadable(Exception):
    """A snapshot that this code cannot use: an unknown format version, or a pickle that does
    not load (for instance because its model's module is not importable here).

    Attributes
    ----------
    path
        The file.
    sequence
        Its number in the store.
    reason
        Why, in one line.
    header
        Its header, when that much could be read (then the model itself is what failed).
    """

    def __init__(
        self, path: Location, sequence: int, reason: str, header: SnapshotHeader | None = None
    ) -> None:
        super().__init__(f"snapshot {path} cannot be used: {reason}")
        self.path = path
        self.sequence = sequence
        self.reason = reason
        self.header = header


@dataclass
class SpeedSnapshot:
    """Everything serving and a restarted speed worker need.

    Attributes
    ----------
    model
        The speed model.
    blender
        The blender's learnt weights.
    offsets
        Partition -> the next offset to read: every event before it is reflected in `model`,
        none after.
    events_learnt
        Labelled events the model learnt.
    metrics
        The speed layer's figures when the snapshot was taken.
    base_version
        The batch champion version whose cut-off the model was re-based on (None before the
        first champion).
    base_offsets
        Partition -> offset of that cut-off.
    created_at
        When the snapshot was taken (Unix time).
    sequence
        Its number in the store, set by `SnapshotStore.save`.
    learnt_texts
        The texts `model` learnt, so a restarted worker still tells first-seen texts from
        repeats.
    header
        Its format, its model's spec and the library versions; a snapshot made without one
        records no spec. One read from a file written before headers is
        `SnapshotHeader.legacy()`.
    partition
        The one partition it covers (a worker of a consumer group), or None when it covers
        every partition of `offsets` (one worker over all of them).
    feedback_offsets
        Partition -> the next offset to read on the feedback topic (empty when the worker read
        no labels from it): every label before it is learnt, waiting in `joins`, or
        dead-lettered.
    joins
        The speed layer's join of late labels to their queries as of `offsets` and
        `feedback_offsets` (`pipelines.speed.joins`), pickled by the layer: serving loads the
        bytes and never reads them.
    age_s
        Seconds since `created_at`.
    """

    model: Any
    blender: Blender
    offsets: dict[int, int]
    events_learnt: int
    metrics: dict[str, float] = field(default_factory=dict)
    base_version: str | None = None
    base_offsets: dict[int, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    sequence: int = 0
    learnt_texts: TextMemory = field(default_factory=TextMemory)
    header: SnapshotHeader = field(default_factory=SnapshotHeader.current)
    partition: int | None = None
    feedback_offsets: dict[int, int] = field(default_factory=dict)
    joins: bytes = b""

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A snapshot written before the speed layer tracked its texts has none, one written
        # before headers is format 1 of the default model, one written before consumer
        # groups covers every partition it has offsets for, and one written before labels
        # had a topic of their own read none.
        defaults = {
            "learnt_texts": TextMemory(),
            "header": SnapshotHeader.legacy(),
            "partition": None,
            "feedback_offsets": {},
            "joins": b"",
        }
        self.__dict__.update(defaults | state)

    @property
    def age_s(self) -> float:
        """Seconds since the snapshot was taken."""
        return max(0.0, time.time() - self.created_at)


def write_snapshot(handle: BinaryIO, snapshot: SpeedSnapshot) -> None:
    """The file's content: the header's record, then the snapshot."""
    pickle.dump(snapshot.header.as_record(), handle, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.dump(snapshot, handle, protocol=pickle.HIGHEST_PROTOCOL)


def read_snapshot(handle: BinaryIO, path: Location, sequence: int) -> SpeedSnapshot:
    """The snapshot in an open file, of either format; `SnapshotUnreadable` says why not.

    The header is read and its format checked before the model is unpickled. An `OSError`
    (a file that went away, a disk error) propagates as it is: it says nothing of the file.
    """
    header: SnapshotHeader | None = None
    try:
        first = pickle.load(handle)
        if isinstance(first, SpeedSnapshot):  # format 1: the snapshot alone
            return first
        if not isinstance(first, Mapping):
            raise ValueError(f"it starts with a {type(first).__name__}, not a snapshot header")
        header = SnapshotHeader.from_record(first)
    except OSError:
        raise
    except Exception as exc:
        raise SnapshotUnreadable(path, sequence, _reason(exc)) from exc
    if header.format_version not in READABLE_FORMATS:
        known = ", ".join(str(v) for v in sorted(READABLE_FORMATS))
        reason = f"format version {header.format_version} is not one this code reads ({known})"
        raise SnapshotUnreadable(path, sequence, reason, header)
    try:
        snapshot = pickle.load(handle)
    except OSError:
        raise
    except Exception as exc:  # typically the model's module or class is not importable here
        reason = f"{_reason(exc)} (its model: {header.describe_model()})"
        raise SnapshotUnreadable(path, sequence, reason, header) from exc
    if not isinstance(snapshot, SpeedSnapshot):
        reason = f"it holds a {type(snapshot).__name__}, not a SpeedSnapshot"
        raise SnapshotUnreadable(path, sequence, reason, header)
    snapshot.header = header
    return snapshot


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SnapshotStore:
    """Snapshots as numbered pickle objects under one location; the highest number is the
    newest, per partition for the snapshots of a consumer group's workers.

    The location is a folder (the embedded default) or an `s3://` prefix several machines share
    (`common.storage`); a listing is the only index, so every worker and serving replica sees
    the same newest snapshots. Pickle runs code on load: point it only at a location this
    pipeline writes.

    Parameters
    ----------
    location
        The folder or URL; a folder is created on the first save.
    keep
        How many of the newest snapshots to keep (of each partition).
    storage
        The object store of an `s3://` location (the edge's `STORAGE_*` settings).
    """

    def __init__(
        self, location: Location, keep: int = 3, storage: StorageSettings | None = None
    ) -> None:
        self.storage = Storage.from_url(location, storage)
        self.keep = keep

    @property
    def location(self) -> str:
        return self.storage.url

    def _listing(self) -> dict[int | None, list[int]]:
        """Partition (None: unpartitioned) -> its snapshots' numbers, ascending."""
        found: dict[int | None, list[int]] = {}
        for name in self.storage.list():
            match = _NAME.match(name)
            if match:
                partition = int(match.group(1)) if match.group(1) is not None else None
                found.setdefault(partition, []).append(int(match.group(2)))
        return {k: sorted(v) for k, v in found.items()}

    def _sequences(self, partition: int | None = None) -> list[int]:
        return self._listing().get(partition, [])

    @staticmethod
    def name(sequence: int, partition: int | None = None) -> str:
        """The object name of snapshot `sequence` (of `partition`, if any)."""
        if partition is None:
            return f"snapshot-{sequence:012d}.pkl"
        return f"snapshot-p{partition:03d}-{sequence:012d}.pkl"

    def latest_sequence(self, partition: int | None = None) -> int | None:
        """The newest snapshot's number (of `partition`; None: the unpartitioned ones), or
        None when there is none."""
        sequences = self._sequences(partition)
        return sequences[-1] if sequences else None

    def latest_sequences(self) -> dict[int, int]:
        """Partition -> the number of its newest snapshot; unpartitioned snapshots are not
        listed. A cheap listing, to tell whether any partition has a new one."""
        return {p: seqs[-1] for p, seqs in self._listing().items() if p is not None and seqs}

    def save(self, snapshot: SpeedSnapshot) -> str:
        """Write whole as the next sequence number of `snapshot.partition` (locally: fsynced
        and renamed); older snapshots of that partition beyond `keep` go. The snapshot's
        location is returned."""
        partition = snapshot.partition
        sequences = self._sequences(partition)
        snapshot.sequence = (sequences[-1] if sequences else 0) + 1
        name = self.name(snapshot.sequence, partition)
        buffer = io.BytesIO()
        write_snapshot(buffer, snapshot)
        self.storage.write_bytes(name, buffer.getvalue())
        for old in [*sequences, snapshot.sequence][: -self.keep]:
            self.storage.delete(self.name(old, partition))
        return f"{self.location.rstrip('/')}/{name}"

    def latest(self, partition: int | None = None) -> SpeedSnapshot | None:
        """The newest snapshot (of `partition`; None: the unpartitioned ones);
        `SnapshotUnreadable` when it cannot be used (an older one is not read instead: it
        would be progress the stream has moved past).

        One a writer removed between listing and opening (it keeps only `keep`) has been
        replaced by a newer one, so the listing is simply read again."""
        for _ in range(5):  # each miss means a newer snapshot was saved meanwhile
            sequence = self.latest_sequence(partition)
            if sequence is None:
                return None
            name = self.name(sequence, partition)
            try:
                data = self.storage.read_bytes(name)
            except FileNotFoundError:
                continue
            return read_snapshot(io.BytesIO(data), f"{self.location}/{name}", sequence)
        raise FileNotFoundError(f"no snapshot in {self.location} could be opened")

    def latest_per_partition(self) -> dict[int, SpeedSnapshot]:
        """Partition -> its newest snapshot, for every partition that has one.

        Unpartitioned snapshots (written before consumer groups) are ignored, with a log line:
        they would count their partitions' events twice. `SnapshotUnreadable` when one
        partition's newest cannot be used."""
        listing = self._listing()
        if None in listing:
            log.info(
                "ignoring the unpartitioned snapshots in %s beside the per-partition ones",
                self.location,
            )
        found = {}
        for partition in sorted(p for p in listing if p is not None):
            snapshot = self.latest(partition)
            if snapshot is not None:
                found[partition] = snapshot
        return found

    def reached(self, ends: Mapping[int, int]) -> bool:
        """Whether there is a snapshot for each partition of `ends` and each partition's newest
        holds its offset there (a consumer group has learnt up to `ends`)."""
        latest = self.latest_per_partition()
        return set(latest) == set(ends) and all(latest[p].offsets == {p: ends[p]} for p in ends)


class SnapshotEnsemble:
    """Per-partition models that cannot be added up (no `__add__`), answering as one: the
    average of their `predict_proba_one`, over the union of their classes.

    Serving and a group's workers use it for a configured River model that does not merge;
    unlike a sum it is not the model of every event, only an approximation of it.
    """

    def __init__(self, models: list[Any]) -> None:
        self.models = models

    def predict_proba_one(self, x: dict) -> dict[Any, float]:
        total: dict[Any, float] = {}
        for model in self.models:
            for label, p in model.predict_proba_one(x).items():
                total[label] = total.get(label, 0.0) + p
        return {label: p / len(self.models) for label, p in total.items()}

    def predict_one(self, x: dict) -> Any:
        probabilities = self.predict_proba_one(x)
        return max(probabilities, key=probabilities.__getitem__) if probabilities else None


def mergeable(model: Any) -> bool:
    """Whether per-partition models of this kind add up exactly: they define `__add__` and
    `count_table` (as `HashedTextNB` does; a River pipeline's `+` makes a union, not a sum)."""
    return callable(getattr(model, "count_table", None)) and callable(
        getattr(type(model), "__add__", None)
    )


def merge_models(models: list[Any]) -> Any:
    """The sum of the models, in order, when they add up; else a `SnapshotEnsemble`."""
    if len(models) == 1:
        return models[0]
    if all(mergeable(m) for m in models):
        return functools.reduce(operator.add, models)
    log.info(
        "the speed model %s does not merge (no __add__): answering with the average of the "
        "%d partitions' models",
        type(models[0]).__name__,
        len(models),
    )
    return SnapshotEnsemble(models)


def merge_snapshots(snapshots: Mapping[int, SpeedSnapshot]) -> SpeedSnapshot:
    """Every partition's newest snapshot as one: what serving answers with.

    - model: the sum of the partitions' models in partition order (`HashedTextNB.__add__`:
      counts add exactly, the temperature is the event-weighted mean of the log temperatures);
      a model without `__add__` is served as a `SnapshotEnsemble`, the average of the
      partitions' `predict_proba_one`;
    - blender: the blender of the partition that learnt the most events (the lowest-numbered
      on a tie), the one whose weights rest on the most evidence;
    - offsets, base offsets, feedback offsets: their union; events learnt: the sum; metrics:
      the busiest partition's, with events learnt the sum; no joins (they are each worker's);
    - created_at: the newest (a partition without new events makes no new snapshots, which
      does not make the others stale); sequence: the highest; header: the busiest's.
    """
    if not snapshots:
        raise ValueError("no snapshots to merge")
    parts = [snapshots[p] for p in sorted(snapshots)]
    busiest = max(parts, key=lambda s: s.events_learnt)
    offsets: dict[int, int] = {}
    base_offsets: dict[int, int] = {}
    feedback_offsets: dict[int, int] = {}
    for part in parts:
        offsets |= part.offsets
        base_offsets |= part.base_offsets
        feedback_offsets |= part.feedback_offsets
    events = sum(part.events_learnt for part in parts)
    return SpeedSnapshot(
        model=merge_models([part.model for part in parts]),
        blender=busiest.blender,
        offsets=offsets,
        events_learnt=events,
        metrics=busiest.metrics | {"events_learnt": float(events)},
        base_version=busiest.base_version,
        base_offsets=base_offsets,
        created_at=max(part.created_at for part in parts),
        sequence=max(part.sequence for part in parts),
        learnt_texts=busiest.learnt_texts,
        header=busiest.header,
        partition=None,
        feedback_offsets=feedback_offsets,
    )
