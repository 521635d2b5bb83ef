"""Temperature scaling: one scalar T that divides a student's logits, fitted on held-back
records so its confidence matches how often it agrees with the teacher; and the reliability
bins that show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar


def temperature_scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities a softmax model gives with its logits divided by T
    (exact for logistic regression and any softmax head). T = 1 returns `proba` unchanged."""
    proba = np.asarray(proba, dtype=float)
    if temperature == 1.0:
        return proba
    with np.errstate(divide="ignore"):
        z = np.log(proba) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def fit_temperature(proba: np.ndarray, teacher_proba: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the cross-entropy between the teacher's distribution and
    the student's tempered one (the KL to the teacher, up to a constant); with one-hot teacher
    rows, the usual NLL of temperature scaling. Classes the student gives probability 0 keep it
    at every T (as in `temperature_scale`), so they are left out of the fit."""
    p = np.asarray(teacher_proba, dtype=float)
    q = np.asarray(proba, dtype=float)
    support = q > 0
    with np.errstate(divide="ignore"):
        log_q = np.where(support, np.log(np.where(support, q, 1.0)), -np.inf)

    def loss(log_t: float) -> float:
        z = log_q / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-(p * np.where(support, log_softmax, 0.0)).sum(axis=1).mean())

    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def reliability_bins(
    proba: np.ndarray, target: Sequence[int] | np.ndarray, n_bins: int = 15
) -> list[dict[str, Any]]:
    """The reliability diagram: per equal-width confidence bin, the records in it, their mean
    top-class confidence and how often the top class is `target` (empty bins included)."""
    proba = np.asarray(proba, dtype=float)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(target)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        bins.append(
            {
                "lower": round(float(edges[b]), 6),
                "upper": round(float(edges[b + 1]), 6),
                "count": int(mask.sum()),
                "confidence": float(confidence[mask].mean()) if mask.any() else None,
                "accuracy": float(correct[mask].mean()) if mask.any() else None,
            }
        )
    return bins


def expected_calibration_error(proba: np.ndarray, target: Sequence[int], n_bins: int = 15) -> float:
    """ECE: confidence vs accuracy of the top class, in equal-width bins, weighted by bin size."""
    bins = reliability_bins(proba, target, n_bins)
    n = sum(b["count"] for b in bins)
    return float(
        sum(b["count"] / n * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"])
    )
