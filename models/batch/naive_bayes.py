"""Multinomial naive Bayes laid out for scoring one text at a time."""

import numpy as np
from sklearn.naive_bayes import MultinomialNB

__all__ = ["ColumnMajorMultinomialNB"]


class ColumnMajorMultinomialNB(MultinomialNB):
    """`MultinomialNB` with its log probabilities stored column-major after `fit`.

    Scoring computes `X @ feature_log_prob_.T`; with the default row-major layout scipy copies
    the whole (classes x features) matrix on every call, which dominates the cost of scoring one
    text. Parameters, values and the rest of the API are `MultinomialNB`'s.

    Attributes
    ----------
    feature_log_prob_ : numpy.ndarray
        As `MultinomialNB`'s, of shape (n_classes, n_features), in Fortran order.
    """

    feature_log_prob_: np.ndarray

    def fit(self, X, y, sample_weight=None) -> "ColumnMajorMultinomialNB":
        super().fit(X, y, sample_weight=sample_weight)
        self.feature_log_prob_ = np.asfortranarray(self.feature_log_prob_)
        return self
