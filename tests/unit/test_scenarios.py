"""Drift scenarios replay the same stream for the same seed, with the drift where it is asked."""

from collections import Counter

import pytest

from streams.dataset import CLINC150_DATA, load_dataset, load_domains
from streams.scenarios import Scenario, late_intents_of_domains, replay


@pytest.fixture(scope="module")
def clinc():
    return load_dataset(CLINC150_DATA).examples


def intents(items):
    return [item.example.intent for item in items]


def test_shuffle_is_a_seeded_permutation_of_each_pass(clinc):
    first = list(replay(clinc, Scenario("shuffle", length=len(clinc), seed=1)))
    again = list(replay(clinc, Scenario("shuffle", length=len(clinc), seed=1)))
    other = list(replay(clinc, Scenario("shuffle", length=len(clinc), seed=2)))
    assert [i.example for i in first] == [i.example for i in again]
    assert [i.example for i in first] != [i.example for i in other]
    assert Counter(i.example for i in first) == Counter(clinc)


def test_new_domain_intents_appear_only_after_the_drift_point(clinc):
    late = late_intents_of_domains(load_domains(), ["travel", "banking"])
    stream = intents(
        replay(clinc, Scenario("new-domain", 20_000, drift_at=8_000, late_intents=late))
    )
    assert not late & set(stream[:8_000])
    share_after = sum(i in late for i in stream[8_000:]) / 12_000
    assert 0.15 < share_after < 0.25  # 30 of 151 labels, in proportion to their examples


def test_popularity_shift_changes_which_intents_are_frequent(clinc):
    stream = intents(replay(clinc, Scenario("popularity-shift", 20_000, drift_at=10_000)))
    top_before = {i for i, _ in Counter(stream[:10_000]).most_common(5)}
    top_after = {i for i, _ in Counter(stream[10_000:]).most_common(5)}
    assert len(top_before & top_after) <= 2
    assert Counter(stream[:10_000]).most_common(1)[0][1] > 5 * 10_000 / 151


def test_unlabelled_fraction_is_respected(clinc):
    items = list(replay(clinc, Scenario("shuffle", 10_000, unlabelled_fraction=0.3)))
    assert 0.27 < sum(not i.labelled for i in items) / len(items) < 0.33


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "sideways"}, "unknown scenario"),
        ({"name": "new-domain", "length": 10}, "at least one late intent"),
        ({"length": 10, "drift_at": 11}, "drift_at"),
        ({"unlabelled_fraction": 1.5}, "unlabelled_fraction"),
    ],
)
def test_bad_scenarios_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scenario(**kwargs)


def test_unknown_late_intents_and_domains_are_named(clinc):
    with pytest.raises(ValueError, match="not_an_intent"):
        list(replay(clinc, Scenario("new-domain", 10, late_intents=frozenset({"not_an_intent"}))))
    with pytest.raises(ValueError, match="atlantis"):
        late_intents_of_domains(load_domains(), ["atlantis"])
