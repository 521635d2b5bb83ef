"""Multi-label classification as one yes/no question per label, so every label gets an exact
probability P(yes) from the same machinery (prompt, cache, budget, retries) as single-label."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ._openai import LabelStats
from ._types import Answer, ClassifyTask, LabelerError

YES_NO = ("no", "yes")


def binary_task(task: ClassifyTask, label: str) -> ClassifyTask:
    """The yes/no question asked about one label."""
    desc = task.descriptions.get(label)
    about = f' ("{desc}")' if desc else ""
    question = f'Does the label "{label}"{about} apply to the text? Answer yes or no.'
    return ClassifyTask(YES_NO, f"{task.instructions.strip()}\n\n{question}", system=task.system)


class MultiLabelTeacher:
    """Asks a teacher built by `make_teacher` one yes/no question per label.

    Parameters
    ----------
    task : the task; its labels are the candidate labels (any number may apply).
    make_teacher : builds a single-label teacher for a given (yes/no) task.
    threshold : P(yes) from which a label counts as applying.
    """

    def __init__(
        self,
        task: ClassifyTask,
        make_teacher: Callable[[ClassifyTask], Any],
        threshold: float = 0.5,
    ) -> None:
        if task.examples:
            raise LabelerError("few-shot examples are not supported for multi-label tasks yet")
        self.task = task
        self.threshold = threshold
        self.teachers = [make_teacher(binary_task(task, label)) for label in task.labels]
        self.budget_usd: float | None = None  # shared by the per-label teachers, in turn

    @property
    def stats(self) -> LabelStats:
        total = LabelStats()
        for teacher in self.teachers:
            for key, value in teacher.stats.__dict__.items():
                setattr(total, key, getattr(total, key) + value)
        return total

    @property
    def budget_exhausted(self) -> bool:
        return any(getattr(t, "budget_exhausted", False) for t in self.teachers)

    def describe(self) -> dict[str, Any]:
        return {**self.teachers[0].describe(), "multi_label": "one yes/no question per label"}

    def label(
        self,
        records: Sequence[tuple[str, str]],
        on_answer: Callable[[Answer], None] | None = None,
    ) -> list[Answer]:
        """Label (id, text) pairs; `label` is the applying labels joined by '|', `probs` P(yes) each."""
        per_label = []
        for teacher in self.teachers:
            if self.budget_usd is not None and hasattr(teacher, "budget_usd"):
                spent = sum(t.stats.cost_usd for t in self.teachers)
                teacher.budget_usd = max(0.0, self.budget_usd - spent + teacher.stats.cost_usd)
            per_label.append(teacher.label(records))
        answers = []
        for i, (record_id, _) in enumerate(records):
            answer = self._combine(record_id, [rows[i] for rows in per_label])
            answers.append(answer)
            if on_answer is not None:
                on_answer(answer)
        return answers

    def _combine(self, record_id: str, parts: list[Answer]) -> Answer:
        usage = parts[0].usage
        for part in parts[1:]:
            usage = replace(
                usage,
                input_tokens=usage.input_tokens + part.usage.input_tokens,
                output_tokens=usage.output_tokens + part.usage.output_tokens,
                cost_usd=usage.cost_usd + part.usage.cost_usd,
            )
        attempts = sum(p.attempts for p in parts)
        for label, part in zip(self.task.labels, parts, strict=True):
            if not part.ok:
                return Answer(
                    record_id,
                    None,
                    raw=part.raw,
                    error=f"{label}: {part.error}",
                    usage=usage,
                    attempts=attempts,
                )
        yes = tuple(p.probs[1] if p.probs is not None else float(p.label == "yes") for p in parts)
        coverages = [p.coverage for p in parts]
        coverage = None if None in coverages else min(c for c in coverages if c is not None)
        applying = "|".join(
            lab for lab, p in zip(self.task.labels, yes, strict=True) if p >= self.threshold
        )
        return Answer(
            record_id,
            applying,
            yes,
            coverage,
            raw=None,
            usage=usage,
            cached=all(p.cached for p in parts),
            attempts=attempts,
        )
