"""The labeling stage: ingest the records as a source version, label them in shards, and commit
every answer (labeled, or failed with its reason and the raw text) as a labeled version."""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stillroom import labelers, storage

from ._config import SOURCE_SUFFIX, Config
from ._incremental import Plan, Tally, kept_rows
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
    # an incremental run's plan: the version it grew from, how many records were new, edited,
    # retried, kept (None: every record was labeled)
    incremental: dict[str, Any] | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def failures_text(self) -> str:
        """'20 timeout, 3 off-label answer', most frequent first."""
        ranked = sorted(self.failures.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{n} {reason}" for reason, n in ranked) or "no failures"

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
            "failures": dict(self.failures),
            "incremental": self.incremental,
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
        f"{config.name}{SOURCE_SUFFIX}",
        table,
        licence=licence,
        metadata=metadata,
        message=message,
        command=command_line(),
    )


def labeled_batches(
    store: storage.Store,
    source: storage.DatasetRef,
    plan: Plan,
    label: LabelShards,
    shard_size: int,
    rationale: bool,
    generate: bool,
    counted: Counted,
    tally: Tally,
) -> Iterator[pa.RecordBatch]:
    """The rows of the version being built, as they are answered: first the rows the base
    version keeps, then each shard of the records to label, answered by `label` (a Prefect task,
    or work sent to a cluster) and turned into rows at once, so no more than a shard of answers
    is ever held. Rows come out in batches of at least `_BATCH_ROWS` (a Parquet row group
    each)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    answered = _answered(
        store, source, plan, label, shard_size, rationale, generate, counted, tally
    )
    for batch in itertools.chain(_counted_kept(store, plan, counted), answered):
        pending.append(batch)
        rows += batch.num_rows
        if rows >= _BATCH_ROWS:
            yield from pa.Table.from_batches(pending).combine_chunks().to_batches()
            pending, rows = [], 0
    if pending:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


_BATCH_ROWS = 8192


def _counted_kept(store: storage.Store, plan: Plan, counted: Counted) -> Iterator[pa.RecordBatch]:
    for batch in kept_rows(store, plan):
        counted.add_kept(batch)
        yield batch


def asked_once(
    label: Callable[[list[Record]], Sequence[labelers.Answer]], records: list[Record]
) -> tuple[list[labelers.Answer], int]:
    """Label `records`, asking the teacher once per distinct text (the same text is the same
    request); returns every record's answer and how many were copies."""
    first: dict[str, str] = {}
    unique = [(rid, text) for rid, text in records if first.setdefault(text, rid) == rid]
    if len(unique) == len(records):
        return list(label(records)), 0
    by_id = {a.id: a for a in label(unique)}
    answers = [
        by_id[rid] if rid in by_id else replace(by_id[first[text]], id=rid, cached=True)
        for rid, text in records
    ]
    return answers, len(records) - len(unique)


LabelShards = Callable[[Iterator[list[Record]]], Iterator[Sequence[labelers.Answer]]]
"""Answers each shard of records it is given, in the order given (it may read ahead: a cluster
labels several shards at once)."""


def _answered(
    store: storage.Store,
    source: storage.DatasetRef,
    plan: Plan,
    label: LabelShards,
    shard_size: int,
    rationale: bool,
    generate: bool,
    counted: Counted,
    tally: Tally,
) -> Iterator[pa.RecordBatch]:
    waiting: deque[pa.Table] = deque()  # shards handed to `label`, not yet answered

    def records() -> Iterator[list[Record]]:
        for shard in source_shards(store, source, plan, shard_size):
            waiting.append(shard)
            ids, texts = shard.column("id").to_pylist(), shard.column("text").to_pylist()
            yield list(zip(ids, texts, strict=True))

    for answers in label(records()):
        shard = waiting.popleft()
        by_id = {a.id: a for a in answers}
        ordered = [by_id[rid] for rid in shard.column("id").to_pylist()]
        counted.add(ordered)
        if generate:
            yield from _generated(shard, ordered).to_batches()
            continue
        tally.add(shard.column("text").to_pylist(), [a.label for a in ordered])
        yield from _labeled(shard, ordered, rationale).to_batches()


