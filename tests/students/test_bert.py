"""The bert student on a tiny BERT built in the tests (random weights, a small vocabulary; see
`tiny_bert` in conftest.py): the distillation loss, training, save/load as a transformers
folder, resume after a kill, int8."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from transformers import AutoModelForSequenceClassification

from stillroom.students import BertStudent, _bert, kd_loss

POS = ["good fun film", "great good movie", "fun great story", "good story fun", "great film"]
NEG = ["bad dull film", "awful bad movie", "dull awful story", "bad story dull", "awful film"]
TEXTS, LABELS = POS + NEG, ["pos"] * 5 + ["neg"] * 5


def student(base: str, **kwargs) -> BertStudent:
    return BertStudent(
        base=base, epochs=kwargs.pop("epochs", 10), learning_rate=kwargs.pop("learning_rate", 1e-2),
        head_learning_rate=1e-2,
        batch_size=4,
        progress=False, **kwargs,
    )  # fmt: skip


def weights(model: BertStudent) -> dict[str, torch.Tensor]:
    return model.model_.state_dict()


def test_kd_loss_equals_the_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    T, alpha = 2.0, 0.3
    # by hand: CE against the teacher's top labels (0, 1), KL between tempered distributions
    ce = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))),
                   np.log(np.exp(1.5) / (np.exp(0.5) + np.exp(1.5) + 1))])  # fmt: skip
    kl = 0.0
    for z, p in zip(logits.numpy(), teacher.numpy(), strict=True):
        pt = p ** (1 / T) / (p ** (1 / T)).sum()
        qt = np.exp(z / T) / np.exp(z / T).sum()
        kl += (pt * np.log(pt / qt)).sum() / 2
    expected = alpha * ce + (1 - alpha) * T**2 * kl
    assert kd_loss(logits, teacher, T, alpha).item() == pytest.approx(expected, rel=1e-5)
    # alpha = 1 is plain cross-entropy with the teacher's labels; T = 1, alpha = 0 is KL alone
    assert kd_loss(logits, teacher, T, 1.0).item() == pytest.approx(ce, rel=1e-5)
    assert kd_loss(teacher.log(), teacher, 1.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_it_learns_the_teachers_labels_and_follows_the_estimator_contract(tiny_bert):
    model = student(tiny_bert)
    assert model.fit(TEXTS, LABELS) is model
    assert model.classes_.tolist() == ["neg", "pos"]
    proba = model.predict_proba(TEXTS)
    assert proba.shape == (10, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert (model.predict(TEXTS) == np.array(LABELS)).mean() >= 0.9
    assert [h["epoch"] for h in model.history_] == list(range(1, 11))
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    # clone keeps the parameters and none of the learned state; pickling keeps both
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "model_")
    assert np.allclose(pickle.loads(pickle.dumps(model)).predict_proba(TEXTS), proba)
    assert model.set_params(alpha=0.9).alpha == 0.9


def test_fit_on_hard_labels_is_fit_soft_on_one_hot_rows(tiny_bert):
    hard = student(tiny_bert, epochs=2).fit(TEXTS, LABELS)
    onehot = np.array([[1.0, 0.0] if y == "neg" else [0.0, 1.0] for y in LABELS])
    soft = student(tiny_bert, epochs=2).fit_soft(TEXTS, onehot, ["neg", "pos"])
    for name, tensor in weights(hard).items():
        assert torch.allclose(tensor, weights(soft)[name], atol=1e-6), name


def test_soft_labels_move_the_student_toward_the_teachers_distribution(tiny_bert):
    # the teacher is unsure on every text: a student distilled from it with T > 1 and alpha 0 is
    # less confident than one fitted on the hard labels alone
    proba = np.array([[0.35, 0.65] if y == "pos" else [0.65, 0.35] for y in LABELS])
    soft = student(tiny_bert, alpha=0.0, temperature=2.0).fit_soft(TEXTS, proba, ["neg", "pos"])
    hard = student(tiny_bert).fit(TEXTS, LABELS)
    assert (
        soft.predict_proba(TEXTS).max(axis=1).mean()
        < hard.predict_proba(TEXTS).max(axis=1).mean() - 0.1
    )
    assert (soft.predict(TEXTS) == np.array(LABELS)).mean() >= 0.9


def test_save_writes_a_transformers_folder_and_load_predicts_the_same(tiny_bert, tmp_path):
    model = student(tiny_bert, epochs=2).fit(TEXTS, LABELS)
    model.calibration_temperature_ = 1.7
    folder = model.save(tmp_path / "student")
    loaded = BertStudent.load(folder)
    assert np.array_equal(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS))
    assert loaded.calibration_temperature_ == 1.7 and loaded.get_params()["alpha"] == 0.5
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    tokens = loaded.tokenizer_(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert np.allclose(plain(**tokens).logits.numpy(), model.logits(TEXTS[:2]), atol=1e-5)


def test_a_killed_fit_resumes_to_the_same_weights(tiny_bert, tmp_path, monkeypatch):
    uninterrupted = student(tiny_bert, epochs=3).fit(TEXTS, LABELS)
    saves = []
    real_save = _bert._Run._save

    def save_then_die(run, state):
        real_save(run, state)
        saves.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # killed right after the second epoch's checkpoint

    monkeypatch.setattr(_bert._Run, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        student(tiny_bert, epochs=3, checkpoint_dir=str(tmp_path)).fit(TEXTS, LABELS)
    assert saves == [1, 2] and len(list(tmp_path.glob("*/checkpoint.pt"))) == 1
    resumed = student(tiny_bert, epochs=3, checkpoint_dir=str(tmp_path)).fit(TEXTS, LABELS)
    assert saves == [1, 2, 3]  # only the third epoch ran again
    for name, tensor in weights(uninterrupted).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
    assert resumed.history_ == uninterrupted.history_
    assert not list(tmp_path.glob("*/checkpoint.pt"))  # removed once the fit completed
    # another fit (other data) never resumes from someone else's checkpoint
    other = student(tiny_bert, epochs=1, checkpoint_dir=str(tmp_path)).fit(TEXTS[:9], LABELS[:9])
    assert saves[-1] == 1 and other.history_[0]["epoch"] == 1


KILLED_CHILD = """
import os, signal, sys
from stillroom.students import BertStudent, _bert
from tests.students.test_bert import LABELS, TEXTS, student

