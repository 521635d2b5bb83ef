"""Local generation: the tiny causal LM of test_local (random weights, word-level tokenizer) run
through the real loading and generation code; SmolLM2 when slow."""

import time
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stillroom.labelers import (  # noqa: E402
    EMPTY_COMPLETION,
    GenerateTask,
    LabelerError,
    ScoringTeacher,
    Teacher,
    TransformersTeacher,
    ZeroShotTeacher,
    build_messages,
)
from stillroom.storage import ResponseCache  # noqa: E402
from tests.labelers import test_local  # noqa: E402

tiny_lm = test_local.tiny_lm  # the same fixture: a tiny Llama saved to a folder, built once here

TASK = GenerateTask(instructions="classify the review .", max_tokens=12, top_logprobs=3)
TEXTS = [
    ("a", "a great film ."),
    ("b", "a bad movie . very very bad"),
    ("c", "the film"),
    ("d", "very great"),
]


def teacher(folder, task=TASK, **kwargs) -> TransformersTeacher[GenerateTask]:
    return TransformersTeacher(task, model=str(folder), **kwargs)


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(
        folder
    ).eval()


def logprobs_at_each_step(tok, model, text, token_ids):
    """(prompt length, the log-softmax of the logits at each generated position) from one plain
    forward pass over the prompt and the generated ids: no cache, no padding."""
    prompt = tok(
        tok.apply_chat_template(
            build_messages(TASK, text), tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    ).input_ids
    with torch.no_grad():
        logp = model(torch.tensor([prompt + token_ids])).logits[0].log_softmax(-1)
    return len(prompt), logp[len(prompt) - 1 : len(prompt) - 1 + len(token_ids)]


def test_top_logprobs_are_the_models_distribution(tiny_lm):
    tok, model = load(tiny_lm)
    answers = teacher(tiny_lm, batch_size=4).label(TEXTS)
    for (_, text), answer in zip(TEXTS, answers, strict=True):
        assert answer.ok and answer.label is None and answer.probs is None
        ids = tok.convert_tokens_to_ids([step.token for step in answer.tokens])
        prompt_tokens, expected = logprobs_at_each_step(tok, model, text, ids)
        assert answer.usage.input_tokens == prompt_tokens
        assert len(answer.tokens) == len(expected) > 0
        for step, token_id, row in zip(answer.tokens, ids, expected, strict=True):
            assert step.logprob == pytest.approx(row[token_id].item(), abs=1e-5)
            top = row.topk(3)
            assert [t for t, _ in step.top] == [tok.decode([i]) for i in top.indices.tolist()]
            assert [lp for _, lp in step.top] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert answer.completion == tok.decode(ids, skip_special_tokens=True)


def test_greedy_is_deterministic_and_left_padding_changes_nothing(tiny_lm):
    batched = teacher(tiny_lm, batch_size=4).label(TEXTS)
    assert len({len(text.split()) for _, text in TEXTS}) > 1  # prompts of several lengths
    again = teacher(tiny_lm, batch_size=4).label(TEXTS)
    assert again == batched
    alone = [teacher(tiny_lm, batch_size=1).label([record])[0] for record in TEXTS]
    assert [a.completion for a in alone] == [a.completion for a in batched]
    assert [[s.token for s in a.tokens] for a in alone] == [
        [s.token for s in a.tokens] for a in batched
    ]
    for a, b in zip(alone, batched, strict=True):
        assert [s.logprob for s in a.tokens] == pytest.approx(
            [s.logprob for s in b.tokens], abs=1e-5
        )
        assert a.usage == b.usage
        assert a.finish_reason == "stop"  # the tiny model ends on its end-of-sequence token
        assert a.usage.output_tokens == len(a.tokens) + 1  # that token counts as generated


def test_max_tokens_ends_with_length_and_a_stop_sequence_cuts(tiny_lm):
    full = teacher(tiny_lm).label(TEXTS[1:2])[0]
    words = full.completion.split()
    assert len(words) >= 3 and full.usage.output_tokens > 3

    short = teacher(tiny_lm, replace(TASK, max_tokens=3)).label(TEXTS[1:2])[0]
    assert short.ok and short.finish_reason == "length"
    assert len(short.tokens) == short.usage.output_tokens == 3
    assert short.tokens == full.tokens[:3]

    stop = words[2]
    cut = teacher(tiny_lm, replace(TASK, stop=("zzz", stop))).label(TEXTS[1:2])[0]
    assert cut.ok and cut.finish_reason == "stop"
    assert cut.completion == full.completion[: full.completion.index(stop)]
    assert cut.tokens == full.tokens[: len(cut.tokens)]
    # generation stopped once the stop sequence was written: its token counts, nothing after it
    assert cut.usage.output_tokens == len(cut.tokens) + 1 < full.usage.output_tokens

    first = teacher(tiny_lm, replace(TASK, stop=(words[0],))).label(TEXTS[1:2])[0]
    assert first.error == EMPTY_COMPLETION and first.completion == ""
    assert first.tokens == full.tokens[: len(first.tokens)] and len(first.tokens) < len(words)


def test_a_second_run_generates_nothing_and_answers_the_same(tiny_lm, tmp_path):
    task = replace(TASK, stop=("else",))
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        first = teacher(tiny_lm, task, cache=cache)
        answers = first.label(TEXTS)
        assert isinstance(first, Teacher)
        assert first.stats.teacher_calls == 4 and first.stats.cache_hits == 0
        assert first.stats.output_tokens == sum(a.usage.output_tokens for a in answers) > 0
        again = teacher(tiny_lm, task, cache=cache)
        cached = again.label(TEXTS)
        assert again._model is None  # nothing was loaded: every answer came from the cache
        assert again.stats.teacher_calls == 0 and again.stats.cache_hits == 4
        assert all(a.cached for a in cached)
        assert [replace(a, cached=False) for a in cached] == answers  # tokens exactly as made
        # another seed is another request
        other = teacher(tiny_lm, task, cache=cache, seed=1)
        other.label(TEXTS[:1])
        assert other.stats.teacher_calls == 1
    assert again.describe() == {
        "provider": "transformers",
        "model": str(tiny_lm),
        "endpoint_host": None,
        "parameters": {
            "temperature": 0.0,
            "top_logprobs": 3,
            "max_tokens": 12,
            "stop": ["else"],
            "seed": 0,
        },
    }


def test_sampling_is_seeded_per_batch(tiny_lm):
    task = replace(TASK, temperature=1.5, top_logprobs=0, max_tokens=8)
    sampled = teacher(tiny_lm, task).label(TEXTS)
    assert all(a.tokens is None for a in sampled)
    assert teacher(tiny_lm, task).label(TEXTS) == sampled
    # what ran before does not matter: the same batch samples the same completions
    busy = teacher(tiny_lm, task)
    busy.label(TEXTS[:2])
    assert busy.label(TEXTS) == sampled
    assert teacher(tiny_lm, task, seed=1).label(TEXTS) != sampled


def test_teachers_that_cannot_generate_refuse_a_generate_task():
    with pytest.raises(LabelerError) as error:
        ZeroShotTeacher(GenerateTask())
    assert str(error.value) == (
        "the zero-shot teacher cannot generate: use provider openai or transformers"
    )
    with pytest.raises(LabelerError, match="^the student teacher cannot generate: use provider"):
        ScoringTeacher(GenerateTask(), model="m", score=lambda texts: [], provider="student")


@pytest.mark.slow
def test_smollm2_writes_completions_with_top_logprobs():
    smol = TransformersTeacher(GenerateTask(max_tokens=16, top_logprobs=3))
    smol.prepare()  # loading is not generating: kept out of the timing
    start = time.perf_counter()
    answers = smol.label(
        [("1", "Name one colour of the sky."), ("2", "Say hello to a friend in French.")]
    )
    seconds = time.perf_counter() - start
    for answer in answers:
        assert answer.ok and answer.completion.strip()
        assert answer.finish_reason in ("stop", "length")
        assert answer.tokens and all(len(step.top) == 3 for step in answer.tokens)
        assert answer.tokens[0].top[0][1] >= answer.tokens[0].logprob  # highest first
    tokens = smol.stats.output_tokens
    print(f"\nSmolLM2 on CPU: {tokens} tokens in {seconds:.2f}s = {tokens / seconds:.1f} tokens/s "
          f"(batch of 2), {answers}")  # fmt: skip
