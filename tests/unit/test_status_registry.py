"""`lambda-ml status` on a registered version: both parts of its cut-off, the queries topic's
and the feedback topic's, from the version's tags."""

import time
from types import SimpleNamespace

from models.registry import CUTOFF_TAG, FEEDBACK_CUTOFF_TAG, encode_offsets
from pipelines.status import _describe_version, _version


class StandInRegistry:
    """Answers as MlflowClient does for one version behind an alias, and its run."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.model_version = SimpleNamespace(
            version=3, run_id="r1", tags=tags, creation_timestamp=time.time() * 1000 - 90_000
        )

    def get_model_version_by_alias(self, name, alias):
        return self.model_version

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(metrics={"holdout_first_seen_accuracy": 0.8}))


def test_a_version_trained_on_late_labels_shows_where_its_labels_end():
    tags = {
        CUTOFF_TAG: encode_offsets({0: 120, 1: 98}),
        FEEDBACK_CUTOFF_TAG: encode_offsets({0: 7}),
    }
    found = _version(StandInRegistry(tags), "intent", "champion")
    assert found is not None
    assert found["cutoff_offsets"] == {0: 120, 1: 98}
    assert found["cutoff_feedback_offsets"] == {0: 7}
    assert _describe_version(found).endswith("cut-off 0:120 1:98, labels 0:7")


def test_a_version_without_labels_shows_its_queries_cutoff_alone():
    found = _version(StandInRegistry({CUTOFF_TAG: encode_offsets({0: 5})}), "intent", "champion")
    assert found is not None and found["cutoff_feedback_offsets"] == {}
    assert _describe_version(found).endswith("ago, cut-off 0:5")
