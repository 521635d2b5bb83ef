"""Multi-label classification as one yes/no question per label, so every label gets an exact
probability P(yes) from the same machinery (prompt, cache, budget, retries) as single-label."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._types import (
    MULTI_LABEL_SEPARATOR,
    MULTI_LABEL_THRESHOLD,
    Answer,
    ClassifyTask,
    LabelerError,
    LabelStats,
    OnAnswer,
    Teacher,
    Usage,
)

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
    task : ClassifyTask
        The task; its labels are the candidate labels (any number may apply).
    make_teacher : callable
        Builds a single-label teacher for a given (yes/no) task. To cap spending, give every
        teacher it builds the same `Budget`.
    threshold : float, default=MULTI_LABEL_THRESHOLD
        P(yes) from which a label counts as applying.
    """

    def __init__(
        self,
        task: ClassifyTask,
        make_teacher: Callable[[ClassifyTask], Teacher],
        threshold: float = MULTI_LABEL_THRESHOLD,
    ) -> None:
        if task.examples:
            raise LabelerError("few-shot examples are not supported for multi-label tasks yet")
        self.task = task
        self.threshold = threshold
        self.teachers = [make_teacher(binary_task(task, label)) for label in task.labels]

    @property
    def stats(self) -> LabelStats:
        return sum((t.stats for t in self.teachers), LabelStats())

    @property
    def budget_exhausted(self) -> bool:
        return any(t.budget_exhausted for t in self.teachers)

    def describe(self) -> dict[str, Any]:
        return {**self.teachers[0].describe(), "multi_label": "one yes/no question per label"}

    def prepare(self) -> None:
        for teacher in self.teachers:
            teacher.prepare()

    def label(
        self, records: Sequence[tuple[str, str]], on_answer: OnAnswer | None = None
    ) -> list[Answer]:
        """Label (id, text) pairs; `label` is the applying labels joined by
        `MULTI_LABEL_SEPARATOR`, `probs` P(yes) for each label."""
        per_label = [teacher.label(records) for teacher in self.teachers]
        answers = []
        for i, (record_id, _) in enumerate(records):
            answer = self._combine(record_id, [rows[i] for rows in per_label])
            answers.append(answer)
            if on_answer is not None:
                on_answer(answer)
        return answers

    def _combine(self, record_id: str, parts: list[Answer]) -> Answer:
        usage = sum((p.usage for p in parts), Usage())
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
        applying = MULTI_LABEL_SEPARATOR.join(
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
