"""The `Student` protocol: what a flow may ask of any student, so a signature shows the design.

Students are scikit-learn estimators (``fit`` / ``predict_proba`` / ``classes_``) that also learn
from a teacher's probabilities (``fit_soft``) and save themselves to a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np


@runtime_checkable
class Student(Protocol):
    """A classifier distilled from a teacher.

    `predict_proba` columns follow `classes_`; after `fit_soft(X, proba, classes)`, `classes_`
    is `classes`, in that order. `load(save(path))` gives back an equal model.
    """

    classes_: np.ndarray

    def fit(self, X: Sequence[str], y: Any) -> Self:
        """Fit on texts and the teacher's hard labels."""
        ...

    def fit_soft(self, X: Sequence[str], proba: Any, classes: Sequence[str]) -> Self:
        """Fit on texts and the teacher's probabilities (one column per class)."""
        ...

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Probabilities, one row per text, one column per class of `classes_`."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the model; returns the path of the file or folder written."""
        ...

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by `save`."""
        ...
