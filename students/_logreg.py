"""TF-IDF + logistic regression: the cheapest student, trainable on hard or soft teacher labels.

Follows the scikit-learn estimator contract, so it drops into Pipelines, clone and cross-validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from sklearn.utils.validation import check_is_fitted


class TfidfLogReg(ClassifierMixin, BaseEstimator):
    """Word and character n-gram TF-IDF features into a multinomial logistic regression.

    Texts are turned into two TF-IDF blocks (sublinear tf, accents stripped, lower-cased, each
    row L2-normalised per block), stacked side by side: word n-grams, and character n-grams taken
    inside word boundaries (``analyzer="char_wb"``), which let misspellings and unseen word forms
    share features with the words they resemble. Set `char_ngram_range=None` for word n-grams
    only.

    Parameters
    ----------
    C : float, default=10.0
        Inverse regularisation strength of the logistic regression.
    max_features : int, default=50_000
        Vocabulary size cap, applied to each vectoriser separately (word and character), so the
        model has at most twice this many features.
    ngram_range : tuple[int, int], default=(1, 2)
        Word n-gram range.
    char_ngram_range : tuple[int, int] or None, default=(2, 5)
        Character n-gram range (within word boundaries); None turns character n-grams off.
    min_weight : float, default=0.01
        In `fit_soft`, class probabilities below this are dropped (and the rest kept as they
        are) so that many-class soft labels do not multiply the training set by the number of
        classes.
    max_iter : int, default=1000
        Iterations for the lbfgs solver.
    """

    def __init__(
        self,
        C: float = 10.0,
        max_features: int = 50_000,
        ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] | None = (2, 5),
        min_weight: float = 0.01,
        max_iter: int = 1000,
    ) -> None:
        self.C = C
        self.max_features = max_features
        self.ngram_range = ngram_range
        self.char_ngram_range = char_ngram_range
        self.min_weight = min_weight
        self.max_iter = max_iter

    def _vectoriser(self) -> TfidfVectorizer | FeatureUnion:
        common = dict(
            max_features=self.max_features, sublinear_tf=True, min_df=1, strip_accents="unicode"
        )
        words = TfidfVectorizer(ngram_range=self.ngram_range, **common)
        if self.char_ngram_range is None:
            return words
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngram_range, **common)
        return FeatureUnion([("word", words), ("char", chars)])

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Fit on texts `X` and hard labels `y`."""
        texts = _texts(X)
        y = np.asarray(y)
        if len(texts) != len(y):
            raise ValueError(f"X has {len(texts)} texts but y has {len(y)} labels")
        self.vectoriser_ = self._vectoriser()
        features = self.vectoriser_.fit_transform(texts)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.model_.fit(features, y, sample_weight=sample_weight)
        self.classes_ = self.model_.classes_
        self._columns_: np.ndarray | None = None
        return self

    def fit_soft(self, X: Any, proba: Any, classes: Any) -> Self:
        """Fit on the teacher's probabilities: each text appears once per class it gives weight
        to, weighted by that probability, so the multinomial loss is the cross-entropy with the
        teacher's distribution."""
        texts = _texts(X)
        proba = np.asarray(proba, dtype=float)
        classes = np.asarray(classes)
        if proba.shape != (len(texts), len(classes)):
            raise ValueError(
                f"proba has shape {proba.shape}, expected ({len(texts)}, {len(classes)})"
            )
        rows, cols = np.nonzero(proba >= self.min_weight)
        self.vectoriser_ = self._vectoriser()
        features = self.vectoriser_.fit_transform(texts)[rows]
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.model_.fit(features, classes[cols], sample_weight=proba[rows, cols])
        # classes the teacher never favoured still get a (zero) column, so columns follow `classes`
        self.classes_ = classes
        self._columns_ = np.array(
            [
                np.flatnonzero(self.model_.classes_ == c)[0] if c in self.model_.classes_ else -1
                for c in classes
            ]
        )
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        raw: np.ndarray = self.model_.predict_proba(self.vectoriser_.transform(_texts(X)))
        columns = getattr(self, "_columns_", None)
        if columns is None:
            return raw
        out = np.zeros((raw.shape[0], len(self.classes_)))
        present = columns >= 0
        out[:, present] = raw[:, columns[present]]
        return out

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path, compress=3)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        model = joblib.load(path)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def _texts(X: Any) -> list[str]:
    if isinstance(X, str):
        raise ValueError("X must be a sequence of texts, not a single string")
    return [str(x) for x in X]


class TfidfLogRegMultiLabel(TfidfLogReg):
    """One-vs-rest TF-IDF logistic regressions over shared features, for multi-label tasks.

    `fit_soft(X, proba, classes)` takes an independent probability per label (each row of
    `proba` need not sum to 1): each label's model sees every text twice, as "applies" weighted
    by p and as "does not" weighted by 1 - p. `predict_proba` returns P(applies) per label,
    columns following `classes_`. Parameters as for `TfidfLogReg`.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Fit on texts `X` and a 0/1 indicator matrix `y` (n_texts x n_labels)."""
        y = np.asarray(y, dtype=float)
        return self.fit_soft(X, y, np.arange(y.shape[1]))

    def fit_soft(self, X: Any, proba: Any, classes: Any) -> Self:
        texts = _texts(X)
        proba = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
        if proba.shape != (len(texts), len(classes)):
            raise ValueError(
                f"proba has shape {proba.shape}, expected ({len(texts)}, {len(classes)})"
            )
        self.vectoriser_ = self._vectoriser()
        features = self.vectoriser_.fit_transform(texts)
        doubled = sp.vstack([features, features])
        self.models_ = []
        for j in range(len(classes)):
            target = np.r_[np.ones(len(texts)), np.zeros(len(texts))]
            weight = np.r_[proba[:, j], 1.0 - proba[:, j]]
            keep = weight >= self.min_weight
            if len(set(target[keep])) < 2:  # the teacher never (or always) chose this label
                self.models_.append(float(target[keep][0]) if keep.any() else 0.0)
                continue
            model = LogisticRegression(C=self.C, max_iter=self.max_iter)
            self.models_.append(model.fit(doubled[keep], target[keep], sample_weight=weight[keep]))
        self.model_ = self.models_
        self.classes_ = np.asarray(classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "models_")
        features = self.vectoriser_.transform(_texts(X))
        columns = [
            np.full(features.shape[0], m)
            if isinstance(m, float)
            else m.predict_proba(features)[:, 1]
            for m in self.models_
        ]
        return np.column_stack(columns)

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X) >= 0.5).astype(int)
