"""The models serving answers with, and their hot reload off the request path.

A background thread polls the speed snapshot store and the batch champion every few seconds,
loads whatever changed, and replaces the one immutable `ModelSet` by reference. A request reads
that reference once, so it always sees a consistent pair of models, and a reload never makes it
wait. A failed load, or MLflow being down, keeps the models already loaded: it is logged as a
warning, with the traceback only for the first failure in a row, since an outage fails every
poll until it ends.
"""

import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from common.durable import write_durably
from models.registry import ChampionInfo, ChampionModel, fetch_champion, load_champion
from models.snapshot import SnapshotStore, SpeedSnapshot
from models.texts import TextMemory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSet:
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


class ChampionSource(Protocol):
    """Where the batch champion comes from: `current` is a cheap look-up, `load` the download."""

    def current(self) -> ChampionInfo | None: ...

    def load(self, info: ChampionInfo) -> ChampionModel: ...


class RegistryChampion:
    """The version that the MLflow registry's `champion` alias points at.

    MLflow's client retries a failed request for minutes by default; a poller asks again at its
    next round anyway, so unless configured otherwise requests fail fast here instead.
    """

    def __init__(self, client, name: str) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = client
        self.name = name

    def current(self) -> ChampionInfo | None:
        return fetch_champion(self.client, self.name)

    def load(self, info: ChampionInfo) -> ChampionModel:
        return load_champion(info, with_training_texts=True)


def save_champion_file(
    path: Path,
    estimator,
    version: str,
    cutoff_offsets: dict[int, int] | None = None,
    training_texts: Iterable[str] | None = None,
) -> None:
    """Pickle a fitted pipeline with its version, cut-off and (optionally) the texts it trained
    on for `FileChampion`, atomically (temporary file, then rename) so that a polling server
    never reads half a file."""
    record = {
        "estimator": estimator,
        "version": version,
        "cutoff_offsets": cutoff_offsets or {},
        "training_texts": None if training_texts is None else TextMemory.of(training_texts),
    }
    write_durably(path, lambda h: pickle.dump(record, h, protocol=pickle.HIGHEST_PROTOCOL))


class FileChampion:
    """A champion pickled by `save_champion_file`, for serving without an MLflow server.

    The file is read again whenever its modification time changes, and a new version number in
    it makes a new champion. Pickle runs code on load: point it only at files this pipeline
    wrote.
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


class FailureLog:
    """Logs the failures of one recurring step: the first of a run of failures with its
    traceback, the next ones as one line each, and the recovery once the step succeeds again."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.failures = 0

    def failed(self, exc: BaseException, what: str | None = None) -> None:
        """Log `exc`: `what` failed, the step itself unless a part of it is named."""
        self.failures += 1
        log.warning(
            "%s failed (%s; %d in a row); keeping the models in use",
            self.step if what is None else what,
            _reason(exc),
            self.failures,
            exc_info=exc if self.failures == 1 else None,
        )

    def succeeded(self) -> None:
        if self.failures:
            log.info("%s works again after %d failed attempts", self.step, self.failures)
            self.failures = 0


def _reason(exc: BaseException, limit: int = 160) -> str:
    """One short line for `exc`, ending with the exception it arose from, if any.

    MLflow's client wraps a refused connection in a long message about retries and URLs; the
    innermost exception ("ConnectionRefusedError: [Errno 111] Connection refused") says why.
    """

    def line(error: BaseException) -> str:
        text = (str(error).strip().splitlines() or [""])[0]
        text = text if len(text) <= limit else text[: limit - 3] + "..."
        return f"{type(error).__name__}: {text}"

    root, seen = exc, {id(exc)}
    while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
        root = inner
        seen.add(id(root))
    return line(exc) if root is exc else f"{line(exc)} <- {line(root)}"


class ModelState:
    """The current `ModelSet`, kept up to date from a champion source and a snapshot store.

    `current` is read without a lock (a reference read is atomic); only the poller writes it.
    A newly loaded model replaces the one in use only if `probe` (a prediction with the new
    set) succeeds, so a snapshot or champion that loads but cannot predict, for instance one
    pickled by an incompatible version of the code, never reaches a request; it is not loaded
    again either. `on_poll` is called with the current set after every round, to publish gauges.
    """

    def __init__(
        self,
        champions: ChampionSource | None,
        snapshots: SnapshotStore | None,
        probe: Callable[[ModelSet], object] | None = None,
        on_poll: Callable[[ModelSet], None] | None = None,
    ) -> None:
        self.champions = champions
        self.snapshots = snapshots
        self.probe = probe
        self.on_poll = on_poll
        self.current = ModelSet()
        self._snapshot_sequence: int | None = None
        self._rejected_champion: ChampionInfo | None = None
        self._snapshot_failures = FailureLog("loading the speed snapshot")
        self._champion_failures = FailureLog("reading the batch champion")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_snapshot(self) -> bool:
        """Load the newest snapshot if there is a new one; True when the models changed."""
        if self.snapshots is None:
            return False
        try:
            sequence = self.snapshots.latest_sequence()
            if sequence is None or sequence == self._snapshot_sequence:
                self._snapshot_failures.succeeded()
                return False
            snapshot = self.snapshots.latest()
        except Exception as exc:
            self._snapshot_failures.failed(exc)
            return False
        self._snapshot_failures.succeeded()
        if snapshot is None:
            return False
        self._snapshot_sequence = snapshot.sequence
        if snapshot.events_learnt == 0:
            log.info("speed snapshot %s has learnt nothing yet; not used", snapshot.sequence)
            return False
        if not self._swap(replace(self.current, snapshot=snapshot)):
            return False
        log.info("speed snapshot %s in use (offsets %s)", snapshot.sequence, snapshot.offsets)
        return True

    def refresh_champion(self) -> bool:
        """Load the champion if the alias moved; True when the models changed."""
        if self.champions is None:
            return False
        in_use = self.current.champion
        try:
            info = self.champions.current()
        except Exception as exc:
            self._champion_failures.failed(exc, "looking up the batch champion")
            return False
        if info is None or info == self._rejected_champion:
            self._champion_failures.succeeded()
            return False
        if in_use is not None and in_use.info == info:
            self._champion_failures.succeeded()
            return False
        if in_use is not None and (in_use.info.name, in_use.info.version) == (
            info.name,
            info.version,
        ):
            champion = ChampionModel(info, in_use.estimator)  # only its tags changed
        else:
            try:
                champion = self.champions.load(info)
            except Exception as exc:
                what = f"loading batch champion {info.name} version {info.version}"
                self._champion_failures.failed(exc, what)
                return False
        self._champion_failures.succeeded()
        if not self._swap(replace(self.current, champion=champion)):
            self._rejected_champion = info
            return False
        log.info("batch champion %s version %s in use", info.name, info.version)
        return True

    def _swap(self, candidate: ModelSet) -> bool:
        """Make `candidate` current if it passes the probe."""
        if self.probe is not None:
            try:
                self.probe(candidate)
            except Exception:
                log.exception("new models fail a probe prediction; keeping the models in use")
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
        """Poll every `poll_s` seconds in a daemon thread, starting now."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(poll_s,), name="model-reload", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self, poll_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # a poller that dies silently would freeze the models
                log.exception("model reload round failed")
            self._stop.wait(poll_s)
