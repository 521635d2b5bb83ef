"""What labeling will cost before anything is paid: records, tokens and dollars per teacher.

Tokens are counted with tiktoken when its encoding for the model is at hand, else estimated at
four characters a token; answers already in the cache cost nothing. A completion's length is
bounded by max_tokens, and expected from the completions of the same shape already paid for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stillroom import labelers, storage

from ._config import Config
from ._teacher import build_teacher, open_cache, read_source


@dataclass
class _Tokens:
    """What the requests not yet in the cache would send and get back."""

    cached: int = 0
    inputs: int = 0
    outputs: int = 0
    # what re-asking every off-label answer would add (classification only)
    retry_inputs: int = 0
    retry_outputs: int = 0
    # completions of the same shape already paid for, their output tokens in all, and what the
    # uncached ones would give back at their mean length (generate only)
    observed: int = 0
    observed_outputs: int = 0
    expected_outputs: int = 0


def estimate(config: Config) -> dict[str, Any]:
    table = read_source(config)
    t = config.teacher
    assert t.model is not None
    if t.provider == "recorded":
        return _recorded(config, table.column("id").to_pylist())
    if t.provider != "openai":
        return {
            "teacher": f"{t.provider} {t.model} (local)",
            "records": table.num_rows,
            "cost_usd": "0 (runs on this machine)",
        }
    teacher = _keyless(config)
    # a multi-label teacher asks one yes/no question per label: each is a request
    members = teacher.teachers if isinstance(teacher, labelers.MultiLabelTeacher) else [teacher]
    asked = [m for m in members if isinstance(m, labelers.OpenAITeacher)]
    texts = table.column("text").to_pylist()
    limit = t.max_input_chars
    sendable = [text for text in texts if limit is None or len(text) <= limit]
    with _cache(config) as cache:
        if config.task.kind == "generate":
            tokens = _generate_tokens(asked[0], sendable, cache, config.name)
        else:
            tokens = _classify_tokens(asked, sendable, cache, t.answer_retries)
    price = asked[0].price if t.known_price() is not None else None
    requests = len(sendable) * len(asked)
    head = {
        "teacher": f"openai {t.model} at {asked[0].endpoint_host}",
        "records": table.num_rows,
        "too long (not sent)": len(texts) - len(sendable),
        "requests": requests,
        "already cached": tokens.cached,
        "to label": requests - tokens.cached,
        "input tokens": tokens.inputs,
    }
    method = labelers.token_counter(t.model)[1]
    if config.task.kind == "generate":
        return head | _generate_cost(tokens, price, method)
    return head | _classify_cost(config, tokens, price, method)


def _recorded(config: Config, ids: list[str]) -> dict[str, Any]:
    """Recorded answers cost nothing now: how many records have one is what there is to know."""
    teacher = build_teacher(config)
    assert isinstance(teacher, labelers.RecordedTeacher)
    answered = sum(record_id in teacher.answers for record_id in ids)
    return {
        "teacher": f"recorded answers of {config.teacher.model} ({config.teacher.recorded_at})",
        "records": len(ids),
        "with a recorded answer": answered,
        "without one (each fails, no recorded answer)": len(ids) - answered,
        "cost_usd": "0 (nothing is called)",
    }


@contextlib.contextmanager
def _cache(config: Config) -> Iterator[storage.ResponseCache | None]:
    """The response cache when there is one: estimating creates nothing."""
    if not config.cache_path.exists():
        yield None
        return
    with open_cache(config) as cache:
        yield cache


def _missing(
    teacher: labelers.OpenAITeacher[Any],
    body: dict[str, Any],
    cache: storage.ResponseCache | None,
) -> bool:
    return cache is None or cache.get(teacher.cache_key(body)) is None


def _classify_tokens(
    asked: list[labelers.OpenAITeacher[Any]],
    texts: list[str],
    cache: storage.ResponseCache | None,
    answer_retries: int,
) -> _Tokens:
    model = asked[0].model
    count, _ = labelers.token_counter(model)
    tokens = _Tokens()
    for question in asked:
        answer_tokens = max(count(label) for label in question.task.labels) + 1
        for text in texts:
            body = question.build_request(text)
            if not _missing(question, body, cache):
                tokens.cached += 1
                continue
            tokens.inputs += labelers.count_message_tokens(body["messages"], model)
            tokens.outputs += answer_tokens
            # an off-label answer is asked again: the whole conversation, the answer (at most
            # max_tokens) and a reminder, once per teacher.answer_retries
            for round_ in range(1, answer_retries + 1):
                body = question.follow_up(body, "")
                sent = labelers.count_message_tokens(body["messages"], model)
                tokens.retry_inputs += sent + round_ * int(body["max_tokens"])
            tokens.retry_outputs += answer_tokens * answer_retries
    return tokens


def _generate_tokens(
    teacher: labelers.OpenAITeacher[Any],
    texts: list[str],
    cache: storage.ResponseCache | None,
    tag: str,
) -> _Tokens:
    """Every prompt's tokens, and max_tokens for each completion: what it cannot pass.

    The expected output is the mean length of the completions already paid for under the same
    config name (the ledger's tag), model and max_tokens, times the completions not yet cached:
    another name may ask other things, and another model or cap writes other lengths. Failed
    completions that were paid for count too, as they will be paid for again.
    """
    tokens = _Tokens()
    for text in texts:
        body = teacher.build_request(text)
        if not _missing(teacher, body, cache):
            tokens.cached += 1
            continue
        tokens.inputs += labelers.count_message_tokens(body["messages"], teacher.model)
        tokens.outputs += int(body["max_tokens"])
    if cache is not None:
        shape = (tag, teacher.model, int(teacher.task.max_tokens))
        tokens.observed, tokens.observed_outputs = cache.outputs(*shape)
    if tokens.observed:
        missing = len(texts) - tokens.cached
        tokens.expected_outputs = round(tokens.observed_outputs * missing / tokens.observed)
    return tokens


def _price_text(price: labelers.Price | None) -> str:
    return "unknown" if price is None else f"${price.input_per_1m} / ${price.output_per_1m}"


def _cost(price: labelers.Price | None, inputs: int, outputs: int) -> float | str:
    if price is None:
        return "unknown (set teacher.price)"
    return round(price.cost(inputs, outputs), 4)


def _classify_cost(
    config: Config, tokens: _Tokens, price: labelers.Price | None, method: str
) -> dict[str, Any]:
    retries = config.teacher.answer_retries
    worst = _cost(price, tokens.inputs + tokens.retry_inputs, tokens.outputs + tokens.retry_outputs)
    return {
        "output tokens (max)": tokens.outputs,
        "token count": method,
        "price per 1M in/out": _price_text(price),
        "cost_usd (answered at once)": _cost(price, tokens.inputs, tokens.outputs),
        f"cost_usd (max, {retries} re-ask(s) each)": worst,
    }


def _generate_cost(tokens: _Tokens, price: labelers.Price | None, method: str) -> dict[str, Any]:
    bound = {
        "output tokens (max_tokens each, upper bound)": tokens.outputs,
        "token count": method,
        "price per 1M in/out": _price_text(price),
        "cost_usd (prompts only)": _cost(price, tokens.inputs, 0),
        "cost_usd (upper bound, all max_tokens long)": _cost(price, tokens.inputs, tokens.outputs),
    }
    if not tokens.observed:
        return bound
    return bound | {
        "observed completions": tokens.observed,
        "output tokens (observed mean)": round(tokens.observed_outputs / tokens.observed, 2),
        "output tokens (expected)": tokens.expected_outputs,
        "cost_usd (expected, at the observed mean)": _cost(
            price, tokens.inputs, tokens.expected_outputs
        ),
    }


def _keyless(config: Config) -> labelers.Teacher:
    # estimating pays nothing, so it needs no key
    return build_teacher(
        config.model_copy(
            update={"teacher": config.teacher.model_copy(update={"api_key_env": None})}
        ),
        None,
    )
