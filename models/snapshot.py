"""Speed-layer snapshots: the model, where in the stream it is, and how it is doing.

A snapshot is written durably (`common.durable`: fsynced, renamed, folder fsynced), so a
reader or a restart after kill -9 sees either the previous snapshot or the new one, never half.
The store is an interface so that an object store can stand in for the local folder.
"""

import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.durable import write_durably
from models.blend import HedgeBlender
from models.texts import TextMemory

_NAME = re.compile(r"^snapshot-(\d{12})\.pkl$")


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
    age_s
        Seconds since `created_at`.
    """

    model: Any
    blender: HedgeBlender
    offsets: dict[int, int]
    events_learnt: int
    metrics: dict[str, float] = field(default_factory=dict)
    base_version: str | None = None
    base_offsets: dict[int, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    sequence: int = 0
    learnt_texts: TextMemory = field(default_factory=TextMemory)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A snapshot written before the speed layer tracked its texts has none.
        self.__dict__.update({"learnt_texts": TextMemory()} | state)

    @property
    def age_s(self) -> float:
        """Seconds since the snapshot was taken."""
        return max(0.0, time.time() - self.created_at)


class SnapshotStore(Protocol):
    """Where snapshots are kept: `save` numbers them, `latest` reads the newest."""

    def save(self, snapshot: SpeedSnapshot) -> str: ...

    def latest(self) -> SpeedSnapshot | None: ...

    def latest_sequence(self) -> int | None: ...


class LocalSnapshotStore:
    """Snapshots as numbered pickle files in one folder; the highest number is the newest.

    Pickle runs code on load: point it only at a folder this pipeline writes.

    Parameters
    ----------
    directory
        The folder; created on the first save.
    keep
        How many of the newest snapshots to keep.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def _sequences(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _path(self, sequence: int) -> Path:
        return self.directory / f"snapshot-{sequence:012d}.pkl"

    def latest_sequence(self) -> int | None:
        """The newest snapshot's number, or None when there is none."""
        sequences = self._sequences()
        return sequences[-1] if sequences else None

    def save(self, snapshot: SpeedSnapshot) -> str:
        """Write durably as the next sequence number; older snapshots beyond `keep` go."""
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot.sequence = (self.latest_sequence() or 0) + 1
        target = self._path(snapshot.sequence)
        write_durably(target, lambda h: pickle.dump(snapshot, h, protocol=pickle.HIGHEST_PROTOCOL))
        for old in self._sequences()[: -self.keep]:
            self._path(old).unlink(missing_ok=True)
        return str(target)

    def latest(self) -> SpeedSnapshot | None:
        """The newest snapshot. One a writer removed between listing and opening (it keeps only
        `keep`) has been replaced by a newer one, so the listing is simply read again."""
        for _ in range(5):  # each miss means a newer snapshot was saved meanwhile
            sequence = self.latest_sequence()
            if sequence is None:
                return None
            try:
                with self._path(sequence).open("rb") as handle:
                    return pickle.load(handle)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"no snapshot in {self.directory} could be opened")
