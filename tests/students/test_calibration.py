"""Temperature scaling and reliability bins: exact on constructed examples."""

import numpy as np
import pytest

from stillroom.students import (
    TfidfLogReg,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    temperature_scale,
)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_scale_divides_the_logits():
    z = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert np.allclose(temperature_scale(softmax(z), 2.5), softmax(z / 2.5))
    assert np.array_equal(temperature_scale(softmax(z), 1.0), softmax(z))
    # a class with probability 0 keeps it
    assert temperature_scale(np.array([[0.0, 0.2, 0.8]]), 3.0)[0, 0] == 0.0


def test_fit_temperature_recovers_the_temperature_that_made_a_student_overconfident():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 5)) * 2
    teacher = softmax(z)
    overconfident = softmax(3.0 * z)  # the same logits, three times too sharp
    assert fit_temperature(overconfident, teacher) == pytest.approx(3.0, rel=0.01)
    assert fit_temperature(teacher, teacher) == pytest.approx(1.0, rel=0.01)


def test_reliability_bins_and_ece():
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    target = [0, 1, 0, 0]
    bins = reliability_bins(proba, target, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 2, 0, 0, 1, 1]
    assert bins[5]["confidence"] == pytest.approx(0.575) and bins[5]["accuracy"] == 1.0
    assert bins[8]["accuracy"] == 0.0 and bins[0]["confidence"] is None
    # ECE: |0.575 - 1| * 2/4 + |0.9 - 0| * 1/4 + |0.95 - 1| * 1/4
    assert expected_calibration_error(proba, target, n_bins=10) == pytest.approx(
        0.425 * 0.5 + 0.9 * 0.25 + 0.05 * 0.25
    )


def test_a_calibrated_logreg_changes_its_confidence_not_its_answers():
    texts = ["loved it", "great fun", "boring", "awful", "fine film", "dull plot"] * 3
    labels = ["pos", "pos", "neg", "neg", "pos", "neg"] * 3
    model = TfidfLogReg().fit(texts, labels)
    before = model.predict_proba(texts)
    model.calibration_temperature_ = 2.0
    after = model.predict_proba(texts)
    assert np.allclose(after, temperature_scale(before, 2.0))
    assert after.max(axis=1).mean() < before.max(axis=1).mean()
    assert np.array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_classes_a_student_never_predicts_are_left_out_of_the_fit():
    # a logreg fitted on soft labels gives exactly 0 to classes the teacher never favoured: the
    # fitted T is the one that, applied as temperature_scale applies it, matches the teacher
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1000, 4)) * 2
    teacher = np.zeros((1000, 10))
    teacher[:, :4] = softmax(z)
    student = np.zeros((1000, 10))
    student[:, :4] = softmax(4.0 * z)
    found = fit_temperature(student, teacher)
    assert found == pytest.approx(4.0, rel=0.01)
    assert np.allclose(temperature_scale(student, found)[:, :4], teacher[:, :4], atol=1e-3)
