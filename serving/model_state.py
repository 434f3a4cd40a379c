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
        self._snapshot_sequence: int | None = None
        self._partitioned_key: tuple[tuple[int, int], ...] | None = None
        self._snapshot_failures = FailureLog(
            "loading the speed snapshot", log, lambda: on_failure("snapshot")
        )
        self._thread: PollingThread | None = None

    def refresh_snapshot(self) -> bool:
        """Load the newest snapshot if there is a new one; True when the models changed.

        A snapshot that cannot be used (a format version this code does not know, or a pickle
        that does not load, such as one whose model's module is not importable here) is refused
        with one warning naming the file and the reason; the models in use keep answering, and
        that snapshot is not tried again, only a newer one.

        A store of per-partition snapshots (a consumer group of speed workers) is served as
        their merge, refreshed whenever any partition has a new one (`_refresh_partitioned`).
        """
        if self.snapshots is None:
            return False
        per_partition = getattr(self.snapshots, "latest_sequences", None)
        if per_partition is not None:
            try:
                sequences = per_partition()
            except Exception as exc:
                self._snapshot_failures.failed(exc)
                return False
            if sequences:
                return self._refresh_partitioned(tuple(sorted(sequences.items())))
        try:
            sequence = self.snapshots.latest_sequence()
            if sequence is None or sequence == self._snapshot_sequence:
                self._snapshot_failures.succeeded()
                return False
            snapshot = self.snapshots.latest()
        except SnapshotUnreadable as exc:
            self._snapshot_failures.succeeded()  # the store answered; the file is the problem
            self._refuse(exc.sequence, str(exc.path), exc.reason)
            return False
        except Exception as exc:
            self._snapshot_failures.failed(exc)
            return False
        self._snapshot_failures.succeeded()
        if snapshot is None:
            return False
        self._snapshot_sequence = snapshot.sequence
        if snapshot.header.format_version not in READABLE_FORMATS:  # a store of another kind
            reason = f"format version {snapshot.header.format_version} is not one this code reads"
            self._refuse(snapshot.sequence, f"number {snapshot.sequence}", reason)
            return False
        if snapshot.events_learnt == 0:
            log.info("speed snapshot %s has learnt nothing yet; not used", snapshot.sequence)
            return False
        if not self._swap(replace(self.current, snapshot=snapshot), "snapshot"):
            return False
        log.info("speed snapshot %s in use (offsets %s)", snapshot.sequence, snapshot.offsets)
        return True

    def _refresh_partitioned(self, key: tuple[tuple[int, int], ...]) -> bool:
        """Serve the merge of every partition's newest snapshot (`merge_snapshots`: the sum of
        the models, or the average of their answers for a model that does not add up; the
        blender of the partition that learnt most), when any partition has a new one."""
        if key == self._partitioned_key:
            self._snapshot_failures.succeeded()
            return False
        try:
            snapshots = self.snapshots.latest_per_partition()  # type: ignore[union-attr]
        except SnapshotUnreadable as exc:
            self._snapshot_failures.succeeded()
            self._partitioned_key = key
            log.warning(
                "refusing the speed snapshots: %s cannot be used (%s); the models in use keep "
                "answering",
                exc.path,
                exc.reason,
            )
            return False
        except Exception as exc:
            self._snapshot_failures.failed(exc)
            return False
        self._snapshot_failures.succeeded()
        self._partitioned_key = key
        snapshots = {p: s for p, s in snapshots.items() if s.events_learnt > 0}
        if not snapshots:
            return False
        merged = merge_snapshots(snapshots)
        if not self._swap(replace(self.current, snapshot=merged), "snapshot"):
            return False
        log.info(
            "speed snapshots of partitions %s merged and in use (offsets %s)",
            sorted(snapshots),
            merged.offsets,
        )
        return True

    def _refuse(self, sequence: int, where: str, reason: str) -> None:
        """Log once that a snapshot is refused, and never load that sequence again."""
        self._snapshot_sequence = sequence
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
