"""A teacher that replays answers bought earlier (by an earlier job, another tool, or a published
dataset) and never calls anything: each record's answer is looked up by its id."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic

from ._local import TaskT
from ._parse import TokenStep, match_label
from ._types import (
    EMPTY_COMPLETION,
    Answer,
    ClassifyTask,
    LabelerError,
    LabelStats,
    OnAnswer,
    Price,
    Usage,
)

NO_RECORDED_ANSWER = "no recorded answer"
"""The failure reason of a record the file has no answer for (never invented)."""

MALFORMED_RECORDED_ANSWER = "malformed recorded answer"
"""The failure reason of a recorded answer that is not what its field should hold."""

_MISSING = object()


@dataclass(frozen=True)
class RecordedFields:
    """Where each part of a recorded answer is in a row of the file: a column name, or a dotted
    path into nested objects (``llm_labels.chatgpt``). Every field but `id` is optional.

    A classification needs `label` (the answer's text, matched to the task's labels as a live
    answer is) or `probs` (label -> probability, or a list in the task's label order), or
    both; `raw` is the unparsed answer kept with a failure; `rationale` what the model said
    before its label, when it was asked for one. A generation needs `completion`;
    `finish_reason` and `tokens` (a version's nested schema: ``[{token, logprob, top: [{token,
    logprob}]}]``) are kept when present. `input_tokens`, `output_tokens` and `cost_usd` say
    what the answer cost when it was bought.
    """

    id: str = "id"
    label: str = "label"
    probs: str = "probs"
    raw: str = "raw"
    rationale: str = "rationale"
    completion: str = "completion"
    finish_reason: str = "finish_reason"
    tokens: str = "tokens"
    input_tokens: str = "input_tokens"
    output_tokens: str = "output_tokens"
    cost_usd: str = "cost_usd"


def field_value(row: Mapping[str, Any], path: str) -> Any:
    """The value at `path` in a row, or `_MISSING`. A dotted path walks nested objects; keys
    that contain dots themselves (``gpt-3.5-turbo``) are found whole."""
    if path in row:
        return row[path]
    parts, node, i = path.split("."), row, 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            return _MISSING
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            return _MISSING
    return node


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise LabelerError(f"recorded answers file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise LabelerError(
                f"recorded answers {path} is not a readable Parquet file: {exc}"
            ) from None
        return rows
    if path.suffix not in (".jsonl", ".json"):
        raise LabelerError(f"recorded answers {path}: expected a .jsonl or .parquet file")
    if path.suffix == ".json":  # a whole-file array of objects, or JSON lines after all
        try:
            whole = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list) and all(isinstance(row, dict) for row in whole):
            return whole
    rows = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise LabelerError(f"recorded answers {path}: line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise LabelerError(f"recorded answers {path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


class RecordedTeacher(Generic[TaskT]):
    """Answers recorded elsewhere, replayed by record id: nothing is called and nothing paid.

    A record the answers lack fails with ``no recorded answer``; a recorded label that names
    none of the task's labels fails as a live one would (``off-label answer``, its text in
    `raw`); a value that is not what its field should hold fails with ``malformed recorded
    answer``. The provenance names the model that made the answers and when, not stillroom's
    prompt: the answers were not made with it.

    Parameters
    ----------
    task : ClassifyTask or GenerateTask
        What the answers answer (the labels a recorded label must be one of).
    answers : mapping of record id to row
        Each record's recorded row; `fields` says where its parts are.
    model : str
        The model that made the answers.
    recorded_at : str
        When the answers were made (an ISO date, or a year and month).
    fields : RecordedFields, optional
        Where each part of an answer is in a row.
    price : Price, optional
        What the model charged: an answer that records its tokens but not its cost is priced at
        it. Without either, an answer is recorded as costing nothing.
    source : dict, optional
        What the answers came from (a file name and its digest), recorded in provenance.
    """

    provider = "recorded"

    def __init__(
        self,
        task: TaskT,
        answers: Mapping[str, Mapping[str, Any]],
        *,
        model: str,
        recorded_at: str,
        fields: RecordedFields | None = None,
        price: Price | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.answers = answers
        self.model = model
        self.recorded_at = recorded_at
        self.fields = fields or RecordedFields()
        self.price = price
        self.source = dict(source or {})
        self.stats = LabelStats()  # nothing is sent, so nothing is counted

    @classmethod
    def from_file(
        cls,
        task: TaskT,
        path: str | Path,
        *,
        model: str,
        recorded_at: str,
        fields: RecordedFields | None = None,
        price: Price | None = None,
    ) -> RecordedTeacher[TaskT]:
        """The answers in a JSONL or Parquet file, one row per record; LabelerError when a row
        has no id, an id is there twice, or the file has none of the fields the task needs."""
        path = Path(path)
        fields = fields or RecordedFields()
        rows = read_rows(path)
        answers: dict[str, Mapping[str, Any]] = {}
        for number, row in enumerate(rows, 1):
            record_id = field_value(row, fields.id)
            if record_id is _MISSING or record_id is None:
                raise LabelerError(f"recorded answers {path}: row {number} has no {fields.id!r}")
            key = str(record_id)
            if key in answers:
                raise LabelerError(f"recorded answers {path}: id {key!r} is there twice")
            answers[key] = row
        needed = (
            [fields.label, fields.probs] if isinstance(task, ClassifyTask) else [fields.completion]
        )
        if rows and not any(field_value(row, f) is not _MISSING for row in rows for f in needed):
            given = ", ".join(sorted(rows[0]))
            wanted = " or ".join(repr(f) for f in needed)
            raise LabelerError(
                f"recorded answers {path} have no field {wanted} (the rows have: {given})"
            )
        source = {"file": path.name, "sha256": _digest(path), "answers": len(answers)}
        return cls(
            task,
            answers,
            model=model,
            recorded_at=recorded_at,
            fields=fields,
            price=price,
            source=source,
        )

    @property
    def budget_exhausted(self) -> bool:
        return False  # nothing is bought

    def prepare(self) -> None:
        """Nothing to load: the answers are in memory."""

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "endpoint_host": None,
            "prompt_hash": None,  # the answers were not made with stillroom's prompt
            "recorded_at": self.recorded_at,
            "parameters": {"source": self.source, "fields": self._fields_used()},
        }

    def _fields_used(self) -> dict[str, str]:
        return {k: v for k, v in vars(self.fields).items() if v != getattr(RecordedFields, k)}

    def label(
        self, records: Sequence[tuple[str, str]], on_answer: OnAnswer | None = None
    ) -> list[Answer]:
        """The recorded answer of each (id, text) pair, in the same order."""
        answers = []
        for record_id, _ in records:
            answer = self._answer(record_id)
            answers.append(answer)
            if on_answer is not None:
                on_answer(answer)
        return answers

    def _answer(self, record_id: str) -> Answer:
        row = self.answers.get(record_id)
        if row is None:
            return Answer(record_id, None, error=NO_RECORDED_ANSWER)
        try:
            usage = self._usage(row)
            if isinstance(self.task, ClassifyTask):
                return self._classified(record_id, row, self.task, usage)
            return self._generated(record_id, row, usage)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            return Answer(record_id, None, raw=str(exc)[:500], error=MALFORMED_RECORDED_ANSWER)

    def _get(self, row: Mapping[str, Any], name: str) -> Any:
        value = field_value(row, getattr(self.fields, name))
        return None if value is _MISSING else value

    def _usage(self, row: Mapping[str, Any], counted_outputs: int = 0) -> Usage:
        """What the answer cost when it was bought: its recorded cost, else its tokens at the
        price (output tokens counted from its recorded tokens when it does not say)."""
        inputs, outputs = self._get(row, "input_tokens"), self._get(row, "output_tokens")
        cost = self._get(row, "cost_usd")
        tokens_in = _amount(inputs or 0, "input_tokens", whole=True)
        tokens_out = _amount(outputs or counted_outputs, "output_tokens", whole=True)
        if cost is not None:
            return Usage(int(tokens_in), int(tokens_out), _amount(cost, "cost_usd"))
        if self.price is not None:
            return self.price.usage(int(tokens_in), int(tokens_out))
        return Usage(int(tokens_in), int(tokens_out))

    def _classified(
        self, record_id: str, row: Mapping[str, Any], task: ClassifyTask, usage: Usage
    ) -> Answer:
        said, given, raw = self._get(row, "label"), self._get(row, "probs"), self._get(row, "raw")
        if said is None and given is None:
            if raw is None:
                return Answer(record_id, None, error=NO_RECORDED_ANSWER)
            return Answer(record_id, None, raw=str(raw), error="off-label answer", usage=usage)
        label = None if said is None else match_label(str(said), task.labels)
        if said is not None and label is None:
            return Answer(record_id, None, raw=str(said), error="off-label answer", usage=usage)
        why = self._get(row, "rationale")
        why = None if why is None else str(why)
        if given is None:
            assert label is not None
            onehot = tuple(float(lab == label) for lab in task.labels)
            return Answer(
                record_id, label, onehot, None, raw=_text(raw, said), usage=usage, rationale=why
            )
        probs, coverage = _distribution(given, task.labels)
        if label is None:
            label = task.labels[max(range(len(probs)), key=probs.__getitem__)]
        return Answer(
            record_id, label, probs, coverage, raw=_text(raw, said), usage=usage, rationale=why
        )

    def _generated(self, record_id: str, row: Mapping[str, Any], usage: Usage) -> Answer:
        text = self._get(row, "completion")
        if text is None:
            return Answer(record_id, None, error=NO_RECORDED_ANSWER)
        if not isinstance(text, str):
            raise TypeError(f"completion is {type(text).__name__}, not text")
        finish = self._get(row, "finish_reason")
        steps = None if self._get(row, "tokens") is None else _steps(self._get(row, "tokens"))
        if steps and not usage.output_tokens:  # the tokens it recorded say how many there were
            usage = self._usage(row, len(steps))
        answer = Answer(
            record_id,
            None,
            raw=text,
            usage=usage,
            completion=text,
            finish_reason=None if finish is None else str(finish),
            tokens=steps,
        )
        return answer if text.strip() else replace(answer, error=EMPTY_COMPLETION)


def _text(raw: Any, said: Any) -> str | None:
    value = raw if raw is not None else said
    return None if value is None else str(value)


def _amount(value: Any, name: str, *, whole: bool = False) -> float:
    """A recorded count or cost: a finite number from 0 (a whole one for a count); ValueError
    otherwise (a negative or infinite one would corrupt what a version says it cost)."""
    if isinstance(value, str):
        value = float(value)  # ValueError when it is not a number
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} is {value!r}, not a number")
    if not math.isfinite(value) or value < 0 or (whole and value != int(value)):
        raise ValueError(f"{name} is {value!r}, not a {'count' if whole else 'number'} from 0")
    return float(value)


def _logprob(value: Any) -> float:
    """A recorded logprob: finite and at most 0 (a hair above is rounding)."""
    number = float(value)
    if not math.isfinite(number) or number > 1e-5:
        raise ValueError(f"logprob {number!r} is not the log of a probability")
    return min(number, 0.0)


def _distribution(given: Any, labels: Sequence[str]) -> tuple[tuple[float, ...], float | None]:
    """A recorded distribution over the task's labels, renormalised, and the share of its mass
    that fell on them (a label -> probability mapping may name others)."""
    if isinstance(given, Mapping):
        values = {str(k): float(v) for k, v in given.items()}
        if not all(math.isfinite(v) and v >= 0 for v in values.values()):
            raise ValueError(f"probs {list(values.values())[:5]} is not a distribution")
        matched = {match_label(k, labels): v for k, v in values.items()}
        row = [matched.get(label, 0.0) for label in labels]
        total = sum(values.values())
    elif isinstance(given, Sequence) and not isinstance(given, str):
        if len(given) != len(labels):
            raise ValueError(f"probs has {len(given)} values for {len(labels)} labels")
        row = [float(v) for v in given]
        total = sum(row)
    else:
        raise TypeError(f"probs is {type(given).__name__}, not a list or a mapping")
    if not all(math.isfinite(p) and p >= 0 for p in row) or sum(row) <= 0:
        raise ValueError(f"probs {row[:5]} is not a distribution over the labels")
    on_labels = sum(row)
    return tuple(p / on_labels for p in row), min(1.0, on_labels / total)


def _steps(steps: Any) -> tuple[TokenStep, ...]:
    """Per-token logprobs in a version's nested schema."""
    if not isinstance(steps, Sequence) or isinstance(steps, str):
        raise TypeError(f"tokens is {type(steps).__name__}, not a list")
    return tuple(
        TokenStep(
            str(step["token"]),
            _logprob(step["logprob"]),
            tuple((str(alt["token"]), _logprob(alt["logprob"])) for alt in step.get("top") or ()),
        )
        for step in steps
    )