real_save = _bert._Run._save

def save_then_die(run, state):
    real_save(run, state)
    if state["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a kill -9 or the OOM killer

_bert._Run._save = save_then_die
student(sys.argv[1], epochs=3, checkpoint_dir=sys.argv[2]).fit(TEXTS, LABELS)
"""


def test_a_fit_killed_with_sigkill_resumes_to_the_same_weights(tiny_bert, tmp_path):
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, tiny_bert, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (checkpoint,) = tmp_path.glob("*/checkpoint.pt")
    assert not list(tmp_path.glob("*/*.partial"))
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2
    resumed = student(tiny_bert, epochs=3, checkpoint_dir=str(tmp_path)).fit(TEXTS, LABELS)
    uninterrupted = student(tiny_bert, epochs=3).fit(TEXTS, LABELS)
    for name, tensor in weights(uninterrupted).items():
        assert torch.equal(tensor, weights(resumed)[name]), name


def test_early_stopping_keeps_the_best_epoch(tiny_bert):
    texts = TEXTS * 6  # 60 texts: a validation slice of 6
    model = student(tiny_bert, epochs=12, patience=1).fit(texts, LABELS * 6)
    history = model.history_
    assert all(h["agreement"] is not None for h in history)
    if len(history) < 12:  # stopped: the last epoch did not beat the best one
        assert history[-1]["agreement"] <= max(h["agreement"] for h in history[:-1])


def test_int8_is_smaller_and_agrees_with_the_full_student(tiny_bert, tmp_path):
    model = student(tiny_bert).fit(TEXTS, LABELS)
    small = model.quantized()
    assert small.is_quantized and not model.is_quantized
    assert (small.predict(TEXTS) == model.predict(TEXTS)).mean() >= 0.9
    full_dir, small_dir = model.save(tmp_path / "fp32"), small.save(tmp_path / "int8")
    assert (small_dir / "model-int8.pt").stat().st_size < 0.7 * (
        full_dir / "model.safetensors"
    ).stat().st_size
    again = BertStudent.load(small_dir)
    assert again.is_quantized and np.array_equal(
        again.predict_proba(TEXTS), small.predict_proba(TEXTS)
    )


@pytest.mark.parametrize(
    ("texts", "labels", "message"),
    [
        (TEXTS, ["pos"] * 10, "needs at least two classes among the teacher's labels"),
        (["good fun", "", "bad"], ["pos", "pos", "neg"], r"X\[1\] is an empty text"),
        ("good fun", ["pos"], "not a single string"),
        (TEXTS, LABELS[:3], "X has 10 texts but y has 3"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_bert, texts, labels, message):
    with pytest.raises(ValueError, match=message):
        student(tiny_bert).fit(texts, labels)


def test_a_base_that_is_not_a_bert_style_encoder_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "llama"
    )
    with pytest.raises(ValueError, match="is a llama model, not a BERT-style encoder"):
        BertStudent(base=str(tmp_path / "llama")).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="is not a transformers model folder"):
        BertStudent(base=str(tmp_path)).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="alpha=1.5 is out of range"):
        BertStudent(base=str(tmp_path), alpha=1.5).fit(TEXTS, LABELS)


def test_soft_labels_must_match_the_texts(tiny_bert):
    with pytest.raises(ValueError, match=r"proba has shape \(2, 2\), expected \(10, 2\)"):
        student(tiny_bert).fit_soft(TEXTS, [[0.5, 0.5]] * 2, ["neg", "pos"])


def test_load_refuses_a_folder_that_is_not_a_saved_student(tmp_path):
    with pytest.raises(ValueError, match="is not a saved BertStudent"):
        BertStudent.load(tmp_path)


def test_sklearns_parameter_checks():
    """scikit-learn's checks that need no fit. Its fitting checks build numeric X, which a text
    student refuses by design (as TfidfLogReg's xfail list in test_logreg.py records); what they
    check (fit returns self, clone, get/set_params, pickling, classes_ order) is checked on texts
    in test_it_learns_the_teachers_labels_and_follows_the_estimator_contract."""
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    name = "BertStudent"
    check_no_attributes_set_in_init(name, BertStudent())
    check_parameters_default_constructible(name, BertStudent())
    check_get_params_invariance(name, BertStudent())
    check_set_params(name, BertStudent())


@pytest.mark.slow
def test_the_bundled_minilm_learns_banking_intents_and_survives_int8(banking_rows, tmp_path):
    """The real default base (all-MiniLM-L6-v2 from its package) on 5 intents of the bundled
    data: 2 epochs on 200 records, measured on 100 others."""
    from transformers import pipeline

    intents = sorted({r["label"] for r in banking_rows})[:5]
    rows = [r for r in banking_rows if r["label"] in intents]
    train, test = rows[::2][:200], rows[1::2][:100]
    model = BertStudent(epochs=2, progress=False).fit(
        [r["text"] for r in train], [r["label"] for r in train]
    )
    texts, gold = [r["text"] for r in test], np.array([r["label"] for r in test])
    assert (model.predict(texts) == gold).mean() >= 0.8  # chance: 0.2
    small = model.quantized()
    assert (small.predict(texts) == model.predict(texts)).mean() >= 0.95
    classify = pipeline("text-classification", model=str(model.save(tmp_path / "bert")))
    assert classify(texts[0])[0]["label"] == model.predict(texts[:1])[0]


def test_integer_classes_stay_integers_after_load(tiny_bert, tmp_path):
    model = student(tiny_bert, epochs=1).fit(TEXTS, [1 if y == "pos" else 0 for y in LABELS])
    loaded = BertStudent.load(model.save(tmp_path / "ints"))
    assert loaded.classes_.tolist() == [0, 1] and loaded.predict(TEXTS[:1])[0] in (0, 1)


def test_linear_probing_trains_the_head_alone(tiny_bert):
    model = student(tiny_bert, epochs=1, probe_epochs=2).fit(TEXTS, LABELS)
    assert model.get_params()["probe_epochs"] == 2
    # the probe itself: only the head (and pooler) move, and the encoder is trainable after it
    run_owner = student(tiny_bert, probe_epochs=3)
    texts_ids = model.tokenizer_(TEXTS)["input_ids"]
    proba = np.array([[1.0, 0.0] if y == "neg" else [0.0, 1.0] for y in LABELS])
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    run = _bert._Run(
        run_owner, fresh, model.tokenizer_, texts_ids, proba, torch.device("cpu"), None
    )
    run._probe()
    after = fresh.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(_bert._is_head(k) for k in moved)
    assert all(p.requires_grad for p in fresh.parameters())


@pytest.mark.parametrize("forged_digest", [False, True])
def test_a_planted_checkpoint_is_never_unpickled(tiny_bert, tmp_path, monkeypatch, forged_digest):
    import json

    from stillroom.students import _torch
    from tests.planted import plant

    real_save = _bert._Run._save

    def save_then_die(run, state):
        real_save(run, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(_bert._Run, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        student(tiny_bert, epochs=2, checkpoint_dir=str(tmp_path)).fit(TEXTS, LABELS)
    monkeypatch.setattr(_bert._Run, "_save", real_save)
    (checkpoint,) = tmp_path.glob("*/checkpoint.pt")
    marker = tmp_path / "ran"
    plant(checkpoint, marker, torch_format=True)
    if forged_digest:  # whoever can write the folder can write the record too: torch refuses
        record = {"sha256": [_torch.sha256_of(checkpoint)]}
        (checkpoint.parent / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=str(checkpoint)):
        student(tiny_bert, epochs=2, checkpoint_dir=str(tmp_path)).fit(TEXTS, LABELS)
    assert not marker.exists()
