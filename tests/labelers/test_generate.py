from dataclasses import replace

import pytest

from stillroom.labelers import (
    BUDGET_EXHAUSTED,
    EMPTY_COMPLETION,
    ClassifyTask,
    GenerateTask,
    LabelerError,
    OpenAITeacher,
    Price,
    Teacher,
    TokenStep,
    build_messages,
    prompt_hash,
)
from stillroom.storage import ResponseCache
from tests.conftest import SENTINEL_KEY
from tests.openai_server import REFUSAL_TEXT, expected_generation, generation_steps

TASK = GenerateTask(
    system="You write calm prose.",
    instructions="Continue the text.",
    examples=(("the sea", "is grey and wide"),),
    max_tokens=64,
    top_logprobs=5,
)
TEXTS = [(f"g{i}", f"prompt number {i} about a river") for i in range(30)]
EDGES = [
    ("fine", "a plain prompt"),
    ("empty", "EMPTY please"),
    ("refused", "REFUSE this one"),
    ("filtered", "FILTER this one"),
    ("fine2", "another plain prompt"),
]


def teacher(url, task=TASK, **kwargs) -> OpenAITeacher[GenerateTask]:
    kwargs.setdefault("backoff_s", 0.01)
    kwargs.setdefault("timeout_s", 2.0)
    return OpenAITeacher(task, model="fake", base_url=url, api_key=SENTINEL_KEY, **kwargs)


def steps_of(choice) -> tuple[TokenStep, ...]:
    """What the server sent, as the TokenSteps an answer stores."""
    return tuple(
        TokenStep(
            s["token"], s["logprob"], tuple((t["token"], t["logprob"]) for t in s["top_logprobs"])
        )
        for s in choice["logprobs"]["content"]
    )


def test_tokens_text_and_usage_are_exactly_what_the_server_sent(fake_openai):
    server, url = fake_openai()
    t = teacher(url, price=Price(1.0, 2.0))
    answers = t.label(TEXTS)
    assert isinstance(t, Teacher)
    assert [a.id for a in answers] == [record_id for record_id, _ in TEXTS]
    for (_, text), answer in zip(TEXTS, answers, strict=True):
        sent = expected_generation(t.build_request(text))
        choice = sent["choices"][0]
        assert answer.ok and answer.label is None and answer.probs is None
        assert answer.completion == answer.raw == choice["message"]["content"]
        assert answer.finish_reason == choice["finish_reason"] == "stop"
        assert answer.tokens == steps_of(choice)
        assert "".join(step.token for step in answer.tokens) == answer.completion
        assert all(len(step.top) == 5 and step.top[0][0] == step.token for step in answer.tokens)
        usage = sent["usage"]
        assert answer.usage == Price(1.0, 2.0).usage(
            usage["prompt_tokens"], usage["completion_tokens"]
        )
        assert usage["completion_tokens"] == len(answer.tokens)
    assert t.stats.teacher_calls == sum(server.billed.values()) == len(TEXTS)
    assert t.stats.output_tokens == sum(len(a.tokens or ()) for a in answers)


def test_a_completion_cut_at_max_tokens_is_a_success_flagged_length(fake_openai):
    _, url = fake_openai()
    answers = teacher(url, task=GenerateTask(max_tokens=8)).label(TEXTS)
    lengths = [len(generation_steps(text)) for _, text in TEXTS]
    assert min(lengths) <= 8 < max(lengths)  # both cases happen
    for answer, length in zip(answers, lengths, strict=True):
        assert answer.ok and answer.tokens is None  # no logprobs asked for
        assert answer.finish_reason == ("length" if length > 8 else "stop")
        assert len(answer.completion.split()) == min(length, 8)


def test_empty_refused_and_filtered_completions_are_kept_as_failures(fake_openai):
    server, url = fake_openai()
    answers = teacher(url, answer_retries=3).label(EDGES)
    assert [a.id for a in answers] == [record_id for record_id, _ in EDGES]
    fine, empty, refused, filtered, fine2 = answers
    assert fine.ok and fine2.ok
    assert empty.error == EMPTY_COMPLETION and empty.completion == empty.raw == ""
    assert empty.finish_reason == "stop" and empty.tokens == ()
    assert refused.error == "refusal" and refused.raw == REFUSAL_TEXT
    assert refused.completion is None and refused.finish_reason == "stop"
    assert (
        filtered.error == "refusal: content_filter" and filtered.finish_reason == "content_filter"
    )
    assert filtered.raw == filtered.completion
    assert all(a.usage.input_tokens > 0 and a.attempts == 1 for a in answers)
    assert sum(server.billed.values()) == len(EDGES)  # nothing is asked again