def source_shards(
    store: storage.Store, source: storage.DatasetRef, plan: Plan, size: int
) -> Iterator[pa.Table]:
    """The source's records to label (id, text, gold), `size` at a time, read batch by batch."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in store.scan(source, batch_size=max(size, 1024), columns=["id", "text", "gold"]):
        mask = plan.wants(batch.column("id"))
        if mask is not None:
            batch = batch.filter(mask)
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks()


@dataclass
class Counted:
    """What the answers of a streamed run came to, added up shard by shard, and the rows a child
    version kept from its base (counted as they are copied)."""

    records: int = 0
    labeled: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    bought: labelers.Usage = labelers.Usage()
    kept: int = 0
    kept_labeled: int = 0
    kept_failures: Counter[str] = field(default_factory=Counter)
    # what the kept rows' answers cost, when the rows say (generate); else None
    kept_bought: labelers.Usage | None = labelers.Usage()

    def add(self, answers: Sequence[labelers.Answer]) -> None:
        self.records += len(answers)
        for a in answers:
            if a.ok:
                self.labeled += 1
            else:
                self.failures[str(a.error)] += 1
            self.bought = self.bought + a.usage

    def add_kept(self, batch: pa.RecordBatch) -> None:
        errors = batch.column("error")
        self.kept += batch.num_rows
        self.kept_labeled += errors.null_count
        for reason in errors.drop_null().to_pylist():
            self.kept_failures[reason] += 1
        if "cost_usd" not in batch.schema.names:
            self.kept_bought = None  # a classify version's rows do not say
            return
        spent = labelers.Usage(  # a generate version's say what each answer cost
            int(pc.sum(batch.column("input_tokens")).as_py() or 0),
            int(pc.sum(batch.column("output_tokens")).as_py() or 0),
            float(pc.sum(batch.column("cost_usd")).as_py() or 0.0),
        )
        self.kept_bought = (self.kept_bought or labelers.Usage()) + spent

    def summary(
        self, run: labelers.LabelStats, wall_s: float, plan: Plan | None = None
    ) -> LabelingSummary:
        """This run's: what it answered and paid."""
        return LabelingSummary(
            records=self.records,
            labeled=self.labeled,
            failures=dict(self.failures),
            run=run,
            bought=self.bought,
            wall_s=wall_s,
            incremental=plan.describe() if plan is not None and plan.base else None,
        )

    def whole(self, base: dict[str, Any] | None) -> LabelingSummary:
        """The version's: this run's answers and the rows kept from `base`. What they cost: the
        kept rows' own costs where the rows carry them (generate), else all the base's answers
        cost, the ones this run replaced included."""
        bought = self.bought
        if base is not None and self.kept_bought is not None:
            bought = bought + self.kept_bought
        elif base is not None:
            bought = bought + LabelingSummary.from_manifest(base).bought
        return LabelingSummary(
            self.records + self.kept,
            self.labeled + self.kept_labeled,
            dict(self.failures + self.kept_failures),
            bought=bought,
        )


def schema_of(config: Config) -> pa.Schema:
    """The columns of the versions a config's labeling writes."""
    if config.task.kind == "generate":
        return GENERATED_SCHEMA
    return RATIONALE_SCHEMA if config.task.rationale else LABELED_SCHEMA


