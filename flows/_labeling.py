"""The labeling stage: ingest the records as a source version, label them in shards, and commit
every answer (labeled, or failed with its reason and the raw text) as a labeled version."""

from __future__ import annotations

import re
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from stillroom import labelers, storage

from ._config import Config
from ._ingest import source_card, source_licence
from ._teacher import read_source, task_of, terms_of

LABELED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("gold", pa.string()),
        ("label", pa.string()),
        ("probs", pa.list_(pa.float64())),
        ("coverage", pa.float64()),
        ("error", pa.string()),
        ("raw", pa.string()),
    ]
)

RATIONALE_SCHEMA = LABELED_SCHEMA.append(pa.field("rationale", pa.string()))
"""A version whose teacher gave a rationale before each label (task.rationale)."""

_TOP = pa.struct([("token", pa.string()), ("logprob", pa.float64())])
_STEP = pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("top", pa.list_(_TOP))])
GENERATED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("gold", pa.string()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("error", pa.string()),
        ("raw", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("tokens", pa.list_(_STEP)),
    ]
)
"""A generate version: the prompt as `text`, the reference output as `gold`, the completion with
its finish reason, what the answer cost, and per token its logprob and top alternatives (null
without logprobs)."""

Record = tuple[str, str]


class LabelingFailed(Exception):
    """Too few records were labeled; the version, with every failure and its reason, is
    committed all the same, and a re-run retries only what did not succeed."""


