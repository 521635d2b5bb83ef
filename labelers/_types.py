"""Plain values that cross the labelers' boundary: a classification task and a teacher's answer.

They are frozen dataclasses so flows can pass them around and tests can compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class LabelerError(Exception):
    """A problem a user can act on (bad task, unreachable model, missing key)."""


@dataclass(frozen=True)
class ClassifyTask:
    """What the teacher is asked: pick one of `labels` for each text.

    Parameters
    ----------
    labels : the label set, in the order probability vectors follow.
    instructions : one or two sentences saying what to classify and how.
    descriptions : optional label -> description, shown to the teacher (and used by zero-shot).
    examples : few-shot (text, label) pairs, shown as earlier turns of the conversation.
    system : a system prompt placed before the instructions (e.g. a persona or policy).
    """

    labels: tuple[str, ...]
    instructions: str = "Classify the text."
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: tuple[tuple[str, str], ...] = ()
    system: str = ""

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise LabelerError(
                f"a classification task needs at least 2 labels, got {len(self.labels)}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise LabelerError("the label set has duplicates")
        off = [label for _, label in self.examples if label not in self.labels]
        if off:
            raise LabelerError(f"few-shot example label {off[0]!r} is not in the label set")
        unknown = set(self.descriptions) - set(self.labels)
        if unknown:
            raise LabelerError(f"descriptions given for unknown labels: {sorted(unknown)}")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Answer:
    """The teacher's verdict on one record.

    `probs` follows the task's label order and sums to 1 over the label set; `coverage` is the
    share of the teacher's probability that fell on the label set before renormalising (None
    when the teacher gave no probabilities and `probs` is one-hot). A failure has `label=None`,
    `error` set to a short reason and `raw` holding what the teacher said.
    """

    id: str
    label: str | None
    probs: tuple[float, ...] | None = None
    coverage: float | None = None
    raw: str | None = None
    error: str | None = None
    usage: Usage = Usage()
    cached: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


class ResponseCache(Protocol):
    """Where paid answers are kept before they are used (storage.ResponseCache fits)."""

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None: ...

    def put(
        self,
        request: dict[str, Any],
        response: dict[str, Any],
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
    ) -> None: ...
