"""The speed layer's online intent classifier.

A River `BagOfWords | MultinomialNB` loop slows down as intents accumulate, because it scores
every class in pure Python. `HashedTextNB` keeps the same estimator API but hashes word n-grams
into a fixed space, stores per-class counts in a dense float32 matrix, and scores all classes
of one input or of many with one gather and one weighted sum. The River loop it is measured
against lives in `bench/river_baseline.py`.
"""

from __future__ import annotations

import math
import numbers
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any

import numpy as np
from river import base
from scipy import sparse

__all__ = ["SPEED_TOKEN_PATTERN", "HashedTextNB", "Query", "build_speed_model"]

SPEED_TOKEN_PATTERN = r"(?u)\b\w[\w\-]+\b"
"""The speed model's default tokens, River's `BagOfWords` default: words of two or more
characters, hyphens allowed. (The batch model has its own,
`models.batch.recipe.BATCH_TOKEN_PATTERN`.)"""

# Bounds for the online temperature, so a pathological stream cannot make it collapse or blow up.
_MIN_LOG_TEMPERATURE = math.log(0.05)
_MAX_LOG_TEMPERATURE = math.log(100.0)
# CRC seed for numeric feature names, so that a key never hashes like a word of the same spelling.
_NUMERIC_SEED = 0x5BD1E995

Query = Mapping[Any, Any] | str
"""A River feature dict, or the text alone."""
# Sorted buckets, their values (all 1 for text alone), and the values' sum.
Features = tuple[np.ndarray, np.ndarray, float]
# What an input without features is scored on: one bucket, of weight 0.
_NO_FEATURES: Features = (np.zeros(1, dtype=np.int64), np.zeros(1), 0.0)


