"""The champion poller shared by the speed layer and serving (`models.champion_watch`), with a
store in memory: what it loads, what it skips, and what it keeps and logs when the store fails.
"""

import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from models.champion_watch import ChampionUnavailable, ChampionWatch, RegistryChampions
from models.model_spec import ModelSpec
from models.registry import (
    CUTOFF_TAG,
    MODEL_SPEC_TAG,
    ChampionInfo,
    ChampionModel,
    encode_offsets,
    trained_alike,
)
from models.texts import TextMemory


class Estimator:
    classes_ = ("alarm", "weather")


class MemoryStore:
    """A champion store whose alias is `info` (None: no champion), and which counts downloads.

    `failing` makes the next look-ups raise it, `failing_load` the next downloads."""

    def __init__(self, info: ChampionInfo | None = None) -> None:
        self.info = info
        self.failing: BaseException | None = None
        self.failing_load: BaseException | None = None
        self.loads: list[str] = []
        self.looked_up = threading.Event()

    def current(self) -> ChampionInfo | None:
        self.looked_up.set()
        if self.failing is not None:
            raise self.failing
        return self.info

    def load(self, info: ChampionInfo) -> ChampionModel:
        self.loads.append(info.version)
        if self.failing_load is not None:
            raise self.failing_load
        return ChampionModel(info, Estimator(), TextMemory.of([f"trained for {info.version}"]))


def info(version: str, cutoff: int = 0) -> ChampionInfo:
    return ChampionInfo("intents", version, f"run-{version}", {0: cutoff})


def outage() -> RuntimeError:
    """What MLflow's client raises when its server is down: a wrapper with the cause inside."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise RuntimeError("API request to http://mlflow failed after 0 retries") from cause
    except RuntimeError as exc:
        return exc


def test_a_moved_alias_is_loaded_and_an_unmoved_one_is_not():
    store = MemoryStore()
    watch = ChampionWatch(store)
    assert not watch.poll() and watch.loaded() is None  # no champion yet
    store.info = info("1")
    assert watch.poll() and watch.loaded().info.version == "1"
    assert not watch.poll()
    store.info = info("2", cutoff=50)
    assert watch.poll()
    assert watch.loaded().info == info("2", cutoff=50)
    assert store.loads == ["1", "2"]


def test_a_version_whose_tags_only_changed_is_not_downloaded_again():
    store = MemoryStore(info("3", cutoff=10))
    watch = ChampionWatch(store)
    assert watch.poll()
    first = watch.loaded()
    store.info = info("3", cutoff=20)
    assert watch.poll()  # a new champion: the same model, with the new facts
    second = watch.loaded()
    assert store.loads == ["3"]
    assert second.info.cutoff_offsets == {0: 20}
    assert second.estimator is first.estimator
    assert second.training_texts is first.training_texts


def test_a_failing_store_keeps_the_champion_and_logs_one_traceback_then_one_line_each(caplog):
    caplog.set_level("INFO", logger="models.champion_watch")
    store = MemoryStore(info("5"))
    watch = ChampionWatch(store)
    assert watch.poll()
    caplog.clear()
    store.failing = outage()
    for _ in range(3):
        assert not watch.poll()
        assert watch.loaded().info.version == "5"
    store.failing = None
    assert not watch.poll()  # back, and nothing new
    records = caplog.records
    assert [r.levelname for r in records] == ["WARNING"] * 3 + ["INFO"]
    assert [r.exc_info is not None for r in records] == [True, False, False, False]
    assert all(
        r.getMessage().startswith("looking up the batch champion failed (") for r in records[:3]
    )
    assert "<- ConnectionRefusedError: [Errno 111] Connection refused" in records[1].getMessage()
    assert "3 in a row" in records[2].getMessage()
    assert "works again after 3 failed attempts" in records[3].getMessage()


def test_a_failed_download_keeps_the_champion_and_is_tried_again():
    store = MemoryStore(info("1"))
    watch = ChampionWatch(store)
    assert watch.poll()
    store.failing_load = OSError("disk full")
    store.info = info("2")
    with pytest.raises(ChampionUnavailable, match="loading batch champion intents version 2"):
        watch.refresh()
    assert not watch.poll()
    assert watch.loaded().info.version == "1" and watch.failures.failures == 1
    store.failing_load = None
    assert watch.poll() and watch.loaded().info.version == "2"
    assert watch.failures.failures == 0
    assert store.loads == ["1", "2", "2", "2"]


def test_refresh_raises_what_failed_for_a_caller_that_cannot_go_on_without_it():
    store = MemoryStore()
    store.failing = outage()
    with pytest.raises(ChampionUnavailable, match="looking up the batch champion") as raised:
        ChampionWatch(store).refresh()
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_a_rejected_champion_is_not_used_nor_loaded_again():
    store = MemoryStore(info("1"))
    watch = ChampionWatch(store, accept=lambda champion: champion.info.version != "2")
    assert watch.poll()
    store.info = info("2")
    assert not watch.poll() and not watch.poll()
    assert watch.loaded().info.version == "1" and store.loads == ["1", "2"]
    store.info = info("3")
    assert watch.poll() and watch.loaded().info.version == "3"


def test_the_watch_polls_on_a_daemon_thread_until_stopped():
    store = MemoryStore(info("1"))
    watch = ChampionWatch(store).start(poll_s=0.01)
    try:
        assert store.looked_up.wait(5)
        thread = next(t for t in threading.enumerate() if t.name == "champion-watch")
        assert thread.daemon
    finally:
        watch.stop()
    assert not thread.is_alive()
    assert watch.loaded() is not None and watch.loaded().info.version == "1"


class Version:
    def __init__(self, version: str, run_id: str, tags: dict[str, str]) -> None:
        self.version, self.run_id, self.tags = version, run_id, tags


class Registry:
    """The part of `MlflowClient` the registry's champion is read with."""

    tracking_uri = "http://mlflow.test"

    def __init__(self, aliases: dict[tuple[str, str], Version]) -> None:
        self.aliases = aliases

    def get_model_version_by_alias(self, name: str, alias: str) -> Version:
        if (name, alias) not in self.aliases:
            raise MlflowException("no such alias", error_code=RESOURCE_DOES_NOT_EXIST)
        return self.aliases[name, alias]


