"""The models serving answers with, and their hot reload off the request path.

A background thread polls the speed snapshot store and the batch champion every few seconds,
loads whatever changed, and replaces the one immutable `LoadedModels` by reference. A request
reads that reference once, so it always sees a consistent pair of models, and a reload never
makes it wait. A failed load, or MLflow being down, keeps the models already loaded and is
logged by `models.champion_watch.FailureLog`; a snapshot file that cannot be used is refused
once, with a warning, and not read again.
"""

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from models.champion_watch import ChampionStore, ChampionWatch, FailureLog, PollingThread
from models.registry import ChampionInfo, ChampionModel
from models.snapshot import (
    READABLE_FORMATS,
    SnapshotStore,
    SnapshotUnreadable,
    SpeedSnapshot,
    merge_snapshots,
)

log = logging.getLogger(__name__)

UNPARTITIONED = -1
"""Where serving keeps the snapshot of a store written before snapshots were per partition."""


@dataclass(frozen=True)
class LoadedModels:
    """The batch champion and the speed snapshot answering right now; either may be missing."""

    champion: ChampionModel | None = None
    snapshot: SpeedSnapshot | None = None

    def fresh_snapshot(self, max_age_s: float) -> SpeedSnapshot | None:
        """The snapshot if it is younger than `max_age_s`: an older one means a stopped speed
        layer, whose model no longer covers the recent stream."""
        snapshot = self.snapshot
        return snapshot if snapshot is not None and snapshot.age_s <= max_age_s else None

    def can_answer(self, max_snapshot_age_s: float) -> bool:
        return self.champion is not None or self.fresh_snapshot(max_snapshot_age_s) is not None


