"""Incremental labeling: which records of a source the latest labeled version already answers
(the same id and the same text, answered without error by the same teacher with the same prompt),
so a scheduled run sends only what is new or edited and commits a child version that keeps the
rest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from stillroom import storage


def digest(text: str | None, gold: str | None) -> bytes:
    """A record's content hash: an edited text, or a corrected gold label, is a new record (it
    is asked again, from the cache when only the gold changed)."""
    content = f"{text or ''}\x00{gold if gold is not None else ''}"
    return hashlib.blake2b(content.encode(), digest_size=16).digest()


@dataclass
class Plan:
    """What a labeling run does: the version it grows from (None: label everything), the ids it
    sends to the teacher, and how many of those are new, edited or retried (failed before)."""

    base: storage.DatasetRef | None = None
    todo: set[str] | None = None  # None: every record of the source
    records: int = 0  # in the source
    new: int = 0
    edited: int = 0
    retried: int = 0
    kept: int = 0  # rows of the base carried into the child version
    why_full: str = ""  # why there is no base, when incremental was asked for
    _todo_array: pa.Array | None = field(default=None, repr=False)

    @property
    def to_label(self) -> int:
        return self.records if self.todo is None else len(self.todo)

    @property
    def nothing_new(self) -> bool:
        return self.base is not None and not self.todo

    def wants(self, ids: pa.Array) -> pa.Array | None:
        """A mask of the ids to label in a batch of the source (None: all of them)."""
        if self.todo is None:
            return None
        return pc.is_in(ids, value_set=self.todo_array())

    def todo_array(self) -> pa.Array:
        """The ids to label as one Arrow array, made once."""
        if self._todo_array is None:
            self._todo_array = pa.array(sorted(self.todo or ()), pa.string())
        return self._todo_array

    def describe(self) -> dict[str, object]:
        """The manifest's and the report's `incremental` section."""
        return {
            "base": str(self.base) if self.base else None,
            "records": self.records,
            "to_label": self.to_label,
            "new": self.new,
            "edited": self.edited,
            "retried": self.retried,
            "kept": self.kept,
        }


def plan(
    store: storage.Store,
    name: str,
    source: storage.DatasetRef,
    teacher: dict[str, object],
    schema: pa.Schema,
) -> Plan:
    """The records of `source` that the latest version of `name` does not already answer. A base
    is used only when it was labeled by the same teacher (`teacher`: prompt hash and provenance as
    manifests record them) into the same columns; otherwise every record is labeled (the
    response cache still serves what was paid for)."""
    records = sum(b.num_rows for b in store.scan(source, columns=["id"]))
    versions = store.versions(name)
    if not versions:
        return Plan(records=records, new=records, why_full=f"{name} has no version yet")
    base = storage.DatasetRef(name, versions[-1])
    manifest = store.manifest(base)
    if _canonical(manifest.get("teacher")) != _canonical(teacher):
        return Plan(
            records=records,
            new=records,
            why_full=f"the teacher or the prompt changed since {base}",
        )
    if set(manifest.get("schema") or {}) != set(schema.names):
        return Plan(records=records, new=records, why_full=f"{base} has other columns")
    done: dict[str, bytes] = {}
    failed: set[str] = set()
    base_ids = 0
    for batch in store.scan(base, columns=["id", "text", "gold", "error"]):
        base_ids += batch.num_rows
        columns = (batch.column(i).to_pylist() for i in range(4))
        for rid, text, gold, error in zip(*columns, strict=True):
            if error is None:
                done[rid] = digest(text, gold)
            else:
                failed.add(rid)
    result = Plan(base=base, todo=set(), records=records)
    for batch in store.scan(source, columns=["id", "text", "gold"]):
        columns = (batch.column(i).to_pylist() for i in range(3))
        for rid, text, gold in zip(*columns, strict=True):
            known = done.get(rid)
            if known == digest(text, gold):
                continue
            result.todo.add(rid)  # type: ignore[union-attr]
            if known is not None:
                result.edited += 1
            elif rid in failed:
                result.retried += 1
            else:
                result.new += 1
    result.kept = base_ids - len(result.todo & (done.keys() | failed))  # type: ignore[operator]
    return result


def kept_rows(store: storage.Store, plan: Plan) -> Iterator[pa.RecordBatch]:
    """The base's rows the child version carries over: every one whose record is not labeled
    again."""
    if plan.base is None:
        return
    todo = plan.todo_array()
    for batch in store.scan(plan.base):
        keep = pc.invert(pc.is_in(batch.column("id"), value_set=todo))
        kept = batch.filter(keep)
        if kept.num_rows:
            yield kept


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Tally:
    """Counts kept as a streamed labeling run goes, so nothing holds every answer: the label
    distribution and failures of the newly answered records, and a sample of them (text, label)
    for measuring the current students on what is new."""

    sample_size: int = 2000
    labels: dict[str, int] = field(default_factory=dict)
    sample: list[tuple[str, str]] = field(default_factory=list)

    def add(self, texts: list[str], labels: list[str | None]) -> None:
        for text, label in zip(texts, labels, strict=True):
            if label is None:
                continue
            self.labels[label] = self.labels.get(label, 0) + 1
            if len(self.sample) < self.sample_size:
                self.sample.append((text, label))
