"""Local teachers: a tiny causal LM built here from a config (random weights, tiny tokenizer) run
through the real loading and scoring code; the bundled MiniLM for zero-shot; SmolLM2 when slow."""

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stillroom.labelers import (  # noqa: E402
    ClassifyTask,
    LabelerError,
    TransformersTeacher,
    ZeroShotTeacher,
    build_messages,
)
from stillroom.storage import ResponseCache  # noqa: E402

WORDS = [
    "system",
    "user",
    "assistant",
    "classify",
    "the",
    "review",
    "answer",
    "with",
    "exactly",
    "one",
    "of",
    "these",
    "labels",
    "and",
    "nothing",
    "else",
    "-",
    ":",
    "very",
    "positive",
    "negative",
    "neutral",
    "a",
    "great",
    "film",
    "bad",
    "movie",
    ".",
]
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TASK = ClassifyTask(("very positive", "very negative", "neutral"), "classify the review.")
TEXTS = [("a", "a great film ."), ("b", "a bad movie ."), ("c", "the film")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm")
    vocab = {t: i for i, t in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def brute_force(folder, text):
    """Each label's log-likelihood from a full forward pass with no cache, softmaxed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = (
        AutoTokenizer.from_pretrained(folder),
        AutoModelForCausalLM.from_pretrained(folder).eval(),
    )
    messages = build_messages(TASK, text)
    prompt = tok(
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    ).input_ids
    scores = []
    for label in TASK.labels:
        ids = tok(label, add_special_tokens=False).input_ids + [tok.eos_token_id]
        with torch.no_grad():
            logp = model(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        scores.append(sum(logp[len(prompt) + i - 1, t].item() for i, t in enumerate(ids)))
    top = max(scores)
    z = sum(math.exp(s - top) for s in scores)
    return [math.exp(s - top) / z for s in scores]


def test_label_scores_are_exact_and_cached(tiny_lm, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    teacher = TransformersTeacher(TASK, model=str(tiny_lm), cache=cache, label_batch=2)
    answers = teacher.label(TEXTS)
    for (_, text), answer in zip(TEXTS, answers, strict=True):
        assert answer.coverage == 1.0 and answer.ok
        assert list(answer.probs) == pytest.approx(brute_force(tiny_lm, text), abs=1e-5)
        assert answer.label == TASK.labels[max(range(3), key=answer.probs.__getitem__)]
    again = TransformersTeacher(TASK, model=str(tiny_lm), cache=cache)
    assert [a.probs for a in again.label(TEXTS)] == [a.probs for a in answers]
    assert again.stats.teacher_calls == 0 and again.stats.cache_hits == 3
    assert again._model is None  # nothing was loaded: every answer came from the cache


def test_a_rationale_comes_first_and_the_labels_are_scored_after_it(tiny_lm, tmp_path):
    """Distilling step by step with a local teacher: a greedy rationale, then each label's exact
    log-likelihood after it and a last line "Label:", checked against a by-hand reference (a full
    forward pass per token, no cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = ClassifyTask(TASK.labels, TASK.instructions, rationale=True)
    cache = ResponseCache(tmp_path / "c.sqlite")
    teacher = TransformersTeacher(task, model=str(tiny_lm), cache=cache, rationale_tokens=6)
    answers = teacher.label(TEXTS)

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()

    def logp(ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].log_softmax(-1)

    for (_, text), answer in zip(TEXTS, answers, strict=True):
        prompt = tok(
            tok.apply_chat_template(
                build_messages(task, text), tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        ).input_ids
        ids = list(prompt)
        while len(ids) - len(prompt) < 6 and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(int(logp(ids)[-1].argmax()))
        written = [t for t in ids[len(prompt) :] if t != tok.eos_token_id]
        why = tok.decode(written, skip_special_tokens=True).split("Label:")[0].strip()
        tail = f"{why}\nLabel:" if why else "Label:"
        head = prompt + tok(tail, add_special_tokens=False).input_ids
        scores = []
        for label in task.labels:
            label_ids = tok(" " + label, add_special_tokens=False).input_ids + [tok.eos_token_id]
            out = logp(head + label_ids)
            scores.append(sum(out[len(head) + i - 1, t].item() for i, t in enumerate(label_ids)))
        top = max(scores)
        z = sum(math.exp(x - top) for x in scores)
        assert answer.rationale == (why or None)
        assert list(answer.probs) == pytest.approx(
            [math.exp(x - top) / z for x in scores], abs=1e-5
        )
        assert answer.usage.output_tokens == len(ids) - len(prompt) > 0
    assert any(a.rationale for a in answers)
    # cached with the rationale: a second teacher computes nothing and answers the same
    again = TransformersTeacher(task, model=str(tiny_lm), cache=cache, rationale_tokens=6)
    assert [(a.probs, a.rationale) for a in again.label(TEXTS)] == [
        (a.probs, a.rationale) for a in answers
    ]
    assert again.stats.cache_hits == 3 and again._model is None


def test_missing_model_folder_is_a_clear_error():
    with pytest.raises(LabelerError, match="teacher model folder not found: /no/such/model"):
        TransformersTeacher(TASK, model="/no/such/model").label(TEXTS[:1])


def test_zero_shot_with_the_bundled_minilm(tmp_path):
    task = ClassifyTask(("card_arrival", "exchange_rate", "pin_blocked"), "Intent.")
    teacher = ZeroShotTeacher(task, cache=ResponseCache(tmp_path / "c.sqlite"))
    answers = teacher.label(
        [
            ("1", "My new card still has not arrived"),
            ("2", "What rate do you use for euros?"),
            ("3", "I typed the wrong PIN three times and now it is blocked"),
        ]
    )
    assert [a.label for a in answers] == ["card_arrival", "exchange_rate", "pin_blocked"]
    assert all(sum(a.probs) == pytest.approx(1.0) and a.coverage == 1.0 for a in answers)


@pytest.mark.slow
def test_smollm2_gguf_teacher_scores_real_labels():
    task = ClassifyTask(("positive", "negative"), "Classify the sentiment of the movie review.")
    answers = TransformersTeacher(task).label(
        [
            ("1", "An absolute masterpiece, I loved every minute."),
            ("2", "Dreadful. Boring, badly acted and far too long."),
        ]
    )
    assert all(a.ok and sum(a.probs) == pytest.approx(1.0) for a in answers)
    assert answers[0].probs[0] > answers[1].probs[0]  # more positive for the praising review


def test_a_scoring_function_teaches_through_the_cache(tmp_path):
    from stillroom.labelers import ScoringTeacher

    task = ClassifyTask(("neg", "pos"))
    calls = []

    def score(texts):
        calls.append(list(texts))
        return [[0.2, 0.8] if "good" in t else [0.9, 0.1] for t in texts]

    records = [("1", "good film"), ("2", "bad film"), ("3", "good plot")]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        teacher = ScoringTeacher(
            task, model="rules-v1", score=score, provider="rules", parameters={"v": 1}, cache=cache
        )
        answers = teacher.label(records)
        assert [a.label for a in answers] == ["pos", "neg", "pos"]
        assert answers[0].probs == (0.2, 0.8) and answers[0].usage.cost_usd == 0.0
        assert teacher.describe() == {
            "provider": "rules",
            "model": "rules-v1",
            "endpoint_host": None,
            "parameters": {"v": 1},
        }
        again = ScoringTeacher(task, model="rules-v1", score=score, provider="rules",
                               parameters={"v": 1}, cache=cache)  # fmt: skip
        assert [a.cached for a in again.label(records)] == [True] * 3
        assert len(calls) == 1 and again.stats.cache_hits == 3
        # other parameters (another scorer) are another cache key
        other = ScoringTeacher(
            task, model="rules-v1", score=score, parameters={"v": 2}, cache=cache
        )
        other.label(records[:1])
        assert len(calls) == 2


def test_a_scoring_function_of_the_wrong_shape_is_an_error():
    from stillroom.labelers import ScoringTeacher

    teacher = ScoringTeacher(ClassifyTask(("a", "b", "c")), model="m", score=lambda t: [[1.0]])
    with pytest.raises(LabelerError, match="one row of 3 probabilities per text expected"):
        teacher.label([("1", "x")])


@pytest.mark.parametrize("row", [[0.5, float("nan")], [0.0, 0.0], [1.5, -0.5], [0.3, 0.3]])
def test_a_scoring_function_must_give_distributions(row):
    from stillroom.labelers import ScoringTeacher

    teacher = ScoringTeacher(ClassifyTask(("a", "b")), model="m", score=lambda t: [row])
    with pytest.raises(LabelerError, match="not a probability distribution over the task's"):
        teacher.label([("1", "x")])


@pytest.mark.parametrize(
    "poison",
    [
        {"probs": [float("nan"), float("nan")]},
        {"probs": [1000.0, 0.0]},
        {"probs": [0.5]},
        {"probs": "pos"},
        {"probs": [None, 1.0]},
        {},
    ],
)
def test_a_cached_answer_a_local_teacher_did_not_write_is_computed_again(tmp_path, poison):
    from stillroom.labelers import ScoringTeacher

    task = ClassifyTask(("neg", "pos"))
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        teacher = ScoringTeacher(task, model="r", score=lambda ts: [[0.3, 0.7] for _ in ts],
                                 cache=cache)  # fmt: skip
        teacher.label([("1", "text")])
        (key,) = [k for k in [teacher._key("text")]]
        cache.put(key, poison)  # an edited cache, or a crafted line of `cache import`
        (answer,) = teacher.label([("1", "text")])
    assert answer.ok and answer.probs == (0.3, 0.7) and not answer.cached