class FileChampion:
    """A champion pickled by `bench.champion_file.save_champion_file`, for serving without an
    MLflow server (`SERVING_CHAMPION_PATH`).

    The file is read again whenever its modification time changes, and a new version number in
    it makes a new champion. Pickle runs code on load: point it only at files this pipeline
    wrote.

    Parameters
    ----------
    path
        The champion file; a missing file means no champion.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, ChampionModel] | None = None

    def current(self) -> ChampionInfo | None:
        if not self.path.is_file():
            return None
        return self._read().info

    def load(self, info: ChampionInfo) -> ChampionModel:
        return self._read()

    def _read(self) -> ChampionModel:
        mtime = self.path.stat().st_mtime_ns
        if self._seen is None or self._seen[0] != mtime:
            with self.path.open("rb") as handle:
                record = pickle.load(handle)
            info = ChampionInfo(
                name=self.path.name,
                version=str(record["version"]),
                run_id="",
                cutoff_offsets=dict(record["cutoff_offsets"]),
            )
            champion = ChampionModel(info, record["estimator"], record.get("training_texts"))
            self._seen = (mtime, champion)
        return self._seen[1]


class ModelReloader:
    """Keeps `current`, the `LoadedModels` in use, up to date from a champion store and a
    snapshot store.

    `current` is read without a lock (a reference read is atomic); only the poller writes it.
    A newly loaded model replaces the one in use only if `probe` (a prediction with the new
    set) succeeds, so a snapshot or champion that loads but cannot predict, for instance one
    pickled by an incompatible version of the code, never reaches a request; it is not loaded
    again either.

    Parameters
    ----------
    champions
        Where the batch champion comes from (None: no champion).
    snapshots
        Where the speed snapshots come from (None: no snapshot).
    probe
        A prediction with a candidate set; an exception rejects the set.
    on_poll
        Called with the current set after every round, to publish gauges.
    on_failure
        Called with `"champion"` or `"snapshot"` for each failed reload of that model (the
        store unreachable, the load or the probe failed), to count them.

    Attributes
    ----------
    current
        The models in use.
    """

    def __init__(
        self,
        champions: ChampionStore | None,
        snapshots: SnapshotStore | None,
        probe: Callable[[LoadedModels], object] | None = None,
        on_poll: Callable[[LoadedModels], None] | None = None,
        on_failure: Callable[[str], None] = lambda model: None,
    ) -> None:
        self.snapshots = snapshots
        self.probe = probe
        self.on_poll = on_poll
        self.on_failure = on_failure
        self.current = LoadedModels()
        self._champion = (
            ChampionWatch(champions, self._accept_champion, lambda: on_failure("champion"))
            if champions
            else None
        )
        self._tried: dict[int, int] = {}
        self._parts: dict[int, SpeedSnapshot] = {}
        self._snapshot_failures = FailureLog(
            "loading the speed snapshot", log, lambda: on_failure("snapshot")
        )
        self._thread: PollingThread | None = None

    def refresh_snapshot(self) -> bool:
        """Load the partitions' snapshots that are new and serve their merge; True when the
        models changed.

        The speed layer writes one snapshot per partition; serving answers with their merge
        (`merge_snapshots`: the sum of the models, or the average of their answers for a model
        that does not add up; the blender of the partition that learnt most), refreshed when
        any partition has a new one, reading only those. A store of snapshots written before
        partitions (one worker over every partition) is served as its newest. A snapshot that
        cannot be used (a format version this code does not know, a pickle that does not load,
        one that fails the probe) is refused with one warning naming the file and the reason,
        and not tried again, only a newer one: meanwhile its partition's previous snapshot
        stays in the merge, and the models in use keep answering.
        """
        if self.snapshots is None:
            return False
        try:
            newest = self._newest_sequences()
        except Exception as exc:
            self._snapshot_failures.failed(exc)
            return False
        new = sorted(p for p, sequence in newest.items() if self._tried.get(p) != sequence)
        parts = {p: s for p, s in self._parts.items() if p in newest}
        for partition in new:
            try:
                snapshot = self.snapshots.latest(None if partition == UNPARTITIONED else partition)
            except SnapshotUnreadable as exc:
                self._tried[partition] = exc.sequence
                self._refuse(str(exc.path), exc.reason)
                continue
            except Exception as exc:
                self._snapshot_failures.failed(exc)
                return False
            if snapshot is None:  # removed since the listing
                continue
            self._tried[partition] = snapshot.sequence
            if snapshot.header.format_version not in READABLE_FORMATS:  # a store of another kind
                version = snapshot.header.format_version
                reason = f"format version {version} is not one this code reads"
                self._refuse(f"number {snapshot.sequence}", reason)
            elif snapshot.events_learnt == 0:
                log.info("speed snapshot %s has learnt nothing yet; not used", snapshot.sequence)
            else:
                parts[partition] = snapshot
        self._snapshot_failures.succeeded()
        unchanged = parts.keys() == self._parts.keys() and all(
            parts[p] is self._parts[p] for p in parts
        )
        if unchanged or not parts:
            return False
        merged = merge_snapshots(parts)
        if not self._swap(replace(self.current, snapshot=merged), "snapshot"):
            return False
        self._parts = parts
        log.info(
            "speed snapshots %s in use (offsets %s)",
            {p: s.sequence for p, s in sorted(parts.items())},
            merged.offsets,
        )
        return True

    def _newest_sequences(self) -> dict[int, int]:
        """Partition -> the number of its newest snapshot; `UNPARTITIONED` -> the newest of a
        store written before partitions, when there is no partition's."""
        store = self.snapshots
        assert store is not None
        newest = store.latest_sequences()
        if not newest:
            sequence = store.latest_sequence()
            if sequence is not None:
                newest[UNPARTITIONED] = sequence
        return newest

    def _refuse(self, where: str, reason: str) -> None:
        """Log once that a snapshot is refused (it is not read again)."""
        log.warning(
            "refusing speed snapshot %s: %s; the models in use keep answering", where, reason
        )

    def refresh_champion(self) -> bool:
        """Load the champion if the alias moved; True when the models changed."""
        return self._champion.poll() if self._champion is not None else False

    def _accept_champion(self, champion: ChampionModel) -> bool:
        return self._swap(replace(self.current, champion=champion), "champion")

    def _swap(self, candidate: LoadedModels, model: str) -> bool:
        """Make `candidate`, new in its `model`, current if it passes the probe."""
        if self.probe is not None:
            try:
                self.probe(candidate)
            except Exception:
                log.exception("new models fail a probe prediction; keeping the models in use")
                self.on_failure(model)
                return False
        self.current = candidate
        return True

    def refresh(self) -> bool:
        """One polling round: the cheap snapshot check first, then the champion."""
        changed = self.refresh_snapshot()
        changed = self.refresh_champion() or changed
        if self.on_poll is not None:
            self.on_poll(self.current)
        return changed

    def start(self, poll_s: float) -> None:
        """`refresh` every `poll_s` seconds on a daemon thread, starting now."""
        if self._thread is None:
            self._thread = PollingThread(self.refresh, poll_s, "model-reload")
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.stop(timeout_s)