def commit_labels(
    config: Config,
    store: storage.Store,
    source: storage.DatasetRef,
    rows: Iterable[pa.RecordBatch],
    teacher: labelers.Teacher,
    counted: Counted,
    plan: Plan,
) -> storage.DatasetRef:
    """The labeled (or generated) dataset: every record, answered or failed with its reason and
    the raw answer, written as `rows` come (a child version starts with the rows its base keeps).
    Its manifest, written once every row is in, counts the whole version."""
    task = task_of(config)
    schema = schema_of(config)
    if isinstance(task, labelers.GenerateTask):
        described = _generate_manifest(task)
        if isinstance(teacher, labelers.RecordedTeacher):  # made elsewhere, not shaped by task
            described = {"kind": "generate", "instructions": task.instructions}
    else:
        described = _classify_manifest(task, config.task.multi_label)
    said = {"prompt_hash": labelers.prompt_hash(task), **teacher.describe()}
    described_source = store.manifest(source)
    data_restrictions = (described_source.get("data") or {}).get("restrictions") or ()
    terms = terms_of(config)
    base = store.manifest(plan.base) if plan.base is not None else None

    def metadata() -> dict[str, Any]:
        summary = counted.whole(base).manifest()
        described_run: dict[str, Any] = {
            "kind": "labeled",
            "task": described,
            # a recorded teacher's answers were not made with this prompt: it says so (None)
            "teacher": said,
            "terms": terms,
            "labeling": summary,
            "restrictions": storage.restrictions_of(
                described_source["licence"], terms, data_restrictions
            ),
        }
        if plan.base is not None:
            described_run["incremental"] = plan.describe()
        if described_source.get("language"):
            described_run["language"] = described_source["language"]
        return described_run

    def message() -> str:
        if config.message:
            return config.message
        verb = "completed" if isinstance(task, labelers.GenerateTask) else "labeled"
        who = f"{said.get('provider')} {said.get('model')}"
        failed = sum(counted.failures.values())
        tail = f", {failed} failed" if failed else ""
        if plan.base is not None:
            return (
                f"{counted.labeled} new or edited of {counted.records} records {verb} by {who}"
                f"{tail}; {plan.kept} kept from {plan.base}"
            )
        return f"{counted.labeled} of {counted.records} records {verb} by {who}{tail}"

    return store.commit(
        config.name,
        rows,  # a generator: labeling runs in it, in Python, as the rows are written
        schema=schema,
        licence=storage.Licence(**described_source["licence"]),
        parent=source,
        metadata=metadata,
        message=message,
        command=command_line(),
    )


_SECRET_KEY = re.compile(r"(key|token|secret|password|webhook)", re.IGNORECASE)


def secret_key(key: str) -> bool:
    """Whether a config key's value may be a secret (a key, a token, a webhook URL)."""
    return bool(_SECRET_KEY.search(key))


def command_line() -> str:
    """The command that is running, as a shell line (``stillroom label x.yaml -m ...``); the value
    of any ``--set`` whose key names a secret (key, token, ...) is written HIDDEN."""
    args = list(sys.argv)
    program = Path(args[0]).name if args else "python"
    words = ["stillroom" if program in ("stillroom", "__main__.py") else program]
    for arg in args[1:]:
        key, sep, _ = arg.partition("=")
        words.append(f"{key}=HIDDEN" if sep and secret_key(key) else _origins(arg))
    return shlex.join(words)


# a URL ends where a word, a quoted string or a YAML/JSON flow collection around it does
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://([^\s/?#'\"{}\[\],]*)[^\s'\"{}\[\],]*", re.IGNORECASE)


def _origins(text: str) -> str:
    """`text` with every http(s) URL in it cut to scheme://host, and any other URL's user and
    password dropped: `--set 'drift={webhook: {url: http://host/hook/TOKEN}}'` names no
    secret key, and a webhook's path often holds its token."""

    def cut(match: re.Match[str]) -> str:
        scheme, netloc = match.group(1), match.group(2)
        origin = f"{scheme}://{netloc.rpartition('@')[2]}"
        if scheme.lower() in ("http", "https"):
            return origin
        return origin + match.group(0)[len(scheme) + 3 + len(netloc) :]

    return _URL.sub(cut, text)


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
