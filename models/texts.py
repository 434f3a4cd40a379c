"""Which texts a model has trained on, so its scores can be split into first-seen and repeated.

Query texts repeat: a model scored on a text it trained on measures memory, not understanding.
Texts are compared after `normalise` (case and white space folded) by a stable 64-bit key, so
the same key means the same text in every process, and a holdout split by key puts every
repeat of a text on one side.
"""

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["TextMemory", "in_holdout", "normalise", "text_key", "text_keys"]


def normalise(text: str) -> str:
    """The text as compared for repeats: lowercased, runs of white space folded to one space.

    >>> normalise("  Book a  FLIGHT ")
    'book a flight'
    """
    return " ".join(text.lower().split())


def text_key(text: str) -> int:
    """A stable unsigned 64-bit key of the normalised text (BLAKE2b, so not salted per process).

    >>> text_key("Book a flight") == text_key("book  a flight")
    True
    """
    digest = hashlib.blake2b(normalise(text).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """`text_key` of each text, as a uint64 array."""
    return np.fromiter((text_key(t) for t in texts), dtype=np.uint64)


def in_holdout(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each text, by its key (`text_keys`), falls in the holdout: the top 32 bits of
    the key, read as a number in [0, 1), fall below `fraction`. Every repeat of a text, in any
    run, lands on the same side.

    >>> keys = text_keys(["a", "a", "b"])
    >>> in_holdout(keys, 0.0).tolist(), in_holdout(keys, 1.0).tolist()
    ([False, False, False], [True, True, True])
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the holdout fraction must lie in [0, 1]; got {fraction}")
    position = (np.asarray(keys, dtype=np.uint64) >> np.uint64(32)).astype(np.float64) / 2.0**32
    return position < fraction


class TextMemory:
    """The set of normalised texts a model has trained on.

    A frozen part (a sorted key array: 8 bytes a text, as a champion's training texts are
    shipped) plus texts added since (as the speed model learns). Pickles hold the keys only.

    Parameters
    ----------
    keys
        `text_keys` of the texts to start from, in any order, repeats allowed.

    Examples
    --------
    >>> memory = TextMemory.of(["set an alarm"])
    >>> memory.add("what is the weather")
    >>> "Set an  alarm" in memory, "what is the weather" in memory, "play jazz" in memory
    (True, True, False)
    >>> len(memory)
    2
    """

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._frozen = np.unique(np.asarray(keys if keys is not None else [], dtype=np.uint64))
        self._added: set[int] = set()

    @classmethod
    def of(cls, texts: Iterable[str]) -> "TextMemory":
        """The memory of `texts`."""
        return cls(text_keys(texts))

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.contains_key(text_key(text))

    def contains_key(self, key: int) -> bool:
        """Whether the text of `key` (`text_key`) is in the memory."""
        if key in self._added:
            return True
        at = int(np.searchsorted(self._frozen, np.uint64(key)))
        return at < len(self._frozen) and int(self._frozen[at]) == key

    def contains_keys(self, keys: np.ndarray) -> np.ndarray:
        """`contains_key` for each of `keys`, as a boolean array."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        if len(self._frozen):  # a binary search per key, not a sort of the whole memory
            at = np.minimum(np.searchsorted(self._frozen, keys), len(self._frozen) - 1)
            found = self._frozen[at] == keys
        if self._added:
            found |= np.fromiter((int(key) in self._added for key in keys), bool, len(keys))
        return found

    def add(self, text: str) -> None:
        """Remember `text`."""
        self.add_key(text_key(text))

    def add_key(self, key: int) -> None:
        """Remember the text of `key` (`text_key`)."""
        if not self.contains_key(key):
            self._added.add(key)

    def __len__(self) -> int:
        return len(self._added) + len(self._frozen)

    def keys(self) -> np.ndarray:
        """Every key, sorted: what `TextMemory(keys)` rebuilds the memory from."""
        added = np.fromiter(self._added, dtype=np.uint64, count=len(self._added))
        return np.unique(np.concatenate([self._frozen, added]))

    def __getstate__(self) -> dict:
        return {"keys": self.keys()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keys"])  # type: ignore[misc]


class TextMemories:
    """Several memories read as one, new texts going to the first: what the merged view of a
    consumer group's worker trained on (the event's partition's own memory, then the other
    partitions', live or from their snapshots), so a text another partition taught the view is
    counted as repeated, as it is for one worker that sees every partition.

    >>> own, other = TextMemory(), TextMemory.of(["play jazz"])
    >>> both = TextMemories(own, [other])
    >>> both.add_key(text_key("set an alarm"))
    >>> both.contains_key(text_key("play jazz")), "set an alarm" in own, len(other)
    (True, True, 1)
    """

    def __init__(self, own: TextMemory, others: list[TextMemory]) -> None:
        self.own = own
        self.others = others

    def contains_key(self, key: int) -> bool:
        return self.own.contains_key(key) or any(m.contains_key(key) for m in self.others)

    def add_key(self, key: int) -> None:
        self.own.add_key(key)
