"""The embedding student: frozen all-MiniLM-L6-v2 sentence embeddings (the bundled weights) and
a logistic-regression head, with embeddings cached by encoder and text."""

import numpy as np
import pytest

from stillroom.students import EmbeddingLogReg, SentenceEncoder, _embedding

TRAIN = [
    "I love this film",
    "what a great movie",
    "a delightful, moving story",
    "dreadful acting throughout",
    "a boring mess",
    "I hated every minute",
]
LABELS = ["pos", "pos", "pos", "neg", "neg", "neg"]


def test_it_learns_from_soft_labels_and_generalises_to_paraphrases(tmp_path):
    proba = np.array([[0.9, 0.1] if y == "pos" else [0.15, 0.85] for y in LABELS])
    model = EmbeddingLogReg(cache_dir=str(tmp_path)).fit_soft(TRAIN, proba, ["pos", "neg"])
    assert model.classes_.tolist() == ["pos", "neg"]
    out = model.predict_proba(["a wonderful picture", "terrible and dull"])
    assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1.0)
    # no word in common with the training texts: only the embeddings can tell
    assert model.predict(["a wonderful picture", "terrible and dull"]).tolist() == ["pos", "neg"]


def test_embeddings_are_computed_once_per_text_and_encoder(tmp_path, monkeypatch):
    first = SentenceEncoder(cache_dir=str(tmp_path)).transform(TRAIN)
    assert first.shape == (6, 384) and np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    def no_encoding(folder):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(_embedding, "_load_encoder", no_encoding)
    again = SentenceEncoder(cache_dir=str(tmp_path)).transform(list(reversed(TRAIN)))
    assert np.array_equal(again, first[::-1])
    # a second student on the same texts trains without encoding anything
    EmbeddingLogReg(cache_dir=str(tmp_path)).fit(TRAIN, LABELS)
    with pytest.raises(AssertionError, match="encoded again"):
        SentenceEncoder(cache_dir=str(tmp_path)).transform(["a text never seen"])


def test_save_and_load_give_identical_predictions(tmp_path):
    model = EmbeddingLogReg(C=3.0).fit(TRAIN, LABELS)
    path = model.save(tmp_path / "m" / "model.skops")
    loaded = EmbeddingLogReg.load(path)
    texts = ["a wonderful picture", "terrible and dull", "fine"]
    assert np.array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert loaded.get_params() == model.get_params()
    assert path.stat().st_size < 100_000  # the head only: the encoder is not pickled


def test_a_folder_that_is_not_an_encoder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a sentence-transformers folder"):
        EmbeddingLogReg(encoder=str(tmp_path)).fit(TRAIN, LABELS)


def test_numbers_are_refused_as_for_every_student():
    with pytest.raises(ValueError, match="EmbeddingLogReg takes texts"):
        EmbeddingLogReg().fit([1, 2, 3], ["a", "b", "a"])