def test_registry_champions_follow_the_champion_alias_and_its_cutoff_tag():
    version = Version("4", "run-4", {CUTOFF_TAG: '{"0": 12, "1": 7}'})
    champions = RegistryChampions(Registry({("intents", "champion"): version}), "intents")
    assert champions.current() == ChampionInfo(
        "intents", "4", "run-4", {0: 12, 1: 7}, tracking_uri="http://mlflow.test"
    )
    assert RegistryChampions(Registry({}), "intents").current() is None


def test_a_version_is_trained_alike_only_on_the_same_history_by_the_same_model():
    """What makes a retrain register nothing: the cut-off and the model spec both the same."""
    spec = ModelSpec("models.alternatives:tfidf_logistic", {"C": 10.0})
    tags = {CUTOFF_TAG: encode_offsets({0: 120, 1: 98}), MODEL_SPEC_TAG: spec.as_json()}
    assert trained_alike(tags, {1: 98, 0: 120}, spec)
    more = ModelSpec("models.alternatives:tfidf_logistic", {"C": 10.0, "max_iter": 1000})
    assert not trained_alike(tags, {0: 120, 1: 98}, more)  # other parameters
    assert not trained_alike(tags, {0: 120, 1: 98}, ModelSpec("models.alternatives:linear_svc"))
    assert not trained_alike(tags, {0: 121, 1: 98}, spec)  # more history
    unknown = {CUTOFF_TAG: tags[CUTOFF_TAG]}  # registered before versions carried their spec
    assert not trained_alike(unknown, {0: 120, 1: 98}, spec)
