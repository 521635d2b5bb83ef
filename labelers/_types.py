"""Plain values that cross the labelers' boundary (a task, an answer, what labeling cost) and the
`Teacher` protocol every teacher follows, so a flow can drive any of them the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from ._parse import TokenStep

MULTI_LABEL_SEPARATOR = "|"
"""How a multi-label answer joins the labels that apply (``"billing|refund"``)."""

MULTI_LABEL_THRESHOLD = 0.5
"""The probability from which a label of a multi-label task counts as applying."""

BUDGET_EXHAUSTED = "budget exhausted"
"""The failure reason of a record whose request was not sent because it would pass the budget."""

EMPTY_COMPLETION = "empty completion"
"""The failure reason of a generation that came back with no text (or only white space)."""

REFUSAL = "refusal"
"""How the failure reason of a refused generation starts (the model's refusal text is in `raw`)."""

MALFORMED_ANSWER = "malformed answer"
"""How the failure reason of an answer with a field that cannot be true starts (usage that is not
a count within the request's bounds, logprobs that are not probabilities, content that is not
text); what it said is in `raw`, and the answer is asked again only when the user says so."""

TOOL_CALLS = "tool calls"
"""The failure reason of a classification answered with tool calls instead of a label (the
calls, as JSON, are in `raw`)."""

MAX_TOP_LOGPROBS = 20
"""The most alternatives per token that OpenAI-compatible endpoints return."""


class LabelerError(Exception):
    """A problem a user can act on (bad task, unreachable model, missing key)."""


@dataclass(frozen=True)
class ClassifyTask:
    """What the teacher is asked: pick one of `labels` for each text.

    Parameters
    ----------
    labels : tuple of str
        The label set, in the order probability vectors follow.
    instructions : str, default="Classify the text."
        One or two sentences saying what to classify and how.
    descriptions : dict of str to str, default={}
        Label -> description, shown to the teacher (and used by zero-shot).
    examples : tuple of (text, label), default=()
        Few-shot pairs, shown as earlier turns of the conversation.
    system : str, default=""
        A system prompt placed before the instructions (e.g. a persona or policy).
    rationale : bool, default=False
        Ask for a short rationale before the label, on a last line ``Label: <label>``; the
        answer keeps the rationale apart (`Answer.rationale`), and the label's distribution
        comes from the tokens after ``Label:`` (distilling step by step).
    """

    labels: tuple[str, ...]
    instructions: str = "Classify the text."
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: tuple[tuple[str, str], ...] = ()
    system: str = ""
    rationale: bool = False

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
class GenerateTask:
    """What the teacher is asked: write a completion for each text (the text is the user turn).

    Parameters
    ----------
    system : str, default=""
        A system prompt (e.g. a persona or policy).
    instructions : str, default=""
        What to write, placed after `system` in the same system message (no system message is
        sent when both are empty).
    examples : tuple of (prompt, completion), default=()
        Few-shot pairs, shown as earlier user/assistant turns of the conversation.
    max_tokens : int, default=256
        The most tokens a completion may have; a completion cut there is kept, with
        ``finish_reason == "length"``.
    temperature : float, default=0.0
        Sampling temperature.
    stop : tuple of str, default=()
        Sequences at which the endpoint stops generating.
    top_logprobs : int, default=0
        Alternatives per generated token to ask for (at most 20); 0 asks for no logprobs.

    Examples
    --------
    >>> task = GenerateTask(instructions="Summarise the text in one sentence.", max_tokens=64)
    >>> task.top_logprobs
    0
    """

    system: str = ""
    instructions: str = ""
    examples: tuple[tuple[str, str], ...] = ()
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise LabelerError(f"a generation task needs max_tokens >= 1, got {self.max_tokens}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise LabelerError(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}"
            )
        if self.temperature < 0:
            raise LabelerError(f"temperature must be >= 0, got {self.temperature}")
        if any(not sequence for sequence in self.stop):
            raise LabelerError("a stop sequence must not be empty")

    def parameters(self) -> dict[str, Any]:
        """What shapes each completion, as recorded in provenance and cache keys."""
        return {
            "temperature": self.temperature,
            "top_logprobs": self.top_logprobs,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


Task = ClassifyTask | GenerateTask
"""Either kind of task a teacher may be asked."""


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6

    def usage(self, input_tokens: int, output_tokens: int) -> Usage:
        """The tokens and what they cost at this price."""
        return Usage(input_tokens, output_tokens, self.cost(input_tokens, output_tokens))


@dataclass(frozen=True)
class Usage:
    """Tokens one answer used and what they cost; usages add up (`a + b`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass
class LabelStats:
    """What labeling cost: calls actually sent and paid, answers served from the cache, retries.

    Stats add up (`a + b`), e.g. over the per-label teachers of a multi-label task.
    """

    teacher_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: LabelStats) -> LabelStats:
        return LabelStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def paid(self, usage: Usage) -> None:
        """Count one call that was sent and paid."""
        self.teacher_calls += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_usd += usage.cost_usd


class SpendLedger(Protocol):
    """Spend and reservations kept where every process sharing a store sees them
    (storage.ResponseCache fits: its spend ledger, filed under its tag). What a call cost is
    booked by the cache's `put`; the ledger holds reservations for calls in flight."""

    def hold(self, usd: float, limit_usd: float) -> int | None:
        """Reserve `usd` unless what was spent, what live askers hold and `usd` would pass
        `limit_usd`; the hold's id, or None."""
        ...

    def unhold(self, hold: int) -> None:
        """End a reservation (its call is settled: booked by `put`, or failed)."""
        ...

    def book(self, request: dict[str, Any], cost_usd: float) -> None:
        """Record a cost without an answer (a call that may have been billed)."""
        ...

    def committed(self) -> float:
        """What was spent and what live askers hold, in dollars."""
        ...


@dataclass(frozen=True)
class Reservation:
    """What a call holds of a budget until it is settled (`hold`: its id in a ledger)."""

    usd: float
    hold: int | None = None


class Budget:
    """A hard cap on dollars, shared by every teacher that draws on it (the per-label teachers of
    a multi-label task draw on one). A call reserves its worst-case cost before it is sent and
    settles at what it really cost; a call that would pass the cap is not sent.

    Parameters
    ----------
    limit_usd : float
        What may be spent through this budget.
    ledger : SpendLedger, optional
        Where spend and reservations are kept when several processes draw on the budget at once
        (two runs of a config on one store): the cap then holds for all of them together, and
        over what the ledger already holds (earlier runs). It must be the cache the teachers
        store their answers in, whose `put` books what each call cost. None: this process only,
        from nothing spent.
    """

    def __init__(self, limit_usd: float, ledger: SpendLedger | None = None) -> None:
        self.limit_usd = limit_usd
        self.ledger = ledger
        self.spent_usd = 0.0  # through this object
        self.exhausted = False
        self._reserved_usd = 0.0

    def reserve(self, usd: float) -> Reservation | None:
        """Hold `usd` for a call; None (and `exhausted`) when that would pass the limit."""
        if self.ledger is not None:
            hold = self.ledger.hold(usd, self.limit_usd)
            if hold is None:
                self.exhausted = True
                return None
            return Reservation(usd, hold)
        if self.spent_usd + self._reserved_usd + usd > self.limit_usd:
            self.exhausted = True
            return None
        self._reserved_usd += usd
        return Reservation(usd)

    def release(self, reservation: Reservation) -> None:
        """End a call's reservation (once what it cost is spent, or it failed)."""
        if self.ledger is not None and reservation.hold is not None:
            self.ledger.unhold(reservation.hold)
        else:
            self._reserved_usd -= reservation.usd

    def spend(self, usd: float) -> None:
        """Count what a call cost (a ledger has it already, from the cache's `put`)."""
        self.spent_usd += usd

    def book(self, request: dict[str, Any], usd: float) -> None:
        """Count a cost no answer came with (a call that may have been billed), in the ledger
        too."""
        self.spent_usd += usd
        if self.ledger is not None:
            self.ledger.book(request, usd)

    def over(self) -> bool:
        """True when what is spent and held already passes the limit."""
        if self.ledger is not None:
            return self.ledger.committed() > self.limit_usd
        return self.spent_usd + self._reserved_usd > self.limit_usd


@dataclass(frozen=True)
class Answer:
    """The teacher's verdict on one record.

    `probs` follows the task's label order and sums to 1 over the label set; `coverage` is the
    share of the teacher's probability that fell on the label set before renormalising (None
    when the teacher gave no probabilities and `probs` is one-hot). A failure has `label=None`,
    `error` set to a short reason and `raw` holding what the teacher said.

    The answer to a `GenerateTask` has `label` and `probs` None and fills the last three fields:
    `completion` is the message's text exactly as sent (None when it had none, as in a refusal),
    `finish_reason` the endpoint's (``stop``, ``length``, ``content_filter``, ...) and `tokens`
    the generated tokens with their logprobs when they were asked for and returned. A completion
    cut at max_tokens is a success (``finish_reason == "length"``); an empty one fails with
    ``empty completion``; a refusal fails with a reason starting ``refusal``, its text in `raw`.
    A classification asked for a rationale first (`ClassifyTask.rationale`) keeps it in `rationale`.
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
    completion: str | None = None
    finish_reason: str | None = None
    tokens: tuple[TokenStep, ...] | None = None
    rationale: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


OnAnswer = Callable[[Answer], None]
"""Called with each answer as soon as it is known (progress bars)."""


@runtime_checkable
class Teacher(Protocol):
    """What a flow may ask of any teacher: label records, say what it is, say what it cost.

    `OpenAITeacher`, `TransformersTeacher`, `ZeroShotTeacher` and `MultiLabelTeacher` follow it;
    `OpenAITeacher` and `TransformersTeacher` also take a `GenerateTask`.
    """

    @property
    def task(self) -> Task:
        """What the teacher is asked (read-only here, so a classification teacher fits too)."""
        ...

    @property
    def stats(self) -> LabelStats:
        """Calls, cache hits, retries, tokens and dollars since the teacher was made."""
        ...

    @property
    def budget_exhausted(self) -> bool:
        """True once a call was not sent because it would have passed the budget."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance for manifests: provider, model, endpoint host, parameters; never a key."""
        ...

    def prepare(self) -> None:
        """Load what labeling needs (model weights) now rather than on the first record."""
        ...

    def label(
        self, records: Sequence[tuple[str, str]], on_answer: OnAnswer | None = None
    ) -> list[Answer]:
        """Label (id, text) pairs; answers come back in the same order."""
        ...


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


@runtime_checkable
class SharedCache(ResponseCache, Protocol):
    """A response cache several processes write at once (storage.ResponseCache fits): a request
    is claimed before it is sent, so a second asker waits for the first one's answer."""

    def claim(self, request: dict[str, Any], stale_s: float = ...) -> bool:
        """Take the right to send `request`; False when it is answered or another asker holds
        it."""
        ...

    def release(self, request: dict[str, Any]) -> None:
        """Give up a claim without an answer."""
        ...

    def forget(self, request: dict[str, Any], response: dict[str, Any]) -> bool:
        """Drop the stored answer to `request` if it is still `response` (one that could not be
        used, asked again); True when it was dropped."""
        ...
