"""TF-IDF of hashed n-grams, counted on several processes, so that the features of a large
history cost its texts' share of each core rather than one core for all of them."""

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

__all__ = ["PARALLEL_MIN_TEXTS", "HashedTfidfVectorizer"]

PARALLEL_MIN_TEXTS = 20_000
"""Fewer texts than this are counted in the calling process: starting workers and moving the
texts to them would cost more than it saves (and serving scores one text at a time)."""

# Texts per chunk handed to a worker: many small chunks even out the workers' work and keep each
# worker's memory to one chunk's n-grams, whatever the number of texts.
_CHUNK_TEXTS = 5_000


class HashedTfidfVectorizer(TransformerMixin, BaseEstimator):
    """`TfidfVectorizer(sublinear_tf=True, min_df=min_df)`, with n-grams hashed instead of
    looked up in a vocabulary built on one core.

    Texts are counted by a `HashingVectorizer` in chunks on `n_jobs` processes (hashing needs
    no shared vocabulary, so the chunks are independent); `fit` then keeps the hashed columns
    that occur in at least `min_df` texts and learns their inverse document frequencies. The
    output is TF-IDF (1 + log(count), smoothed idf, rows of unit l2 norm) over the kept
    columns only, so the model behind it stays as small as a vocabulary would make it. Up to
    hash collisions, which `n_features` keeps rare, it is `TfidfVectorizer`'s output with its
    columns in another order.

    Parameters
    ----------
    analyzer
        "word", "char" or "char_wb", as for `TfidfVectorizer`.
    ngram_range
        Lower and upper n-gram sizes.
    token_pattern
        How words are found, for `analyzer="word"`.
    min_df
        Minimum number of texts a kept n-gram occurs in.
    n_features
        Size of the hashing space, before `min_df` keeps its occupied columns.
    n_jobs
        Processes counting the texts of `fit` and of large `transform` calls.

    Attributes
    ----------
    columns_
        The hashed columns kept, ascending: column j of the output is hashed column
        `columns_[j]`.
    idf_
        Inverse document frequency of each kept column.

    Examples
    --------
    >>> texts = ["book a flight", "book a table", "play a song"]
    >>> vectorizer = HashedTfidfVectorizer(min_df=2).fit(texts)
    >>> len(vectorizer.columns_)  # "book" alone is in two texts ("a" is too short a word)
    1
    >>> vectorizer.transform(["book it", "play"]).toarray().tolist()
    [[1.0], [0.0]]
    """

    def __init__(
        self,
        *,
        analyzer: str = "word",
        ngram_range: tuple[int, ...] = (1, 1),
        token_pattern: str = r"(?u)\b\w\w+\b",
        min_df: int = 1,
        n_features: int = 2**22,
        n_jobs: int | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.ngram_range = ngram_range
        self.token_pattern = token_pattern
        self.min_df = min_df
        self.n_features = n_features
        self.n_jobs = n_jobs

    def fit(self, X, y=None) -> "HashedTfidfVectorizer":
        """Learn the kept columns and their idf from the texts `X`."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None) -> sp.csr_matrix:
        """Learn the kept columns and their idf, and return the TF-IDF of `X`."""
        if isinstance(X, str):
            raise ValueError("expected an iterable of texts; got a single string")
        counts = self._counts(X)
        document_frequency = np.bincount(counts.indices, minlength=self.n_features)
        self.columns_ = np.flatnonzero(document_frequency >= self.min_df)
        ratio = (1 + counts.shape[0]) / (1 + document_frequency[self.columns_])
        self.idf_ = np.log(ratio) + 1
        return self._tfidf(counts)

    def transform(self, X) -> sp.csr_matrix:
        """The TF-IDF of the texts `X` over the kept columns."""
        check_is_fitted(self)
        if isinstance(X, str):
            raise ValueError("expected an iterable of texts; got a single string")
        return self._tfidf(self._counts(X))

    def _counts(self, X) -> sp.csr_matrix:
        """Hashed n-gram counts of the texts, in chunks on `n_jobs` processes if there are many."""
        hasher = HashingVectorizer(
            analyzer=self.analyzer,
            ngram_range=tuple(self.ngram_range),
            token_pattern=self.token_pattern,
            n_features=self.n_features,
            alternate_sign=False,
            norm=None,
            dtype=np.float32,
        )
        texts = np.asarray(X, dtype=object)
        n_jobs = self.n_jobs or 1
        if n_jobs == 1 or len(texts) < PARALLEL_MIN_TEXTS:
            return hasher.transform(texts)
        chunks = np.array_split(texts, max(n_jobs, -(-len(texts) // _CHUNK_TEXTS)))
        parts = Parallel(n_jobs=n_jobs)(delayed(hasher.transform)(chunk) for chunk in chunks)
        return sp.vstack(parts, format="csr")

    def _tfidf(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Sublinear TF-IDF of the kept columns of `counts`, rows normalised."""
        position = np.searchsorted(self.columns_, counts.indices)
        inside = position < len(self.columns_)
        kept = np.zeros(len(position), dtype=bool)
        kept[inside] = self.columns_[position[inside]] == counts.indices[inside]
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[kept]
        columns = position[kept]
        data = (1 + np.log(counts.data[kept].astype(np.float64))) * self.idf_[columns]
        indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=counts.shape[0]), out=indptr[1:])
        shape = (counts.shape[0], len(self.columns_))
        return normalize(sp.csr_matrix((data, columns, indptr), shape=shape))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags
