"""Other models that run the whole pipeline by configuration alone, beside the tuned defaults.

Each is a factory for `SPEED_MODEL` / `BATCH_MODEL` (for example
`SPEED_MODEL=models.alternatives:river_naive_bayes`). They are the plain choices an engineer
would try first, kept as River and scikit-learn build them, so that `lambda-ml evaluate` can
compare the project's own models against them on the same stream.
"""

from river import compose, feature_extraction, linear_model, naive_bayes, optim
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC


def river_naive_bayes(alpha: float = 0.1) -> compose.Pipeline:
    """River's own bag of words and multinomial naive Bayes (it has `predict_proba_many`)."""
    return compose.Pipeline(
        feature_extraction.BagOfWords(on="text", lowercase=True),
        naive_bayes.MultinomialNB(alpha=alpha),
    )


def river_softmax(learning_rate: float = 0.5) -> compose.Pipeline:
    """River's TF-IDF and softmax regression, learnt by SGD (no vectorised `predict_proba`)."""
    return compose.Pipeline(
        feature_extraction.TFIDF(on="text", lowercase=True),
        linear_model.SoftmaxRegression(optimizer=optim.SGD(learning_rate)),
    )


def tfidf_logistic(C: float = 10.0, max_iter: int = 1000) -> Pipeline:
    """Word TF-IDF and multinomial logistic regression: probabilities of its own."""
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))),
            ("logistic", LogisticRegression(C=C, max_iter=max_iter)),
        ]
    )


def linear_svc(C: float = 1.0) -> Pipeline:
    """Word TF-IDF and a linear SVM: margins only, so the batch layer calibrates it."""
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))),
            ("svm", LinearSVC(C=C)),
        ]
    )
