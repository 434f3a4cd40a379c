"""A query-log replay: variants that differ, a Zipf head that repeats, a tail that keeps growing."""

import doctest
import random
import re
import statistics
from collections import Counter

import pytest

import streams.query_log
from streams.dataset import CLINC150_DATA, Example, load_dataset, load_domains
from streams.query_log import FILLERS, GAZETTEER, QueryLog, apply_query_log, make_variant
from streams.scenarios import Scenario, StreamItem, late_intents_of_domains, replay


@pytest.fixture(scope="module")
def clinc():
    return load_dataset(CLINC150_DATA).examples


def variants(text, count=200, seed=0):
    rng = random.Random(seed)
    return [make_variant(text, rng) for _ in range(count)]


def test_docstring_examples():
    result = doctest.testmod(streams.query_log, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_variants_differ_from_the_input_and_keep_two_words(clinc):
    rng = random.Random(3)
    texts = [e.text for e in rng.sample(clinc, 3000)] + ["new york", "hi there"]
    for text in texts:
        variant = make_variant(text, rng)
        if len(text.split()) >= 2:
            assert variant != text, text
            assert len(variant.split()) >= 2, (text, variant)


def test_the_same_seed_gives_the_same_variants(clinc):
    texts = [e.text for e in clinc[:500]]
    assert variants(texts[0], seed=5) == variants(texts[0], seed=5)
    first = [make_variant(t, random.Random(11)) for t in texts]
    again = [make_variant(t, random.Random(11)) for t in texts]
    other = [make_variant(t, random.Random(12)) for t in texts]
    assert first == again
    assert first != other


def test_a_number_is_sometimes_replaced_by_another_of_the_same_sort():
    text = "transfer 250 dollars to savings at 8:30 on the 3rd"
    seen = variants(text, count=300)
    amounts = {m for v in seen for m in re.findall(r"\b(\d+) dollars", v)}
    assert amounts - {"250"}, "the amount was never changed"
    assert all(len(a) == 3 for a in amounts), amounts  # a plausible size: as many digits
    minutes = {m for v in seen for m in re.findall(r":(\d+)", v)}
    assert minutes - {"30"} and all(int(m) < 60 for m in minutes), minutes
    days = {(int(n), s) for v in seen for n, s in re.findall(r"\b(\d+)(st|nd|rd|th)\b", v)}
    assert days - {(3, "rd")}, "the day was never changed"
    for number, suffix in days:  # a day of the month, spelled as an English ordinal
        assert 1 <= number <= 31
        english = "th" if number in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(number % 10)
        assert suffix == (english or "th"), (number, suffix)


def test_codes_that_contain_digits_are_not_numbers():
    for variant in variants("where is my 401k and my w2 form", count=300):
        assert set(re.findall(r"\S*\d\S*", variant)) <= {"401k", "w2"}, variant


@pytest.mark.parametrize("kind", ["city", "weekday", "dish", "currency", "person"])
def test_an_entity_is_sometimes_replaced_by_another_of_its_kind(kind):
    first, second = GAZETTEER[kind][:2]
    text = f"what about {first} and not the other thing"
    others = set(GAZETTEER[kind]) - {first}
    seen = variants(text, count=300)
    replaced = [v for v in seen if first not in v and any(o in v for o in others)]
    assert replaced, f"{first!r} was never replaced by another {kind}"


def test_entities_match_whole_words_whatever_the_case():
    others = [city for city in GAZETTEER["city"] if city != "paris"]
    titled = re.compile(r"\bFrom (?:" + "|".join(city.title() for city in others) + r")\b")
    assert any(titled.search(v) for v in variants("Flights From Paris To Somewhere", count=300))
    # "parish" contains "paris" but is not a city: it never becomes "<another city>h"
    inside = re.compile(r"(?:" + "|".join(others) + r")h\b")
    assert not any(inside.search(v) for v in variants("the parish hall is open late", count=300))
    # nor does "cribs" end with "ribs", a dish, become "c<another dish>"
    dishes = [dish for dish in GAZETTEER["dish"] if dish != "ribs"]
    glued = re.compile(r"\bc(?:" + "|".join(dishes) + r")\b")
    assert not any(glued.search(v) for v in variants("the baby cribs are sold out", count=300))


def test_a_phrase_of_several_words_is_replaced_whole():
    seen = variants("cheap flights to New York and chicken soup", count=400)
    cities = [city.title() for city in GAZETTEER["city"] if city != "new york"]
    assert any(re.search(r"\bto (?:" + "|".join(cities) + r")\b", v) for v in seen)
    assert not any(re.search(r"\b(?!New\b)[A-Z]\w* York\b", v) for v in seen)
    dishes = [dish for dish in GAZETTEER["dish"] if dish not in ("chicken", "chicken soup")]
    assert not any(re.search(r"\b(?:" + "|".join(dishes) + r") soup\b", v) for v in seen)


def test_every_operation_kind_fires():
    text = "please book a table for 4 in chicago on friday"
    seen = variants(text, count=500)
    words = len(text.split())
    assert any(len(v.split()) < words for v in seen), "no word was ever dropped"
    assert any(len(v.split()) > words for v in seen), "no filler was ever added"
    known = set(text.split()) | {w for f in FILLERS for w in f.split()}
    known |= {w for kind in GAZETTEER.values() for p in kind for w in p.split()}
    typos = {w for v in seen for w in v.split() if w not in known and not w.isdigit()}
    assert typos, "no typo was ever made"
    other_cities = [c for c in GAZETTEER["city"] if c != "chicago"]
    assert any(re.search(r"\bin (?:" + "|".join(other_cities) + r")\b", v) for v in seen)
    assert any(re.search(r"for [0-35-9] in", v) for v in seen), "the number was never changed"


def test_each_gazetteer_phrase_has_one_kind_and_each_kind_alternatives():
    phrases = [p for kind in GAZETTEER.values() for p in kind]
    assert len(phrases) == len(set(phrases))
    assert all(len(kind) >= 2 for kind in GAZETTEER.values())
    assert all(p == p.lower() for p in phrases)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tail_fraction": -0.1}, "tail_fraction"),
        ({"tail_fraction": 1.01}, "tail_fraction"),
        ({"head_exponent": 0.0}, "head_exponent must be positive"),
        ({"head_exponent": -1.0}, "head_exponent must be positive"),
    ],
)
def test_bad_query_logs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QueryLog(**kwargs)


