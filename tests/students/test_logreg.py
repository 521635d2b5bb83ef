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
    assert model.get_params()["char_ngram_range"] == (2, 5)
    assert clone(model.set_params(char_ngram_range=None)).char_ngram_range is None
    model.set_params(char_ngram_range=(2, 5))
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


def test_character_ngrams_classify_misspelled_and_unseen_words():
    # every word here is unseen in training, so word n-grams alone give these texts no features
    misspelt = ["brillaint actng", "wonderfull, lovly", "borring, awfull", "terible, wasted"]
    chars = TfidfLogReg().fit(TEXTS, HARD)
    assert list(chars.predict(misspelt)) == ["pos", "pos", "neg", "neg"]
    words = TfidfLogReg(char_ngram_range=None).fit(TEXTS, HARD)
    assert words.vectoriser_.transform(misspelt).nnz == 0
    proba = words.predict_proba(misspelt)
    assert np.allclose(proba, proba[0])  # word-only cannot tell them apart
    soft = np.array([[0.1, 0.9] if y == "pos" else [0.9, 0.1] for y in HARD])
    from_soft = TfidfLogReg().fit_soft(TEXTS, soft, ["neg", "pos"])
    assert list(from_soft.predict(misspelt)) == ["pos", "pos", "neg", "neg"]


def test_features_are_word_plus_character_ngrams_each_capped_by_max_features():
    both = TfidfLogReg().fit(TEXTS, HARD)
    names = both.vectoriser_.get_feature_names_out()
    n_word = sum(n.startswith("word__") for n in names)
    n_char = sum(n.startswith("char__") for n in names)
    assert n_word > 0 and n_char > n_word and n_word + n_char == both.model_.coef_.shape[1]
    assert "char__lov" in names and "word__loved it" in names
    words = TfidfLogReg(char_ngram_range=None).fit(TEXTS, HARD)
    assert words.model_.coef_.shape[1] == n_word
    narrow = TfidfLogReg(char_ngram_range=(4, 4)).fit(TEXTS, HARD)
    narrow_names = set(narrow.vectoriser_.get_feature_names_out())
    assert "char__ lov" in narrow_names and "char__lov" not in narrow_names  # range is honoured
    capped = TfidfLogReg(max_features=5).fit(TEXTS, HARD)
    assert capped.model_.coef_.shape[1] == 10
    assert (
        TfidfLogReg(max_features=5, char_ngram_range=None).fit(TEXTS, HARD).model_.coef_.shape[1]
        == 5
    )


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
    # character n-grams reach the per-label models too
    assert (model.predict(["pinn blockd", "cardd losst"]) == np.array([[0, 1], [1, 0]])).all()
    loaded = TfidfLogRegMultiLabel.load(model.save(tmp_path / "m.joblib"))
    assert np.allclose(loaded.predict_proba(texts), model.predict_proba(texts))
