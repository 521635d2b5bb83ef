import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score

from stillroom.students import TfidfLogReg

TEXTS = [
    "great film, loved it",
    "wonderful and moving",
    "a joy to watch",
    "brilliant acting",
    "terrible plot",
    "boring and slow",
    "awful, fell asleep",
    "a waste of time",
] * 3
HARD = ["pos"] * 4 + ["neg"] * 4
HARD = HARD * 3


def test_estimator_contract():
    model = TfidfLogReg(C=5.0)
    assert model.get_params()["C"] == 5.0 and clone(model).C == 5.0
    with pytest.raises(NotFittedError):
        model.predict_proba(["x"])
    assert model.fit(TEXTS, HARD) is model
    assert list(model.classes_) == ["neg", "pos"]
    proba = model.predict_proba(["loved it, wonderful", "boring waste"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    assert list(model.predict(["loved it, wonderful", "boring waste"])) == ["pos", "neg"]
    assert cross_val_score(TfidfLogReg(), TEXTS, HARD, cv=3).mean() > 0.6


def test_soft_labels_follow_the_teachers_confidence():
    classes = ["neg", "pos", "unused"]
    confident = np.array([[0.02, 0.98, 0.0] if y == "pos" else [0.98, 0.02, 0.0] for y in HARD])
    unsure = np.array([[0.4, 0.6, 0.0] if y == "pos" else [0.6, 0.4, 0.0] for y in HARD])
    sharp = TfidfLogReg().fit_soft(TEXTS, confident, classes)
    soft = TfidfLogReg().fit_soft(TEXTS, unsure, classes)
    assert list(sharp.classes_) == classes
    p_sharp, p_soft = sharp.predict_proba(["great film"]), soft.predict_proba(["great film"])
    assert p_sharp.shape == (1, 3) and p_sharp[0, 2] == 0.0
    assert p_sharp[0, 1] > p_soft[0, 1] > 0.5
    with pytest.raises(ValueError, match="shape"):
        TfidfLogReg().fit_soft(TEXTS, confident[:, :2], classes)


def test_save_and_load_round_trip(tmp_path):
    model = TfidfLogReg().fit(TEXTS, HARD)
    path = model.save(tmp_path / "m" / "model.joblib")
    loaded = TfidfLogReg.load(path)
    assert np.allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS))


def test_multilabel_student_learns_each_label_on_its_own(tmp_path):
    from stillroom.students import TfidfLogRegMultiLabel

    texts = ["card lost and pin blocked", "card lost", "pin blocked", "hello there"] * 5
    proba = np.array([[0.95, 0.9], [0.9, 0.05], [0.05, 0.9], [0.05, 0.05]] * 5)
    model = TfidfLogRegMultiLabel().fit_soft(texts, proba, ["lost", "pin"])
    assert list(model.classes_) == ["lost", "pin"]
    assert (model.predict(texts[:4]) == np.array([[1, 1], [1, 0], [0, 1], [0, 0]])).all()
    loaded = TfidfLogRegMultiLabel.load(model.save(tmp_path / "m.joblib"))
    assert np.allclose(loaded.predict_proba(texts), model.predict_proba(texts))
