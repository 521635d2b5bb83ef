"""What labeling will cost before anything is paid: records, tokens and dollars per teacher.

Tokens are counted with tiktoken when its encoding for the model is at hand, else estimated at
four characters a token; answers already in the cache cost nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from stillroom import labelers

from ._config import Config
from ._ingest import read_records
from ._teacher import build_teacher, open_cache


def estimate(config: Config) -> dict[str, Any]:
    table = read_records(config.data, config.task.labels, multi_label=config.task.multi_label)
    t = config.teacher
    assert t.model is not None
    if t.provider != "openai":
        return {
            "teacher": f"{t.provider} {t.model} (local)",
            "records": table.num_rows,
            "cost_usd": "0 (runs on this machine)",
        }
    count, method = labelers.token_counter(t.model)
    teacher = _keyless(config)
    # a multi-label teacher asks one yes/no question per label: each is a request
    members = teacher.teachers if isinstance(teacher, labelers.MultiLabelTeacher) else [teacher]
    asked = [t for t in members if isinstance(t, labelers.OpenAITeacher)]
    texts = table.column("text").to_pylist()
    limit = t.max_input_chars
    too_long = sum(limit is not None and len(text) > limit for text in texts)
    texts = [text for text in texts if limit is None or len(text) <= limit]
    cached = inputs = outputs = retry_inputs = 0
    has_cache = (Path(config.store) / "cache.sqlite").exists()  # estimating creates nothing
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(open_cache(config)) if has_cache else None
        for question in asked:
            answer_tokens = max(count(label) for label in question.task.labels) + 1
            for text in texts:
                body = question.build_request(text)
                if cache is not None and cache.get(question.cache_key(body)) is not None:
                    cached += 1
                    continue
                inputs += labelers.count_message_tokens(body["messages"], t.model)
                outputs += answer_tokens
                # an off-label answer is asked again: the whole conversation, the answer (at
                # most max_tokens) and a reminder, once per teacher.answer_retries
                for round_ in range(1, t.answer_retries + 1):
                    body = question.follow_up(body, "")
                    sent = labelers.count_message_tokens(body["messages"], t.model)
                    retry_inputs += sent + round_ * int(body["max_tokens"])
    requests = len(texts) * len(asked)
    to_pay = requests - cached
    price = asked[0].price if t.known_price() is not None else None
    retry_outputs = outputs * t.answer_retries
    cost = "unknown (set teacher.price)" if price is None else round(price.cost(inputs, outputs), 4)
    worst = (
        "unknown (set teacher.price)"
        if price is None
        else round(price.cost(inputs + retry_inputs, outputs + retry_outputs), 4)
    )
    return {
        "teacher": f"openai {t.model} at {asked[0].endpoint_host}",
        "records": table.num_rows,
        "too long (not sent)": too_long,
        "requests": requests,
        "already cached": cached,
        "to label": to_pay,
        "input tokens": inputs,
        "output tokens (max)": outputs,
        "token count": method,
        "price per 1M in/out": "unknown"
        if price is None
        else f"${price.input_per_1m} / ${price.output_per_1m}",
        "cost_usd (answered at once)": cost,
        f"cost_usd (max, {t.answer_retries} re-ask(s) each)": worst,
    }


def _keyless(config: Config) -> labelers.Teacher:
    # estimating pays nothing, so it needs no key
    return build_teacher(
        config.model_copy(
            update={"teacher": config.teacher.model_copy(update={"api_key_env": None})}
        ),
        None,
    )
