"""A replay shaped like a query log: a Zipf head of popular texts and a long tail of variants.

A dataset replayed as it is repeats every text exactly as often as the dataset holds it, so the
count of distinct texts stops growing once the dataset is exhausted. A real query log does not
look like that: a few phrasings of each request dominate and repeat, and a long tail of
phrasings is seen about once. `apply_query_log` reshapes a scenario's stream that way. The
scenario still decides which intent comes next (and so the drift); the query log only decides
the text: a popular row of that intent (the head), or a freshly generated variant of the
scenario's row (the tail, flagged `synthetic`).
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import TYPE_CHECKING

from streams.dataset import Example

if TYPE_CHECKING:  # streams.scenarios imports this module; only the type is needed here
    from streams.scenarios import StreamItem

# Words and phrases that can stand in for one another without changing what is asked. Words that
# are also common ordinary words in the dataset ("bill", "may", "march", "visa", "pounds",
# "target", "united"...) are left out on purpose: replacing them would change the meaning.
GAZETTEER: dict[str, tuple[str, ...]] = {
    "city": (
        "new york", "los angeles", "chicago", "houston", "dallas", "boston", "seattle", "miami",
        "denver", "atlanta", "phoenix", "san francisco", "las vegas", "paris", "london", "tokyo",
        "berlin", "rome", "madrid", "toronto", "sydney", "orlando", "austin", "portland",
        "detroit", "philadelphia", "san diego", "nashville", "new orleans", "baltimore",
        "pittsburgh", "tampa", "dublin", "barcelona", "amsterdam", "vancouver", "honolulu",
        "singapore", "bangkok", "hong kong", "mexico city", "prague", "lisbon", "vienna",
    ),
    "us state": (
        "california", "texas", "florida", "new mexico", "ohio", "oregon", "nevada", "arizona",
        "colorado", "michigan", "illinois", "alaska", "hawaii", "utah", "new jersey",
    ),
    "country": (
        "mexico", "canada", "france", "italy", "germany", "spain", "japan", "china", "russia",
        "brazil", "india", "england", "australia", "ireland", "egypt", "greece", "thailand",
        "peru", "argentina", "cuba", "korea", "vietnam", "sweden", "norway", "portugal",
    ),
    "language": (
        "french", "spanish", "english", "italian", "chinese", "german", "japanese", "russian",
        "greek", "mandarin", "korean", "dutch", "swedish", "portuguese", "arabic", "hindi",
        "polish", "hebrew",
    ),
    "person": (
        "john", "bob", "steve", "joe", "chris", "tom", "kevin", "michael", "david", "lisa",
        "sam", "mary", "james", "dan", "ben", "sarah", "mike", "jake", "alice", "george", "paul",
        "jose", "jane", "peter", "laura", "tim", "jennifer", "susan", "amy", "nancy", "kate",
        "matt", "carlos", "jessica", "emily", "linda", "emma", "olivia", "rachel", "brian",
    ),
    "weekday": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "month": (
        "january", "february", "april", "june", "july", "august", "september", "october",
        "november", "december",
    ),
    "relative day": ("today", "tomorrow", "tonight", "this weekend", "next week"),
    "dish": (
        "chicken", "pizza", "bread", "cake", "pasta", "sushi", "chili", "spaghetti", "steak",
        "lasagna", "lobster", "tacos", "salad", "soup", "cookies", "brownies", "shrimp",
        "cheesecake", "hamburger", "apple pie", "meatloaf", "omelette", "burrito", "pancakes",
        "chocolate cake", "curry", "sandwich", "ribs", "gumbo", "chow mein", "enchiladas",
        "ramen", "salmon", "waffles", "mac and cheese", "fried rice", "pad thai", "chicken soup",
        "fried chicken", "banana bread", "risotto", "fajitas",
    ),
    "music artist": (
        "the beatles", "beatles", "elvis", "led zeppelin", "drake", "beyonce", "metallica",
        "nirvana", "radiohead", "taylor swift", "coldplay", "lady gaga", "katy perry",
        "bob dylan", "post malone", "green day", "the rolling stones", "pearl jam",
        "foo fighters", "adele", "eminem", "rihanna", "bruno mars", "ed sheeran", "shakira",
        "pink floyd", "billie eilish", "ariana grande", "frank sinatra", "johnny cash",
    ),
    "currency": (
        "dollars", "euros", "yen", "pesos", "rubles", "rupees", "yuan", "canadian dollars",
        "british pounds", "swiss francs", "australian dollars",
    ),
    "currency unit": ("dollar", "euro", "peso", "ruble", "rupee", "bitcoin"),
    "currency code": ("usd", "eur", "gbp", "jpy", "cad", "mxn", "aud", "chf"),
    "bank": (
        "chase", "bank of america", "wells fargo", "capital one", "citibank", "pnc", "td bank",
        "us bank", "usaa", "navy federal",
    ),
    "card network": ("mastercard", "amex", "american express", "diners club"),
    "airline": (
        "delta", "american airlines", "southwest", "jetblue", "alaska airlines", "lufthansa",
        "british airways", "air france", "emirates", "klm",
    ),
    "store": (
        "walmart", "costco", "safeway", "whole foods", "home depot", "kroger", "best buy",
        "walgreens", "trader joes",
    ),
}  # fmt: skip

FILLERS: tuple[str, ...] = (
    "um", "uh", "hey", "please", "can you", "i mean", "quickly", "right now", "so", "like",
    "ok", "hmm", "actually", "hey siri", "just", "you know", "real quick", "thanks",
)  # fmt: skip

_ENTRY = {
    phrase: (kind, i) for kind, phrases in GAZETTEER.items() for i, phrase in enumerate(phrases)
}


def _longest_phrases() -> dict[str, int]:
    """The most words of a gazetteer phrase starting with each word: entities are found by
    looking words up, much faster than with one regular expression of all the phrases."""
    longest: dict[str, int] = {}
    for phrase in _ENTRY:
        words = phrase.split()
        longest[words[0]] = max(longest.get(words[0], 0), len(words))
    return longest


_LONGEST = _longest_phrases()
_WORD = re.compile(r"\w+")
# A number standing alone ("5", "$500", "8:30", "3rd", "5pm"), not part of a code ("401k", "w2").
_NUMBER = re.compile(r"(?<![\w/-])(\d+)(st|nd|rd|th|am|pm)?(?![\w/-])", re.IGNORECASE)
_TRIES = 10


def _with_case_of(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    return replacement.title() if original[0].isupper() else replacement


def _entities(text: str) -> list[tuple[int, int]]:
    """Where gazetteer phrases stand in `text` as whole words, whatever the case; the longest
    phrase wins where several start ("chicken soup" over "chicken"); they do not overlap."""
    spans = [m.span() for m in _WORD.finditer(text)]
    found = []
    i = 0
    while i < len(spans):
        start, end = spans[i]
        longest = _LONGEST.get(text[start:end].lower(), 0)
        for n in range(min(longest, len(spans) - i), 0, -1):
            stop = spans[i + n - 1][1]
            if text[start:stop].lower() in _ENTRY:
                found.append((start, stop))
                i += n - 1
                break
        i += 1
    return found


def _substitute_entity(text: str, rng: random.Random) -> str | None:
    found = _entities(text)
    if not found:
        return None
    start, stop = found[rng.randrange(len(found))] if len(found) > 1 else found[0]
    original = text[start:stop]
    kind, index = _ENTRY[original.lower()]
    phrases = GAZETTEER[kind]
    other = rng.randrange(len(phrases) - 1)
    replacement = phrases[other + 1 if other >= index else other]
    return text[:start] + _with_case_of(original, replacement) + text[stop:]


def _ordinal(number: int) -> str:
    if 11 <= number % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")


def _new_number(match: re.Match[str], text: str, rng: random.Random) -> str:
    """Another number of the same sort: minutes stay minutes, days stay days, years stay years."""
    digits, suffix = match.group(1), match.group(2)
    old, start, end = int(digits), match.start(), match.end()
    if start > 0 and text[start - 1] == ":" and len(digits) == 2:
        return f"{(old + rng.randrange(1, 60)) % 60:02d}"
    if (suffix and suffix.lower() in ("am", "pm")) or text[end : end + 1] == ":":
        new = (old - 1 + rng.randrange(1, 12)) % 12 + 1 if 1 <= old <= 12 else rng.randrange(1, 13)
        return f"{new}{suffix or ''}"
    if suffix:
        new = (old - 1 + rng.randrange(1, 31)) % 31 + 1 if 1 <= old <= 31 else rng.randrange(1, 32)
        return f"{new}{_ordinal(new)}"
    if len(digits) == 4 and 1900 <= old <= 2099:
        return str(old + rng.choice((-3, -2, -1, 1, 2, 3)))
    if len(digits) == 1:
        return str((old - 1 + rng.randrange(1, 9)) % 9 + 1 if old else rng.randrange(1, 10))
    low = 10 ** (len(digits) - 1)
    span = 9 * low  # the numbers of as many digits: [low, 10 * low)
    return str(low + (old - low + rng.randrange(1, span)) % span)


def _substitute_number(text: str, rng: random.Random) -> str | None:
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    match = matches[rng.randrange(len(matches))] if len(matches) > 1 else matches[0]
    return text[: match.start()] + _new_number(match, text, rng) + text[match.end() :]


def _add_filler(text: str, rng: random.Random) -> str | None:
    words = text.split()
    filler = FILLERS[rng.randrange(len(FILLERS))]
    where = rng.randrange(3)
    if where == 0 or not words:
        words.insert(0, filler)
    elif where == 1 and len(words) > 1:
        words.insert(rng.randrange(1, len(words)), filler)
    else:
        last = words[-1]
        if len(last) > 1 and last[-1] in "?!.":  # "..., please?" rather than "...? please"
            words[-1:] = [last[:-1], filler + last[-1]]
        else:
            words.append(filler)
    return " ".join(words)


def _add_typo(text: str, rng: random.Random) -> str | None:
    words = text.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return None
    at = candidates[rng.randrange(len(candidates))]
    word = words[at]
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0 and word[i] != word[i + 1]:  # swap two adjacent letters
        word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == 1:  # double a letter
        word = word[:i] + word[i] + word[i:]
    else:  # drop a letter
        word = word[:i] + word[i + 1 :]
    words[at] = word
    return " ".join(words)


def _drop_word(text: str, rng: random.Random) -> str | None:
    words = text.split()
    if len(words) < 3:
        return None
    del words[rng.randrange(len(words))]
    return " ".join(words)


_Operation = Callable[[str, random.Random], str | None]
_OPERATIONS: tuple[_Operation, ...] = (
    _substitute_entity,
    _substitute_number,
    _add_filler,
    _add_typo,
    _drop_word,
)


def _one_operation(text: str, rng: random.Random) -> str:
    """One operation drawn uniformly among those that apply (adding a filler always does)."""
    remaining = list(_OPERATIONS)
    while remaining:
        result = remaining.pop(rng.randrange(len(remaining)))(text, rng)
        if result is not None:
            return result
    return text


def make_variant(text: str, rng: random.Random) -> str:
    """A plausible rewording of `text`, as another user might type the same request.

    Applies one to three operations drawn at random among those that apply: an entity replaced
    by another of its kind (see `GAZETTEER`), a number replaced by another of the same sort, a
    filler word, a typo, a word dropped. A text of two words or more always comes back changed
    and keeps at least two words. The result depends only on `text` and the state of `rng`.

    Parameters
    ----------
    text : str
        The text to reword, typically a dataset row.
    rng : random.Random
        The source of randomness; the same state gives the same variant.

    >>> variant = make_variant("book a flight to paris on friday", random.Random(7))
    >>> variant != "book a flight to paris on friday" and len(variant.split()) >= 2
    True
    >>> variant == make_variant("book a flight to paris on friday", random.Random(7))
    True
    """
    words = len(text.split())
    for _ in range(_TRIES):
        variant = text
        for _ in range(rng.randrange(1, 4)):
            variant = _one_operation(variant, rng)
        if words < 2 or (variant != text and len(variant.split()) >= 2):
            return variant
    return _add_filler(text, rng) or text  # a filler always changes the text


@dataclass(frozen=True)
class QueryLog:
    """The shape of a query log: a share of generated variants and the skew of the head.

    Parameters
    ----------
    tail_fraction : float
        The probability that an event's text is a freshly generated variant of the scenario's
        row (the long tail, seen about once, flagged synthetic). It is a probability, so it must
        lie in [0, 1]: 0 gives a head only, 1 a tail only.
    head_exponent : float
        The other events draw a row of the same intent with weight ``1 / rank**head_exponent``,
        each intent's rows being ranked by a seeded shuffle, so a few texts per intent dominate
        and repeat. It must be positive: 0 would make every row equally popular (no head), and a
        negative exponent would make the least popular rows the most frequent.

    >>> QueryLog(tail_fraction=1.5)
    Traceback (most recent call last):
    ...
    ValueError: tail_fraction is a probability and must lie in [0, 1]; got 1.5
    """

    tail_fraction: float = 0.3
    head_exponent: float = 1.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.tail_fraction <= 1.0:
            raise ValueError(
                f"tail_fraction is a probability and must lie in [0, 1]; got {self.tail_fraction}"
            )
        if not self.head_exponent > 0.0:
            raise ValueError(
                "head_exponent must be positive (0 would mean no popular head); "
                f"got {self.head_exponent}"
            )


class _Head:
    """Each intent's rows in a seeded popularity order, with cumulative Zipf weights to bisect."""

    def __init__(self, examples: Sequence[Example], exponent: float, rng: random.Random) -> None:
        by_intent: dict[str, list[Example]] = {}
        for example in examples:
            by_intent.setdefault(example.intent, []).append(example)
        self._rows: dict[str, list[Example]] = {}
        self._cumulative: dict[str, list[float]] = {}
        for intent in sorted(by_intent):
            rows = by_intent[intent]
            rng.shuffle(rows)
            self._rows[intent] = rows
            self._cumulative[intent] = list(
                accumulate(1.0 / rank**exponent for rank in range(1, len(rows) + 1))
            )
        self._rng = rng

    def draw(self, intent: str) -> Example | None:
        rows = self._rows.get(intent)
        if rows is None:
            return None
        cumulative = self._cumulative[intent]
        index = bisect_right(cumulative, self._rng.random() * cumulative[-1])
        return rows[min(index, len(rows) - 1)]


def apply_query_log(
    items: Iterable[StreamItem], examples: Sequence[Example], log: QueryLog, rng: random.Random
) -> Iterator[StreamItem]:
    """`items` with their texts reshaped by `log`; intents and `labelled` flags are kept.

    Parameters
    ----------
    items : Iterable[StreamItem]
        The scenario's stream: it decides the order of the intents, and so the drift.
    examples : Sequence[Example]
        The rows the head is drawn from. An item whose intent has no row here keeps its row.
    log : QueryLog
        The share of the tail and the skew of the head.
    rng : random.Random
        The source of randomness, distinct from the scenario's so that the order is unchanged.
    """
    head = _Head(examples, log.head_exponent, rng)
    for item in items:
        example = item.example
        if rng.random() < log.tail_fraction:
            variant = Example(make_variant(example.text, rng), example.intent, example.split)
            yield replace(item, example=variant, synthetic=True)
        else:
            popular = head.draw(example.intent) or example
            yield replace(item, example=popular, synthetic=False)
