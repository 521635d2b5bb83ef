"""Counting tokens before a call: tiktoken where it knows the model and has its encoding, else a
stated heuristic (4 characters a token). Used for tpm limits and `stillroom estimate`; budgets
use `message_token_bound`, which never counts fewer tokens than a provider can bill.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # the chat framing around each message
HEURISTIC = "heuristic: 4 characters per token"
BOUND_PER_MESSAGE = 16
"""Tokens a chat template may add around one message (role markers, separators) at most."""
BOUND_PER_REQUEST = 64
"""Tokens a chat template may add to a request (start tokens, a default system preamble)."""


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


def message_token_bound(messages: list[dict[str, str]], model: str) -> int:
    """The most prompt tokens a provider can bill for `messages`: what a budget reserves before a
    call, and above which a reported usage cannot be true.

    For a model tiktoken knows, its count (OpenAI bills what that tokenizer counts); for any
    other, the UTF-8 bytes of each message: no tokenizer emits more tokens than bytes (byte-level
    BPE and byte-fallback tokenizers take at least one byte a token), and a provider billing a
    token per character bills fewer, characters being at most bytes. Either way, with
    `BOUND_PER_MESSAGE` per message and `BOUND_PER_REQUEST` for the chat template's framing.
    """
    count, how = token_counter(model)
    if how == HEURISTIC:
        count = _utf8_bytes
    framing = BOUND_PER_REQUEST + BOUND_PER_MESSAGE * len(messages)
    return framing + sum(
        count(m.get("content") or "") + count(m.get("role") or "") for m in messages
    )


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