@dataclass(frozen=True)
class LabelingSummary:
    """What labeling gave and cost: the one summary behind the manifest and the report.

    `run` is what this run sent and paid (nothing when every answer came from the cache, or
    for a report on a stored version); `bought` is what the dataset's answers cost when they
    were bought, whenever that was.
    """

    records: int
    labeled: int
    failures: dict[str, int] = field(default_factory=dict)
    run: labelers.LabelStats = field(default_factory=labelers.LabelStats)
    bought: labelers.Usage = labelers.Usage()
    wall_s: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def failures_text(self) -> str:
        """'20 timeout, 3 off-label answer', most frequent first."""
        ranked = sorted(self.failures.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{n} {reason}" for reason, n in ranked) or "no failures"

    @classmethod
    def of(
        cls, answers: Sequence[labelers.Answer], run: labelers.LabelStats, wall_s: float
    ) -> LabelingSummary:
        return cls(
            records=len(answers),
            labeled=sum(a.ok for a in answers),
            failures=dict(Counter(a.error for a in answers if a.error)),
            run=run,
            bought=sum((a.usage for a in answers), labelers.Usage()),
            wall_s=wall_s,
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> LabelingSummary:
        """A stored version's summary: nothing was called in this run."""
        lab = manifest.get("labeling", {})
        bought = labelers.Usage(
            lab.get("input_tokens", 0), lab.get("output_tokens", 0), lab.get("cost_usd", 0.0)
        )
        return cls(manifest["rows"], lab.get("labeled", 0), lab.get("failures", {}), bought=bought)

    def manifest(self) -> dict[str, Any]:
        """The manifest's `labeling` section: what the dataset's answers are and cost."""
        return {
            "labeled": self.labeled,
            "failed": self.failed,
            "failures": self.failures,
            "input_tokens": self.bought.input_tokens,
            "output_tokens": self.bought.output_tokens,
            "cost_usd": round(self.bought.cost_usd, 6),
        }

    def report(self) -> dict[str, Any]:
        """report.json's `labeling` section: what this run did and paid."""
        return {
            "records": self.records,
            "labeled": self.labeled,
            "failed": self.failed,
            **asdict(self.run),
            "cost_usd": round(self.run.cost_usd, 6),
            "wall_s": round(self.wall_s, 3),
        }


def check_labeled(summary: LabelingSummary, ref: storage.DatasetRef, min_share: float) -> None:
    """Raise LabelingFailed when less than `min_share` of the records the teacher was asked
    about were labeled (records held back by the budget were not asked about)."""
    asked = summary.records - summary.failures.get(labelers.BUDGET_EXHAUSTED, 0)
    if asked == 0 or summary.labeled >= min_share * asked:
        return
    raise LabelingFailed(
        f"only {summary.labeled} of {asked} records were labeled ({summary.labeled / asked:.0%}, "
        f"below teacher.min_labeled {min_share:.0%}): {summary.failures_text()}. {ref} keeps "
        f"every failure with its reason (stillroom datasets show {ref} --failures 10); fix the "
        "cause and run the same command again: answers already paid come from the cache"
    )


def ingest(config: Config, store: storage.Store) -> storage.DatasetRef:
    """Read the records and commit them as the source dataset `NAME-source`."""
    table = read_source(config)
    licence = source_licence(config.data)
    metadata: dict[str, Any] = {
        "kind": "source",
        "data": config.data.model_dump(),
        "restrictions": storage.restrictions_of(licence.__dict__, None, config.data.restrictions),
    }
    language = source_card(config.data).get("language")
    if language:
        metadata["language"] = [language] if isinstance(language, str) else list(language)
    message = config.message or f"{table.num_rows} records read from {config.data.path}"
    return store.commit(
        f"{config.name}-source",
        table,
        licence=licence,
        metadata=metadata,
        message=message,
        command=command_line(),
    )


def shards(table: pa.Table, size: int) -> list[list[Record]]:
    pairs = list(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def commit_labels(
    config: Config,
    store: storage.Store,
    source: storage.DatasetRef,
    answers: Sequence[labelers.Answer],
    teacher: labelers.Teacher,
) -> storage.DatasetRef:
    """The labeled (or generated) dataset: every record, answered or failed with its reason and
    the raw answer."""
    table = store.load(source)
    by_id = {a.id: a for a in answers}
    ordered = [by_id[i] for i in table.column("id").to_pylist()]
    task = task_of(config)
    if isinstance(task, labelers.GenerateTask):
        answered, described = _generated(table, ordered), _generate_manifest(task)
        if isinstance(teacher, labelers.RecordedTeacher):  # made elsewhere, not shaped by task
            described = {"kind": "generate", "instructions": task.instructions}
    else:
        answered = _labeled(table, ordered, task.rationale)
        described = _classify_manifest(task, config.task.multi_label)
    summary = LabelingSummary.of(ordered, teacher.stats, 0.0).manifest()
    said = {"prompt_hash": labelers.prompt_hash(task), **teacher.describe()}
    metadata: dict[str, Any] = {
        "kind": "labeled",
        "task": described,
        # a recorded teacher's answers were not made with this prompt: it says so (None)
        "teacher": said,
        "terms": terms_of(config),
        "labeling": summary,
    }
    described_source = store.manifest(source)
    data_restrictions = (described_source.get("data") or {}).get("restrictions") or ()
    metadata["restrictions"] = storage.restrictions_of(
        described_source["licence"], metadata["terms"], data_restrictions
    )
    if described_source.get("language"):
        metadata["language"] = described_source["language"]
    licence = storage.Licence(**described_source["licence"])
    message = config.message or (
        f"{summary['labeled']} of {len(ordered)} records "
        f"{'completed' if isinstance(task, labelers.GenerateTask) else 'labeled'} by "
        f"{said.get('provider')} {said.get('model')}"
        + (f", {summary['failed']} failed" if summary["failed"] else "")
    )
    return store.commit(
        config.name,
        answered,
        licence=licence,
        parent=source,
        metadata=metadata,
        message=message,
        command=command_line(),
    )


_SECRET_KEY = re.compile(r"(key|token|secret|password)", re.IGNORECASE)


def command_line() -> str:
    """The command that is running, as a shell line (``stillroom label x.yaml -m ...``); the value
    of any ``--set`` whose key names a secret (key, token, ...) is written HIDDEN."""
    args = list(sys.argv)
    program = Path(args[0]).name if args else "python"
    words = ["stillroom" if program in ("stillroom", "__main__.py") else program]
    for arg in args[1:]:
        key, sep, _ = arg.partition("=")
        words.append(f"{key}=HIDDEN" if sep and _SECRET_KEY.search(key) else arg)
    return shlex.join(words)


def _labeled(
    source: pa.Table, answers: Sequence[labelers.Answer], rationale: bool = False
) -> pa.Table:
    columns = {
        "id": source.column("id"),
        "text": source.column("text"),
        "gold": source.column("gold"),
        "label": [a.label for a in answers],
        "probs": [list(a.probs) if a.probs is not None else None for a in answers],
        "coverage": [a.coverage for a in answers],
        "error": [a.error for a in answers],
        "raw": [a.raw for a in answers],
    }
    if not rationale:
        return pa.table(columns, schema=LABELED_SCHEMA)
    columns["rationale"] = [a.rationale for a in answers]
    return pa.table(columns, schema=RATIONALE_SCHEMA)


def _generated(source: pa.Table, answers: Sequence[labelers.Answer]) -> pa.Table:
    return pa.table(
        {
            "id": source.column("id"),
            "text": source.column("text"),
            "gold": source.column("gold"),
            "completion": [a.completion for a in answers],
            "finish_reason": [a.finish_reason for a in answers],
            "error": [a.error for a in answers],
            "raw": [a.raw for a in answers],
            "input_tokens": [a.usage.input_tokens for a in answers],
            "output_tokens": [a.usage.output_tokens for a in answers],
            "cost_usd": [a.usage.cost_usd for a in answers],
            "tokens": [_steps(a.tokens) for a in answers],
        },
        schema=GENERATED_SCHEMA,
    )


def _steps(tokens: Sequence[labelers.TokenStep] | None) -> list[dict[str, Any]] | None:
    if tokens is None:
        return None
    return [
        {
            "token": step.token,
            "logprob": step.logprob,
            "top": [{"token": token, "logprob": logprob} for token, logprob in step.top],
        }
        for step in tokens
    ]


def _classify_manifest(task: labelers.ClassifyTask, multi_label: bool) -> dict[str, Any]:
    return {
        "kind": "classify",
        "labels": list(task.labels),
        "instructions": task.instructions,
        "multi_label": multi_label,
        "rationale": task.rationale,
    }


def _generate_manifest(task: labelers.GenerateTask) -> dict[str, Any]:
    return {
        "kind": "generate",
        "max_tokens": task.max_tokens,
        "temperature": task.temperature,
        "stop": list(task.stop),
        "top_logprobs": task.top_logprobs,
        "instructions": task.instructions,
    }