def query_log_stream(clinc, length, tail=0.3, **kwargs):
    scenario = Scenario("shuffle", length, query_log=QueryLog(tail_fraction=tail), **kwargs)
    return list(replay(clinc, scenario))


def test_the_share_of_synthetic_items_is_the_tail_fraction(clinc):
    items = query_log_stream(clinc, 20_000, tail=0.3)
    share = sum(i.synthetic for i in items) / len(items)
    assert abs(share - 0.3) < 0.02
    texts = {e.text for e in clinc}
    assert all(i.example.text in texts for i in items if not i.synthetic)


def test_distinct_texts_keep_growing_with_the_stream(clinc):
    items = query_log_stream(clinc, 20_000, tail=0.3)
    distinct_5k = len({i.example.text for i in items[:5_000]})
    distinct_20k = len({i.example.text for i in items})
    # The tail alone brings about one new text per synthetic event.
    assert distinct_20k - distinct_5k > 0.8 * 0.3 * 15_000


def test_the_head_repeats_a_few_texts_per_intent(clinc):
    items = query_log_stream(clinc, 20_000, tail=0.3)
    head: dict[str, Counter] = {}
    for item in items:
        if not item.synthetic:
            head.setdefault(item.example.intent, Counter())[item.example.text] += 1
    busiest = sorted(head.values(), key=lambda c: -sum(c.values()))[:20]
    for counts in busiest:
        assert counts.most_common(1)[0][1] >= 5 * statistics.median(counts.values())
    # Without a query log, the same length of stream repeats no text that often.
    plain = Counter(i.example.text for i in replay(clinc, Scenario("shuffle", 20_000)))
    top_head = max(c.most_common(1)[0][1] for c in head.values())
    assert top_head > 3 * plain.most_common(1)[0][1]


def test_intents_and_labels_are_those_of_the_plain_replay(clinc):
    plain = list(replay(clinc, Scenario("shuffle", 5_000, unlabelled_fraction=0.3)))
    shaped = query_log_stream(clinc, 5_000, unlabelled_fraction=0.3)
    assert [i.example.intent for i in shaped] == [i.example.intent for i in plain]
    assert [i.labelled for i in shaped] == [i.labelled for i in plain]


def test_without_a_query_log_the_replay_is_unchanged(clinc):
    plain = list(replay(clinc, Scenario("shuffle", 3_000, seed=4)))
    explicit = list(replay(clinc, Scenario("shuffle", 3_000, seed=4, query_log=None)))
    assert explicit == plain
    assert not any(i.synthetic for i in plain)
    # the replay of one pass is still a permutation of the dataset
    one_pass = list(replay(clinc, Scenario("shuffle", len(clinc), seed=4)))
    assert Counter(i.example for i in one_pass) == Counter(clinc)


def test_new_domain_drift_holds_with_a_query_log(clinc):
    late = late_intents_of_domains(load_domains(), ["travel", "banking"])
    scenario = Scenario(
        "new-domain", 10_000, drift_at=4_000, late_intents=late, query_log=QueryLog(0.3)
    )
    items = list(replay(clinc, scenario))
    assert not late & {i.example.intent for i in items[:4_000]}
    assert late & {i.example.intent for i in items[4_000:]}
    assert any(i.synthetic and i.example.intent in late for i in items[4_000:])


def test_the_extremes_of_the_tail_fraction(clinc):
    assert all(i.synthetic for i in query_log_stream(clinc, 500, tail=1.0))
    assert not any(i.synthetic for i in query_log_stream(clinc, 500, tail=0.0))


def test_an_intent_without_rows_keeps_its_own_row():
    items = [StreamItem(Example("a lone text", "unknown"), labelled=True)]
    rows = [Example("some other text", "known")]
    shaped = list(apply_query_log(items, rows, QueryLog(tail_fraction=0.0), random.Random(0)))
    assert shaped == items
