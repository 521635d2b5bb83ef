"""Counting tokens before a call: tiktoken where it knows the model and has its encoding, else a
stated heuristic (4 characters a token). Used for tpm limits, budgets and `stillroom estimate`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # the chat framing around each message
HEURISTIC = "heuristic: 4 characters per token"


@functools.cache
def token_counter(model: str) -> tuple[Callable[[str], int], str]:
    """(count(text), how it counts) for `model`; tried once per model and process."""
    try:
        import tiktoken

        encoding = tiktoken.encoding_for_model(model)
        return (lambda text: len(encoding.encode(text))), f"tiktoken {encoding.name}"
    except Exception:  # unknown model, or the encoding cannot be fetched offline
        return (lambda text: max(1, len(text) // CHARS_PER_TOKEN)), HEURISTIC


def count_message_tokens(messages: list[dict[str, str]], model: str) -> int:
    count, _ = token_counter(model)
    return sum(count(m.get("content") or "") + TOKENS_PER_MESSAGE for m in messages)
