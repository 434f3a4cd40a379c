"""Keeping the batch champion loaded while the registry's alias moves: one poller for the speed
layer and for serving.

A `ChampionWatch` asks a `ChampionStore` which version is champion, downloads a version it has
not loaded yet (a version whose tags only changed is not downloaded again), and keeps the last
good champion when the store is down or a download fails. Failures are logged by one policy
(`FailureLog`): the first of a run with its traceback, the next ones as one line each, since an
outage fails every poll until it ends.
"""

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from models.registry import ChampionInfo, ChampionModel, fetch_champion, load_champion

log = logging.getLogger(__name__)


class ChampionStore(Protocol):
    """Where the batch champion comes from: `current` is a cheap look-up, `load` the download."""

    def current(self) -> ChampionInfo | None: ...

    def load(self, info: ChampionInfo) -> ChampionModel: ...


class RegistryChampions:
    """The versions the MLflow registry's `champion` alias points at, loaded with the texts
    they trained on.

    Parameters
    ----------
    client
        An `MlflowClient` for the tracking server and registry.
    name
        The registered model.
    """

    def __init__(self, client, name: str) -> None:
        self.client = client
        self.name = name

    def current(self) -> ChampionInfo | None:
        return fetch_champion(self.client, self.name)

    def load(self, info: ChampionInfo) -> ChampionModel:
        return load_champion(info, with_training_texts=True)


class ChampionUnavailable(RuntimeError):
    """A step of a champion refresh failed; the message names the step, the cause says why."""


class ChampionWatch:
    """The champion a store points at, loaded, and the last good one while the store fails.

    `refresh` raises what failed; `poll` (what `start`'s daemon thread calls) logs it through
    `failures` and keeps the champion it has. A new champion is used only if `accept` says so
    (serving makes a probe prediction with it); a rejected version is not loaded again.

    Parameters
    ----------
    store
        Where the champion comes from.
    accept
        Called with each newly loaded champion before it is used; False rejects it.
    on_failure
        Called once for each failed look-up or download (for a counter of them).

    Attributes
    ----------
    failures
        The failure log of the look-ups and downloads.
    """

    def __init__(
        self,
        store: ChampionStore,
        accept: Callable[[ChampionModel], bool] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.accept = accept
        self.failures = FailureLog("reading the batch champion", on_failure=on_failure)
        self._loaded: ChampionModel | None = None
        self._rejected: ChampionInfo | None = None
        self._thread: PollingThread | None = None

    def loaded(self) -> ChampionModel | None:
        """The champion in use, or None: a reference read, cheap enough for every event."""
        return self._loaded

    def refresh(self) -> bool:
        """Look the champion up and load it if it changed; True when a new one is in use.

        Raises ChampionUnavailable, from the store's error, when the look-up or the download
        fails; the champion in use stays.
        """
        try:
            info = self.store.current()
        except Exception as exc:
            raise ChampionUnavailable("looking up the batch champion") from exc
        in_use = self._loaded
        if info is None or info == self._rejected or (in_use is not None and in_use.info == info):
            return False
        if in_use is not None and (in_use.info.name, in_use.info.version) == (
            info.name,
            info.version,
        ):  # only its tags changed: the same model, with the new facts
            champion = ChampionModel(info, in_use.estimator, in_use.training_texts)
        else:
            try:
                champion = self.store.load(info)
            except Exception as exc:
                what = f"loading batch champion {info.name} version {info.version}"
                raise ChampionUnavailable(what) from exc
        if self.accept is not None and not self.accept(champion):
            self._rejected = info
            return False
        self._loaded = champion
        log.info("batch champion %s version %s in use", info.name, info.version)
        return True

    def poll(self) -> bool:
        """`refresh`, with a failure logged (by `failures`) instead of raised."""
        try:
            changed = self.refresh()
        except ChampionUnavailable as exc:
            self.failures.failed(exc.__cause__ or exc, str(exc))
            return False
        self.failures.succeeded()
        return changed

    def start(self, poll_s: float) -> "ChampionWatch":
        """`poll` every `poll_s` seconds on a daemon thread, starting now."""
        if self._thread is None:
            self._thread = PollingThread(self.poll, poll_s, "champion-watch")
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.stop(timeout_s)


class PollingThread:
    """Calls `poll` every `interval_s` seconds on a daemon thread, from `start` until `stop`.

    An exception from `poll` is logged and the next round goes on: a poller that died silently
    would freeze the models it keeps up to date.

    Parameters
    ----------
    poll
        One round.
    interval_s
        Seconds from the end of one round to the start of the next.
    name
        The thread's name.
    """

    def __init__(self, poll: Callable[[], object], interval_s: float, name: str) -> None:
        self.poll = poll
        self.interval_s = interval_s
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("%s round failed", self.name)
            self._stop.wait(self.interval_s)


class FailureLog:
    """Logs the failures of one recurring step: the first of a run of failures with its
    traceback, the next ones as one line each, and the recovery once the step succeeds again.

    Parameters
    ----------
    step
        What the step does, as the start of a sentence ("reading the batch champion").
    logger
        Where the lines go; this module's logger unless given.
    on_failure
        Called once for each failure, besides the log.
    """

    def __init__(
        self,
        step: str,
        logger: logging.Logger = log,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.step = step
        self.logger = logger
        self.on_failure = on_failure
        self.failures = 0

    def failed(self, exc: BaseException, what: str | None = None) -> None:
        """Log `exc`: `what` failed, the step itself unless a part of it is named."""
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        self.logger.warning(
            "%s failed (%s; %d in a row); keeping the models in use",
            self.step if what is None else what,
            _reason(exc),
            self.failures,
            exc_info=exc if self.failures == 1 else None,
        )

    def succeeded(self) -> None:
        if self.failures:
            self.logger.info("%s works again after %d failed attempts", self.step, self.failures)
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
