"""What labeling will cost before anything is paid: records, tokens and dollars per teacher.

Tokens are counted with tiktoken when its encoding for the model is at hand, else estimated at
four characters a token; answers already in the cache cost nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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


def estimate(config: Config) -> dict[str, Any]:
    table = read_source(config)
    t = config.teacher
    assert t.model is not None
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
            tokens = _generate_tokens(asked[0], sendable, cache)
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


@contextlib.contextmanager
def _cache(config: Config) -> Iterator[storage.ResponseCache | None]:
    """The response cache when there is one: estimating creates nothing."""
    if not (Path(config.store) / "cache.sqlite").exists():
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
    teacher: labelers.OpenAITeacher[Any], texts: list[str], cache: storage.ResponseCache | None
) -> _Tokens:
    """Every prompt's tokens, and max_tokens for each completion: what it cannot pass."""
    tokens = _Tokens()
    for text in texts:
        body = teacher.build_request(text)
        if not _missing(teacher, body, cache):
            tokens.cached += 1
            continue
        tokens.inputs += labelers.count_message_tokens(body["messages"], teacher.model)
        tokens.outputs += int(body["max_tokens"])
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
    return {
        "output tokens (max_tokens each, upper bound)": tokens.outputs,
        "token count": method,
        "price per 1M in/out": _price_text(price),
        "cost_usd (prompts only)": _cost(price, tokens.inputs, 0),
        "cost_usd (upper bound, all max_tokens long)": _cost(price, tokens.inputs, tokens.outputs),
    }


def _keyless(config: Config) -> labelers.Teacher:
    # estimating pays nothing, so it needs no key
    return build_teacher(
        config.model_copy(
            update={"teacher": config.teacher.model_copy(update={"api_key_env": None})}
        ),
        None,
    )
