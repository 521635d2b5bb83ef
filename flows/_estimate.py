"""What labeling will cost before anything is paid: records, tokens and dollars per teacher.

Tokens are counted with tiktoken when its encoding for the model is at hand, else estimated at
four characters a token; answers already in the cache cost nothing.
"""

from __future__ import annotations

from typing import Any

import labelers
import storage
from flows._config import Config
from flows._ingest import read_records
from flows._pipeline import build_teacher, task_of


def estimate(config: Config) -> dict[str, Any]:
    table = read_records(config.data, config.task.labels)
    t = config.teacher
    assert t.model is not None
    if t.provider != "openai":
        return {
            "teacher": f"{t.provider} {t.model} (local)",
            "records": table.num_rows,
            "cost_usd": "0 (runs on this machine)",
        }
    count, method = labelers.token_counter(t.model)
    task = task_of(config)
    cache = (
        storage.ResponseCache(f"{config.store}/cache.sqlite")
        if storage.Store(config.store).root.exists()
        else None
    )
    teacher: labelers.OpenAITeacher = (
        build_teacher(config, None) if t.api_key_env is None else _keyless(config)
    )
    cached = inputs = 0
    for text in table.column("text").to_pylist():
        body = teacher.build_request(text)
        if (
            cache is not None
            and cache.get({"base_url": teacher.base_url, "body": body}) is not None
        ):
            cached += 1
            continue
        inputs += labelers.count_message_tokens(body["messages"], t.model)
    to_pay = table.num_rows - cached
    outputs = to_pay * (max(count(label) for label in task.labels) + 1)
    price = t.known_price()
    cost = (
        "unknown (set teacher.price)"
        if price is None
        else round((inputs * price.input_per_1m + outputs * price.output_per_1m) / 1e6, 4)
    )
    return {
        "teacher": f"openai {t.model} at {teacher.endpoint_host}",
        "records": table.num_rows,
        "already cached": cached,
        "to label": to_pay,
        "input tokens": inputs,
        "output tokens (max)": outputs,
        "token count": method,
        "price per 1M in/out": "unknown"
        if price is None
        else f"${price.input_per_1m} / ${price.output_per_1m}",
        "cost_usd (max)": cost,
    }


def _keyless(config: Config) -> labelers.OpenAITeacher:
    # estimating pays nothing, so it needs no key
    return build_teacher(
        config.model_copy(
            update={"teacher": config.teacher.model_copy(update={"api_key_env": None})}
        ),
        None,
    )