def test_every_fault_ends_completed_or_failed_and_nothing_is_billed_twice(fake_openai, tmp_path):
    faults = dict.fromkeys(("429", "500", "503", "timeout", "malformed", "drop", "off_label"), 0.1)
    server, url = fake_openai(faults=faults, retry_after="0.05", hang_s=1.0, seed=5)
    records = TEXTS + EDGES
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        t = teacher(url, cache=cache, timeout_s=0.3, max_retries=12, concurrency=8)
        answers = t.label(records)
    assert [a.id for a in answers] == [record_id for record_id, _ in records]
    assert all(a.ok or a.error for a in answers)
    assert {k for k, n in server.faults_sent.items() if n} >= {"429", "500", "503", "malformed"}
    assert server.faults_sent["off_label"] == 0  # means nothing for a completion
    assert max(server.billed.values()) == 1
    assert t.stats.teacher_calls == sum(server.billed.values()) and t.stats.retries > 0
    for (_, text), answer in zip(records, answers, strict=True):
        if answer.ok:
            choice = expected_generation(t.build_request(text))["choices"][0]
            assert answer.tokens == steps_of(choice)


def test_a_second_run_with_the_same_cache_calls_nothing_and_answers_the_same(fake_openai, tmp_path):
    server, url = fake_openai()
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first = teacher(url, cache=cache).label(TEXTS[:10] + EDGES)
        requests = server.requests
        again = teacher(url, cache=cache)
        second = again.label(TEXTS[:10] + EDGES)
    assert server.requests == requests and again.stats.teacher_calls == 0
    assert again.stats.cache_hits == len(first)
    assert all(b.cached and b.attempts == 0 for b in second)
    assert [replace(b, cached=False, attempts=1) for b in second] == first


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_logprobs": 21}, "top_logprobs must be between 0 and 20, got 21"),
        ({"top_logprobs": -1}, "top_logprobs must be between 0 and 20, got -1"),
        ({"max_tokens": 0}, "a generation task needs max_tokens >= 1, got 0"),
        ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
        ({"stop": ("",)}, "a stop sequence must not be empty"),
    ],
)
def test_invalid_generate_tasks_are_refused(settings, message):
    with pytest.raises(LabelerError) as caught:
        GenerateTask(**settings)
    assert str(caught.value) == message


def test_the_request_carries_the_tasks_settings_and_no_response_format(fake_openai):
    bodies = []
    server, url = fake_openai(on_request=bodies.append)
    task = GenerateTask(
        instructions="Continue.", max_tokens=12, temperature=0.7, stop=(" night",), top_logprobs=3
    )
    t = teacher(url, task=task, response_format="json_schema", temperature=0.0, top_logprobs=20)
    answers = t.label(TEXTS[:5])
    assert len(bodies) == 5
    body = bodies[0]
    assert body["max_tokens"] == 12 and body["temperature"] == 0.7
    assert body["stop"] == [" night"] and body["logprobs"] is True and body["top_logprobs"] == 3
    assert "response_format" not in body
    assert body["messages"][0] == {"role": "system", "content": "Continue."}
    assert sorted(b["messages"][1]["content"] for b in bodies) == sorted(t for _, t in TEXTS[:5])
    # the server honoured it: the word comes in some uncut completions, in none sent
    uncut = ["".join(s["token"] for s in generation_steps(text)[:12]) for _, text in TEXTS[:5]]
    stopped = [a for a, text in zip(answers, uncut, strict=True) if " night" in text]
    assert stopped and all(a.finish_reason == "stop" for a in stopped)
    assert all(" night" not in a.completion for a in answers)
    assert t.describe()["parameters"] == {
        "temperature": 0.7,
        "top_logprobs": 3,
        "max_tokens": 12,
        "stop": [" night"],
    }
    plain = teacher(url, task=GenerateTask()).build_request("hi")
    assert plain["messages"] == [{"role": "user", "content": "hi"}]
    assert not {"stop", "logprobs", "top_logprobs", "response_format"} & set(plain)


def test_the_prompt_hash_follows_everything_that_shapes_the_request():
    variants = [
        TASK,
        replace(TASK, system="Another persona."),
        replace(TASK, instructions="Summarise."),
        replace(TASK, examples=()),
        replace(TASK, max_tokens=65),
        replace(TASK, temperature=0.1),
        replace(TASK, stop=("\n",)),
        replace(TASK, top_logprobs=0),
    ]
    assert len({prompt_hash(t) for t in variants}) == len(variants)
    classify = ClassifyTask(("a", "b"), "Continue the text.", system="You write calm prose.")
    assert prompt_hash(classify) not in {prompt_hash(t) for t in variants}
    assert [m["role"] for m in build_messages(TASK, "x")] == ["system", "user", "assistant", "user"]
    assert build_messages(TASK, "x")[0]["content"] == "You write calm prose.\n\nContinue the text."


def test_the_budget_stops_generations_before_it_is_passed(fake_openai, tmp_path):
    server, url = fake_openai()
    price = Price(1000.0, 1000.0)  # about 0.08 USD of worst case a request here
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        t = teacher(url, price=price, budget=0.5, concurrency=4, cache=cache)
        answers = t.label(TEXTS)
    assert len(answers) == len(TEXTS)
    assert t.budget_exhausted and 0 < t.stats.teacher_calls < len(TEXTS)
    assert t.stats.cost_usd <= 0.5
    assert {a.error for a in answers if not a.ok} == {BUDGET_EXHAUSTED}
    assert sum(server.billed.values()) == t.stats.teacher_calls
