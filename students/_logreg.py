"""TF-IDF + logistic regression: the cheapest student, trainable on hard or soft teacher labels.

Follows the scikit-learn estimator contract, so it drops into Pipelines, clone and cross-validation.
"""

from __future__ import annotations

import json
import platform
import warnings
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from sklearn.utils.validation import check_is_fitted

from ._calibration import temperature_scale

if TYPE_CHECKING:
    from sklearn.utils import Tags

_LIBRARIES = ("stillroom", "scikit-learn", "numpy", "scipy", "skops")


class TfidfLogReg(ClassifierMixin, BaseEstimator):
    """Word and character n-gram TF-IDF features into a multinomial logistic regression.

    Texts are turned into two TF-IDF blocks (sublinear tf, accents stripped, lower-cased, each
    row L2-normalised per block), stacked side by side: word n-grams, and character n-grams taken
    inside word boundaries (``analyzer="char_wb"``), which let misspellings and unseen word forms
    share features with the words they resemble. Set `char_ngram_range=None` for word n-grams
    only. `X` is always a 1-D sequence of texts (strings); numbers and feature matrices are
    refused rather than turned into strings.

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

    Attributes
    ----------
    classes_ : ndarray
        The class labels; `predict_proba` columns follow them.
    vectoriser_ : TfidfVectorizer or FeatureUnion
        The fitted TF-IDF features.
    model_ : LogisticRegression
        The fitted logistic regression.
    calibration_temperature_ : float
        `predict_proba` divides the logits by it (1.0 until a caller calibrates the student).

    Examples
    --------
    >>> from stillroom.students import TfidfLogReg
    >>> texts = ["loved it", "great fun", "boring", "awful"] * 3
    >>> model = TfidfLogReg().fit(texts, ["pos", "pos", "neg", "neg"] * 3)
    >>> model.predict(["loved it, great"]).tolist()
    ['pos']
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

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags

    def _vectoriser(self) -> TfidfVectorizer | FeatureUnion:
        common = dict(
            max_features=self.max_features, sublinear_tf=True, min_df=1, strip_accents="unicode"
        )
        words = TfidfVectorizer(ngram_range=self.ngram_range, **common)
        if self.char_ngram_range is None:
            return words
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngram_range, **common)
        return FeatureUnion([("word", words), ("char", chars)])

    def _logistic(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Fit on texts `X` and hard labels `y` (one per text)."""
        texts, y = _texts_and_targets(self, X, y, "the teacher's labels, one per text", ndim=1)
        vectoriser = self._vectoriser()
        model = self._logistic().fit(
            vectoriser.fit_transform(texts), y, sample_weight=sample_weight
        )
        # learned state is set only once fitting succeeded, so a failed fit leaves no half model
        self.vectoriser_, self.model_, self.classes_ = vectoriser, model, model.classes_
        self._columns_: np.ndarray | None = None
        self.calibration_temperature_ = 1.0
        return self

    def fit_soft(self, X: Any, proba: Any, classes: Any) -> Self:
        """Fit on the teacher's probabilities: each text appears once per class it gives weight
        to, weighted by that probability, so the multinomial loss is the cross-entropy with the
        teacher's distribution."""
        texts, proba, classes = _soft_targets(self, X, proba, classes)
        rows, cols = np.nonzero(proba >= self.min_weight)
        vectoriser = self._vectoriser()
        features = vectoriser.fit_transform(texts)[rows]
        model = self._logistic().fit(features, classes[cols], sample_weight=proba[rows, cols])
        # classes the teacher never favoured still get a (zero) column, so columns follow `classes`
        columns = np.array(
            [np.flatnonzero(model.classes_ == c)[0] if c in model.classes_ else -1 for c in classes]
        )
        self.vectoriser_, self.model_, self.classes_ = vectoriser, model, classes
        self._columns_ = columns
        self.calibration_temperature_ = 1.0
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one row per text, columns following `classes_`; divided by
        `calibration_temperature_` in logit space once a caller has calibrated the student."""
        check_is_fitted(self, ("vectoriser_", "model_", "classes_"))
        raw: np.ndarray = self.model_.predict_proba(self.vectoriser_.transform(_texts(self, X)))
        columns = getattr(self, "_columns_", None)
        if columns is not None:
            out = np.zeros((raw.shape[0], len(self.classes_)))
            present = columns >= 0
            out[:, present] = raw[:, columns[present]]
            raw = out
        return temperature_scale(raw, getattr(self, "calibration_temperature_", 1.0))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each text."""
        proba = self.predict_proba(X)  # first: an unfitted model has no classes_ to index
        return np.asarray(self.classes_[np.argmax(proba, axis=1)])

    def save(self, path: str | Path) -> Path:
        """Write the model to `path` (skops, a format that holds no code), and beside it
        `<stem>.versions.json`: the library versions it was saved with, which `load` checks."""
        import skops.io

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        skops.io.dump(self, path, compression=zipfile.ZIP_DEFLATED, compresslevel=3)
        _versions_path(path).write_text(json.dumps(_library_versions(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by `save`; warns when it was saved under another scikit-learn
        major.minor version than the one installed. Only stillroom's students and the
        scikit-learn, numpy and scipy types skops trusts are built: a file naming any other type
        is refused before anything in it is loaded."""
        import skops.io

        _check_saved_versions(Path(path))
        untrusted = _untrusted(Path(path))
        if untrusted:
            raise ValueError(
                f"{path} names types stillroom does not load ({', '.join(untrusted[:3])}): it "
                "was not written by a stillroom student"
            )
        model = skops.io.load(path, trusted=list(_TRUSTED))
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


_TRUSTED = (
    "stillroom.students.TfidfLogReg",
    "stillroom.students.TfidfLogRegMultiLabel",
    "stillroom.students.EmbeddingLogReg",
    "stillroom.students.SentenceEncoder",
)
"""The types of stillroom's own a saved student holds, beside those skops trusts by default."""


def _untrusted(path: Path) -> list[str]:
    """The types a skops file names that neither skops' defaults nor `_TRUSTED` cover."""
    import skops.io

    try:
        named = skops.io.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a saved stillroom student (skops): {exc}") from None
    return [name for name in named if name not in _TRUSTED]


def _library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries a saved student depends on."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _versions_path(model_path: Path) -> Path:
    """Where `save` records the library versions of the model at `model_path`."""
    return model_path.with_suffix(".versions.json")


def _check_saved_versions(path: Path) -> None:
    record = _versions_path(path)
    if not record.is_file():
        return  # saved before versions were recorded: nothing to compare
    saved = json.loads(record.read_text()).get("scikit-learn", "unknown")
    current = _library_versions()["scikit-learn"]
    if saved.split(".")[:2] != current.split(".")[:2]:
        warnings.warn(
            f"{path} was saved with scikit-learn {saved} and this is scikit-learn {current}: a "
            "model saved under another major.minor version may fail or predict differently. "
            f"Install scikit-learn=={saved} to use it, or train the student again.",
            UserWarning,
            stacklevel=3,
        )


def _texts(owner: BaseEstimator, X: Any) -> list[str]:
    """X as a list of texts; anything else is refused, never silently turned into strings."""
    what = f"{type(owner).__name__} takes texts (strings) and builds its own features"
    if isinstance(X, str | bytes):
        raise ValueError(f"{what}: X must be a sequence of texts, not a single string")
    if sp.issparse(X):
        raise ValueError(f"{what}: X is a sparse matrix; pass the raw texts instead")
    if getattr(X, "ndim", 1) != 1:
        raise ValueError(
            f"{what}: X must be 1-D, one text per sample, not shape {getattr(X, 'shape', '?')}"
        )
    try:
        texts = list(X)
    except TypeError:
        raise ValueError(f"{what}: X is a {type(X).__name__}, not a sequence of texts") from None
    if not texts:
        raise ValueError(f"{what}: X holds no texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"{what}: X[{i}] is a {type(text).__name__} ({str(text)[:40]}), not a "
                "string; convert the data to texts first"
            )
    return texts


def _texts_and_targets(
    owner: BaseEstimator, X: Any, y: Any, what: str, ndim: int
) -> tuple[list[str], np.ndarray]:
    """Texts and their targets, checked in this order: y is given, X is texts, y fits X."""
    name = type(owner).__name__
    if y is None:
        raise ValueError(
            f"{name} requires y to be passed, but the target y is None: pass {what} as y, or "
            "the teacher's probabilities to fit_soft(X, proba, classes)"
        )
    texts, array = _texts(owner, X), np.asarray(y)
    if array.ndim != ndim:
        hint = "; for several labels per text use TfidfLogRegMultiLabel" if ndim == 1 else ""
        raise ValueError(f"{name}.fit takes y as {what}, got shape {array.shape}{hint}")
    if len(array) != len(texts):
        raise ValueError(f"X has {len(texts)} texts but y has {len(array)} rows of labels")
    return texts, array


def _soft_targets(
    owner: BaseEstimator, X: Any, proba: Any, classes: Any
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, probabilities (n_texts x n_classes) and classes, checked against each other."""
    if proba is None or classes is None:
        raise ValueError(
            f"{type(owner).__name__}.fit_soft needs proba (one row per text, one column per "
            "class) and classes (the column names)"
        )
    texts = _texts(owner, X)
    proba, classes = np.asarray(proba, dtype=float), np.asarray(classes)
    if proba.shape != (len(texts), len(classes)):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(texts)}, {len(classes)})")
    return texts, proba, classes


class TfidfLogRegMultiLabel(TfidfLogReg):
    """One-vs-rest TF-IDF logistic regressions over shared features, for multi-label tasks.

    `fit_soft(X, proba, classes)` takes an independent probability per label (each row of
    `proba` need not sum to 1): each label's model sees every text twice, as "applies" weighted
    by p and as "does not" weighted by 1 - p. `predict_proba` returns P(applies) per label,
    columns following `classes_`. Parameters as for `TfidfLogReg`.

    Attributes
    ----------
    classes_ : ndarray
        The labels; `predict_proba` and `predict` columns follow them.
    vectoriser_ : TfidfVectorizer or FeatureUnion
        The fitted TF-IDF features, shared by every label.
    models_ : list of LogisticRegression or float
        One model per label, or the constant probability of a label the teacher never (or
        always) chose.
    """

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.single_output = False
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Fit on texts `X` and a 0/1 indicator matrix `y` (n_texts x n_labels)."""
        texts, y = _texts_and_targets(
            self, X, y, "a 0/1 indicator matrix (n_texts x n_labels)", ndim=2
        )
        return self.fit_soft(texts, y.astype(float), np.arange(y.shape[1]))

    def fit_soft(self, X: Any, proba: Any, classes: Any) -> Self:
        texts, proba, classes = _soft_targets(self, X, proba, classes)
        proba = np.clip(proba, 0.0, 1.0)
        vectoriser = self._vectoriser()
        features = vectoriser.fit_transform(texts)
        doubled = sp.vstack([features, features])
        target = np.r_[np.ones(len(texts)), np.zeros(len(texts))]
        models: list[LogisticRegression | float] = []
        for j in range(len(classes)):
            weight = np.r_[proba[:, j], 1.0 - proba[:, j]]
            keep = weight >= self.min_weight
            if len(set(target[keep])) < 2:  # the teacher never (or always) chose this label
                models.append(float(target[keep][0]) if keep.any() else 0.0)
                continue
            model = self._logistic()
            models.append(model.fit(doubled[keep], target[keep], sample_weight=weight[keep]))
        self.vectoriser_, self.models_, self.classes_ = vectoriser, models, classes
        self.model_ = models
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(label applies), one row per text, columns following `classes_`."""
        check_is_fitted(self, ("vectoriser_", "models_", "classes_"))
        features = self.vectoriser_.transform(_texts(self, X))
        columns = [
            np.full(features.shape[0], m)
            if isinstance(m, float)
            else m.predict_proba(features)[:, 1]
            for m in self.models_
        ]
        return np.column_stack(columns)

    def predict(self, X: Any) -> np.ndarray:
        """A 0/1 matrix: 1 where a label applies (probability 0.5 or more)."""
        return (self.predict_proba(X) >= 0.5).astype(int)