class HashedTextNB(base.Classifier):
    """Multinomial naive Bayes on hashed word n-grams, fast with many classes.

    `x` is a River feature dict: every string value is lowercased, tokenised with
    `token_pattern` and turned into word n-grams of length 1 to `ngram_max`, each counted once
    (presence), all string fields sharing one vocabulary; numeric values are non-negative counts
    under their key's name. A bare `str` is accepted as shorthand for `{"text": x}`. Pass only
    the fields to learn from: an id or a locale would become words too.

    N-grams are hashed (CRC-32, stable across processes) into `n_features` buckets, so a growing
    vocabulary never grows the hash space. Only buckets seen in training get a row of per-class
    counts; a new intent adds a column. Both dimensions grow geometrically, so growth is amortised.

    Scoring is multinomial naive Bayes with additive smoothing `alpha`. With `idf`, each
    feature's weight is scaled by its smoothed inverse document frequency (then rescaled to keep
    the total weight), which down-weights words such as "what" or "my" that every intent uses.
    Naive Bayes is overconfident, so probabilities are `softmax(log-likelihood / T)`: the
    temperature `T` starts at `temperature` and follows the stream by one SGD step on the log
    loss of each labelled event, at rate `temperature_lr` on `log T` (0 keeps it fixed). The
    temperature never changes which class wins.

    Every prediction method computes its numbers in `predict_proba_matrix`'s vectorised code, so
    one input scored alone or in a batch gets the same probabilities. `learn_one` right after a
    prediction of the same `x` (a prequential loop) reuses that prediction's work. Everything is
    deterministic: the same events in the same order give bit-identical probabilities, including
    across a pickle round trip. Pickles store only the non-zero counts.

    The defaults were tuned on CLINC150; see `bench/results/model_notes.md`.

    Parameters
    ----------
    alpha
        Additive smoothing of the per-class n-gram counts. River's default of 1 drowns the few
        words of a query, hence a smaller default.
    ngram_max
        Longest word n-gram: 1 is unigrams, 2 adds bigrams.
    n_features
        Number of hash buckets. Counts take 4 bytes per seen bucket and class, plus spare
        capacity, and never more than `n_features` rows.
    idf
        Weight features by inverse document frequency when scoring.
    temperature
        Initial softmax temperature applied to the joint log-likelihoods.
    temperature_lr
        Learning rate of the online temperature, on a log scale.
    token_pattern
        Regular expression that finds the tokens in the text.
    lowercase
        Lowercase text before tokenising.

    Attributes
    ----------
    classes
        Labels learnt so far, in order of first appearance: the order of every probability
        array this model returns.

    Examples
    --------
    >>> model = HashedTextNB()
    >>> model.predict_proba_one({"text": "wake me up at 7"})
    {}
    >>> model.learn_one({"text": "set an alarm for 7 am"}, "alarm")
    >>> model.learn_one({"text": "what is the weather like"}, "weather")
    >>> model.predict_one({"text": "an alarm at 6 please"})
    'alarm'
    >>> proba = model.predict_proba_one("weather tomorrow")
    >>> max(proba, key=proba.get), round(sum(proba.values()), 6)
    ('weather', 1.0)
    >>> classes, matrix = model.predict_proba_matrix(["weather tomorrow", "alarm at 6"])
    >>> classes, matrix.shape, matrix[0].tolist() == list(proba.values())
    (['alarm', 'weather'], (2, 2), True)
    """

    def __init__(
        self,
        alpha: float = 0.1,
        ngram_max: int = 1,
        n_features: int = 2**18,
        idf: bool = True,
        temperature: float = 1.0,
        temperature_lr: float = 0.01,
        token_pattern: str = SPEED_TOKEN_PATTERN,
        lowercase: bool = True,
    ) -> None:
        self.alpha = alpha
        self.ngram_max = ngram_max
        self.n_features = n_features
        self.idf = idf
        self.temperature = temperature
        self.temperature_lr = temperature_lr
        self.token_pattern = token_pattern
        self.lowercase = lowercase

        self._labels: list[base.typing.ClfTarget] = []
        self._label_index: dict[base.typing.ClfTarget, int] = {}
        self._n_learnt = 0
        self._log_temperature = math.log(temperature)
        # Bucket -> row of `_counts`. Row 0 stays all zeros and stands for every bucket never
        # seen in training, so scoring gathers rows without masking out the unseen ones.
        self._row_of_bucket = np.zeros(n_features, dtype=np.int32)
        self._n_rows = 1
        self._counts = np.zeros((1024, 8), dtype=np.float32)  # (rows, classes), spare capacity
        self._class_mass = np.zeros(8)  # total feature weight learnt per class
        self._class_events = np.zeros(8)  # events learnt per class
        self._init_transient()

    def _init_transient(self) -> None:
        """Set up what is rebuilt rather than pickled: the regex and the last scored input."""
        self._regex = re.compile(self.token_pattern)
        # (input key, features, tempered log-likelihoods, probabilities) of the last input scored
        # since the last learn_one: a prequential loop's learn_one reuses that work.
        self._last: tuple[Any, Features, np.ndarray, np.ndarray] | None = None

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"ngram_max": 2}

    def _more_tags(self) -> set[str]:
        return {base.tags.TEXT_INPUT, base.tags.POSITIVE_INPUT}

    @property
    def _multiclass(self) -> bool:
        return True

    @property
    def classes(self) -> list[base.typing.ClfTarget]:
        """Labels learnt so far, in order of first appearance."""
        return list(self._labels)

    def learn_one(self, x: Query, y: base.typing.ClfTarget) -> None:
        """Learn one labelled input: add its features to class `y`'s counts (a new label adds a
        class), after one temperature step on its log loss when `y` is already known.

        Parameters
        ----------
        x
            A feature dict, or the text alone.
        y
            Its label.
        """
        label = self._label_index.get(y)
        if label is None:
            features = self._features(x)
            label = self._add_label(y)
        elif self.temperature_lr:
            features, z, proba = self._score(x)
            self._step_temperature(z, proba, label)
        else:
            features = self._features(x)
        buckets, values, mass = features
        rows = self._rows_for(buckets)
        self._counts[rows, label] += values
        self._class_mass[label] += mass
        self._class_events[label] += 1.0
        self._n_learnt += 1
        self._last = None  # it was scored against the state just changed

    def predict_proba_one(self, x: Query, **kwargs: Any) -> dict[base.typing.ClfTarget, float]:
        """Probability of each class for one input: `predict_proba_array` as a dict.

        Parameters
        ----------
        x
            A feature dict, or the text alone.

        Returns
        -------
        dict
            Class -> probability, in the order of `classes`; empty before any learning.
        """
        classes, proba = self.predict_proba_array(x)
        return dict(zip(classes, proba.tolist(), strict=True))

    def predict_proba_array(self, x: Query) -> tuple[tuple[base.typing.ClfTarget, ...], np.ndarray]:
        """Classes and probabilities for one input, without building a dict.

        The row `predict_proba_matrix([x])` gives, memoised so that a `learn_one(x, y)` right
        after reuses the work.

        Parameters
        ----------
        x
            A feature dict, or the text alone.

        Returns
        -------
        classes : tuple
            `classes`, as a tuple.
        probabilities : numpy.ndarray
            One probability per class, in that order (read-only: it is the memo).
        """
        if not self._labels:
            return (), np.zeros(0)
        return tuple(self._labels), self._score(x)[2]

    def predict_proba_matrix(
        self, xs: Sequence[Query]
    ) -> tuple[list[base.typing.ClfTarget], np.ndarray]:
        """Classes and probabilities for many inputs at once.

        One gather, one segmented sum and one softmax for all inputs, instead of one per input.
        The memo used by `learn_one` is left untouched. (Not River's `predict_proba_many`,
        which takes and returns DataFrames.)

        Parameters
        ----------
        xs
            Feature dicts or texts.

        Returns
        -------
        classes : list
            `classes`.
        probabilities : numpy.ndarray
            Shape `(len(xs), len(classes))`: row i is `predict_proba_one(xs[i])`'s values.
        """
        classes = list(self._labels)
        if not classes or not xs:
            return classes, np.zeros((len(xs), len(classes)))
        return classes, self._probabilities([self._features(x) for x in xs])[1]

    def predict_one(self, x: Query, **kwargs: Any) -> base.typing.ClfTarget | None:
        """The most probable class of one input, or None before any learning."""
        if not self._labels:
            return None
        return self._labels[int(np.argmax(self._score(x)[2]))]

    def _features(self, x: Query) -> Features:
        """Sorted unique buckets, their values and the values' sum (sorted: sums ignore order)."""
        if isinstance(x, str):
            return _binary_features(self._text_buckets(x))
        buckets: set[int] = set()
        numeric: dict[int, float] = {}
        for name, value in x.items():
            if isinstance(value, str):
                buckets.update(self._text_buckets(value))
            elif isinstance(value, numbers.Real) and value:
                if value < 0:
                    raise ValueError(f"feature {name!r} is negative; counts must be >= 0")
                bucket = zlib.crc32(str(name).encode(), _NUMERIC_SEED) % self.n_features
                numeric[bucket] = numeric.get(bucket, 0.0) + float(value)
        if not numeric:
            return _binary_features(buckets)
        numeric.update(dict.fromkeys(buckets - numeric.keys(), 1.0))
        keys = sorted(numeric)
        values = [numeric[key] for key in keys]
        return np.array(keys, dtype=np.int64), np.array(values), math.fsum(values)

    def _text_buckets(self, text: str) -> set[int]:
        """Hash each word n-gram: the CRC-32 of its tokens joined by spaces, chained per token."""
        tokens = self._regex.findall(text.lower() if self.lowercase else text)
        encoded = [token.encode() for token in tokens]
        grams = [zlib.crc32(token) for token in encoded]
        hashes = list(grams)
        for n in range(1, self.ngram_max):
            grams = [
                zlib.crc32(b" " + token, h)
                for h, token in zip(grams[:-1], encoded[n:], strict=True)
            ]
            hashes += grams
        size = self.n_features
        return {h % size for h in hashes}

    def _score(self, x: Query) -> tuple[Features, np.ndarray, np.ndarray]:
        """Features, tempered log-likelihoods and probabilities, memoised until the next learn."""
        key = x if isinstance(x, str) else tuple(x.items())
        if self._last is not None and self._last[0] == key:
            return self._last[1:]
        features = self._features(x)
        z, proba = self._probabilities([features])
        self._last = (key, features, z[0], proba[0])
        return features, z[0], proba[0]

    def _probabilities(self, features: Sequence[Features]) -> tuple[np.ndarray, np.ndarray]:
        """Tempered log-likelihoods z and softmax(z), one row per input, one column per class.

        The only implementation of the scores: z is (log P(class) + sum_f w_f log P(f | class))
        / T, up to a constant per row shared by all classes.
        """
        # An input without features is scored on one bucket of weight 0: every input has a row.
        features = [f if len(f[0]) else _NO_FEATURES for f in features]
        n, n_classes = len(features), len(self._labels)
        buckets = np.concatenate([f[0] for f in features])
        weights = np.concatenate([f[1] for f in features])
        mass = np.fromiter((f[2] for f in features), dtype=np.float64, count=n)
        counts = self._counts[self._row_of_bucket[buckets], :n_classes]
        if self.idf:
            # A text feature adds 1 to one class per event, so its row sums to its document
            # frequency; a numeric feature's row sums to its learnt weight, which stands in.
            doc_freq = counts.sum(axis=1, dtype=np.float64)
            weights *= math.log(self._n_learnt + 1.0) + 1.0 - np.log1p(doc_freq)
        # Per input, the sum of w_f log(1 + count / alpha) and, in the last column, of w_f. The
        # log alpha of log(count + alpha) is the same for every class, so it is left out, and
        # the all-zero row of the unseen buckets adds nothing. Each input's sum covers its own
        # rows only, so it does not depend on the other inputs scored with it.
        terms = np.empty((len(buckets), n_classes + 1))
        log_counts = np.log1p(counts * np.float32(1.0 / self.alpha))
        np.multiply(log_counts, weights[:, None], out=terms[:, :-1])
        terms[:, -1] = weights
        starts = list(accumulate((len(f[0]) for f in features[:-1]), initial=0))
        sums = np.add.reduceat(terms, starts, axis=0)
        jll = sums[:, :-1]
        if self.idf:  # rescale the IDF-weighted features to the input's total weight
            jll *= np.divide(mass, sums[:, -1], out=np.zeros(n), where=mass != 0)[:, None]
        jll -= mass[:, None] * np.log(
            self._class_mass[:n_classes] + self.alpha * (self._n_rows - 1)
        )
        jll += np.log(self._class_events[:n_classes])
        z = jll / math.exp(self._log_temperature)
        proba = np.exp(z - z.max(axis=1, keepdims=True))
        proba /= proba.sum(axis=1, keepdims=True)
        return z, proba

    def _step_temperature(self, z: np.ndarray, proba: np.ndarray, label: int) -> None:
        """One SGD step on log T of the log loss -log softmax(z)[label], where z = jll / T."""
        gradient = float(z[label] - proba @ z)
        log_t = self._log_temperature - self.temperature_lr * gradient
        self._log_temperature = min(max(log_t, _MIN_LOG_TEMPERATURE), _MAX_LOG_TEMPERATURE)

    def _add_label(self, y: base.typing.ClfTarget) -> int:
        label = len(self._labels)
        if label == self._counts.shape[1]:
            capacity = label + 1 + label // 2
            self._counts = _grow(self._counts, self._counts.shape[0], capacity)
            self._class_mass = _grow(self._class_mass, capacity)
            self._class_events = _grow(self._class_events, capacity)
        self._labels.append(y)
        self._label_index[y] = label
        return label

    def _rows_for(self, buckets: np.ndarray) -> np.ndarray:
        """Rows of the given buckets, allocating rows (in bucket order) for unseen ones."""
        rows = self._row_of_bucket[buckets]
        if rows.all():
            return rows
        new = rows == 0
        needed = self._n_rows + int(np.count_nonzero(new))
        if needed > self._counts.shape[0]:
            capacity = min(max(needed, self._counts.shape[0] * 2), self.n_features + 1)
            self._counts = _grow(self._counts, capacity, self._counts.shape[1])
        fresh = np.arange(self._n_rows, needed, dtype=np.int32)
        self._row_of_bucket[buckets[new]] = fresh
        rows[new] = fresh
        self._n_rows = needed
        return rows

    def __add__(self, other: HashedTextNB) -> HashedTextNB:
        """The model of both models' events together: `a + b` learnt what `a` and `b` did.

        Counts, class totals and events add up exactly, so the sum of per-partition models
        equals, count for count, one model that learnt every event (`count_table` compares
        them). The online temperature is not a count: the sum takes the event-weighted mean of
        the parts' log temperatures. Labels keep `self`'s order, then `other`'s new ones.

        >>> a, b, both = build_speed_model(), build_speed_model(), build_speed_model()
        >>> for model, text, intent in ((a, "wake me at six", "alarm"), (b, "play jazz", "music")):
        ...     model.learn_one({"text": text}, intent)
        ...     both.learn_one({"text": text}, intent)
        >>> (a + b).count_table() == both.count_table()
        True
        """
        if not isinstance(other, HashedTextNB):
            return NotImplemented
        if self._get_params() != other._get_params():
            raise ValueError("only models with the same parameters can be added")
        merged = self.clone()
        for part in (self, other):
            merged._absorb(part)
        learnt = self._n_learnt + other._n_learnt
        if learnt:
            merged._log_temperature = (
                self._n_learnt * self._log_temperature + other._n_learnt * other._log_temperature
            ) / learnt
        return merged

    def _absorb(self, part: HashedTextNB) -> None:
        """Add `part`'s counts to this model's, class by class and bucket by bucket."""
        labels = [
            index if (index := self._label_index.get(y)) is not None else self._add_label(y)
            for y in part._labels
        ]
        buckets = np.flatnonzero(part._row_of_bucket)
        if len(buckets):
            rows = self._rows_for(buckets)
            own = np.asarray(labels, dtype=np.intp)
            counts = part._counts[part._row_of_bucket[buckets], : len(labels)]
            self._counts[rows[:, None], own[None, :]] += counts
        n = len(labels)
        np.add.at(self._class_mass, labels, part._class_mass[:n])
        np.add.at(self._class_events, labels, part._class_events[:n])
        self._n_learnt += part._n_learnt
        self._last = None

    def count_table(self) -> dict[str, Any]:
        """What the model learnt, independent of the order it learnt it in: per label its
        events and feature mass, and per (bucket, label) its count."""
        n = len(self._labels)
        buckets = np.flatnonzero(self._row_of_bucket)
        counts = self._counts[self._row_of_bucket[buckets], :n]
        cells = {
            (int(bucket), self._labels[label]): float(counts[i, label])
            for i, bucket in enumerate(buckets.tolist())
            for label in np.flatnonzero(counts[i]).tolist()
        }
        return {
            "events": self._n_learnt,
            "class_events": dict(zip(self._labels, self._class_events[:n].tolist(), strict=True)),
            "class_mass": dict(zip(self._labels, self._class_mass[:n].tolist(), strict=True)),
            "counts": cells,
        }

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without spare capacity, the bucket table, or the counts' zeros."""
        state = self.__dict__.copy()
        del state["_regex"], state["_last"]
        n_rows, n_classes = self._n_rows, len(self._labels)
        buckets = np.flatnonzero(self._row_of_bucket)
        state["_row_of_bucket"] = buckets[np.argsort(self._row_of_bucket[buckets])].astype(np.int32)
        state["_counts"] = sparse.csr_array(self._counts[:n_rows, :n_classes])
        state["_class_mass"] = self._class_mass[:n_classes].copy()
        state["_class_events"] = self._class_events[:n_classes].copy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        buckets = state["_row_of_bucket"]  # the bucket of each row from 1 on
        state["_row_of_bucket"] = np.zeros(state["n_features"], dtype=np.int32)
        state["_row_of_bucket"][buckets] = np.arange(1, len(buckets) + 1, dtype=np.int32)
        state["_counts"] = state["_counts"].toarray()
        self.__dict__.update(state)
        self._init_transient()


def _binary_features(buckets: set[int]) -> Features:
    """Features of a text alone: each bucket present once."""
    keys = np.fromiter(buckets, dtype=np.int64, count=len(buckets))
    keys.sort()
    return keys, np.ones(len(keys)), float(len(keys))


def _grow(array: np.ndarray, *shape: int) -> np.ndarray:
    """Copy `array` into the top-left corner of a zero array of a larger `shape`."""
    grown = np.zeros(shape, dtype=array.dtype)
    grown[tuple(slice(0, n) for n in array.shape)] = array
    return grown


def build_speed_model(**params: Any) -> HashedTextNB:
    """Build the speed layer's model.

    Parameters
    ----------
    **params
        `HashedTextNB` parameters to override; the others keep the defaults tuned on CLINC150.

    Returns
    -------
    HashedTextNB
        The model, unfitted.

    Examples
    --------
    >>> build_speed_model(alpha=0.5)
    HashedTextNB (
      alpha=0.5
      ngram_max=1
      n_features=262144
      idf=True
      temperature=1.
      temperature_lr=0.01
      token_pattern="(?u)\\b\\w[\\w\\-]+\\b"
      lowercase=True
    )
    """
    return HashedTextNB(**params)
