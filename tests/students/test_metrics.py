import math

import numpy as np
import pytest

from stillroom.students import agreement, closeness, expected_calibration_error, kl_divergence


def test_kl_is_zero_for_equal_and_known_value_otherwise():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert kl_divergence(p, p) == pytest.approx(0.0)
    q = np.array([[0.25, 0.75], [0.9, 0.1]])
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert kl_divergence(p, q) == pytest.approx(expected)
    assert math.isfinite(kl_divergence(p, np.array([[1.0, 0.0], [1.0, 0.0]])))


def test_ece_of_a_calibrated_and_an_overconfident_model():
    proba = np.array([[0.8, 0.2]] * 10)
    calibrated = [0] * 8 + [1] * 2
    assert expected_calibration_error(proba, calibrated) == pytest.approx(0.0)
    assert expected_calibration_error(proba, [1] * 10) == pytest.approx(0.8)


def test_closeness_uses_gold_only_where_known():
    teacher = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    student = np.array([[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]])
    out = closeness(teacher, student, ["a", "b"], gold=["a", None, "a"])
    assert out["agreement"] == pytest.approx(2 / 3)
    assert out["accuracy_vs_gold"] == pytest.approx(0.5)
    assert closeness(teacher, student, ["a", "b"], gold=[None] * 3)["accuracy_vs_gold"] is None
    assert agreement(["a", "b"], ["a", "a"]) == 0.5


def test_multilabel_closeness_values():
    from stillroom.students import multilabel_closeness

    teacher = np.array([[0.9, 0.8], [0.9, 0.1], [0.2, 0.3]])
    student = np.array([[0.8, 0.4], [0.7, 0.2], [0.1, 0.6]])
    out = multilabel_closeness(
        teacher, student, ["a", "b"], gold=[{"a", "b"}, {"a"}, None], threshold=0.5
    )
    assert out["agreement"] == pytest.approx(1 / 3)  # only the second record has the same set
    # teacher sets {a,b},{a},{}; student {a},{a},{b}: tp=2, fp=1, fn=1
    assert out["f1_micro_vs_teacher"] == pytest.approx(2 / 3)
    assert out["accuracy_vs_gold"] == pytest.approx(0.5)
    assert out["kl_teacher_student"] > 0
