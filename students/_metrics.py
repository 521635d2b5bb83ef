"""How close a student gets to its teacher: agreement, KL, calibration, accuracy, speed, size.

Plain functions over numpy arrays, so they serve any student and a notebook alike.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from ._calibration import expected_calibration_error

_EPS = 1e-12


def agreement(teacher_labels: Sequence[Any], student_labels: Sequence[Any]) -> float:
    """Share of records where the student picks the teacher's label."""
    return float(accuracy_score(teacher_labels, student_labels))


def kl_divergence(teacher_proba: np.ndarray, student_proba: np.ndarray) -> float:
    """Mean KL(teacher ‖ student) in nats; student zeros are clipped so it stays finite."""
    p = np.asarray(teacher_proba, dtype=float)
    q = np.clip(np.asarray(student_proba, dtype=float), _EPS, 1.0)
    q = q / q.sum(axis=1, keepdims=True)
    terms = np.where(p > 0, p * (np.log(np.clip(p, _EPS, 1.0)) - np.log(q)), 0.0)
    return float(terms.sum(axis=1).mean())


def predict_ms_per_1k(student: Any, texts: Sequence[str], repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of `predict_proba` on `texts`, scaled to 1,000 records."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        student.predict_proba(texts)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best * 1000.0 / max(len(texts), 1)


def closeness(
    teacher_proba: np.ndarray,
    student_proba: np.ndarray,
    classes: Sequence[str],
    gold: Sequence[str | None] | None = None,
) -> dict[str, float | None]:
    """Agreement, KL(teacher‖student) and ECE against the teacher; accuracy against gold where
    gold exists (None when no record has gold). Columns of both arrays follow `classes`."""
    names = np.asarray(classes)
    teacher_idx = np.asarray(teacher_proba).argmax(axis=1)
    student_idx = np.asarray(student_proba).argmax(axis=1)
    accuracy = None
    if gold is not None:
        known = np.array([g is not None for g in gold], dtype=bool)
        if known.any():
            gold_known = np.asarray(gold, dtype=object)[known]
            accuracy = float(accuracy_score(gold_known, names[student_idx[known]]))
    return {
        "agreement": agreement(teacher_idx, student_idx),
        "kl_teacher_student": kl_divergence(teacher_proba, student_proba),
        "ece": expected_calibration_error(student_proba, teacher_idx),
        "accuracy_vs_gold": accuracy,
    }


def multilabel_closeness(
    teacher_proba: np.ndarray,
    student_proba: np.ndarray,
    classes: Sequence[str],
    gold: Sequence[Collection[str] | None] | None = None,
    *,
    threshold: float,
) -> dict[str, float | None]:
    """For independent per-label probabilities: exact-set agreement, mean binary KL and ECE over
    every (record, label) cell, micro/macro F1 against the teacher's decisions, and exact-set
    accuracy against gold label sets where gold exists. A label applies from `threshold` on."""
    p = np.clip(np.asarray(teacher_proba, dtype=float), 0.0, 1.0)
    q = np.clip(np.asarray(student_proba, dtype=float), _EPS, 1.0 - _EPS)
    teacher_sets, student_sets = p >= threshold, q >= threshold
    kl = p * (np.log(np.clip(p, _EPS, 1.0)) - np.log(q)) + (1 - p) * (
        np.log(np.clip(1 - p, _EPS, 1.0)) - np.log(1 - q)
    )
    cells = np.column_stack([1 - q.ravel(), q.ravel()])
    accuracy = None
    if gold is not None:
        known = [i for i, g in enumerate(gold) if g is not None]
        if known:
            index = {c: j for j, c in enumerate(classes)}
            truth = np.zeros((len(known), len(classes)), dtype=bool)
            for row, i in enumerate(known):
                for label in gold[i] or ():
                    truth[row, index[label]] = True
            accuracy = float(np.mean((student_sets[known] == truth).all(axis=1)))
    return {
        "agreement": float(np.mean((teacher_sets == student_sets).all(axis=1))),
        "kl_teacher_student": float(kl.sum(axis=1).mean()),
        "ece": expected_calibration_error(cells, teacher_sets.ravel().astype(int)),
        "accuracy_vs_gold": accuracy,
        "f1_micro_vs_teacher": float(
            f1_score(teacher_sets, student_sets, average="micro", zero_division=0)
        ),
        "f1_macro_vs_teacher": float(
            f1_score(teacher_sets, student_sets, average="macro", zero_division=0)
        ),
    }
