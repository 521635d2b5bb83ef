"""The distillation steps as plain functions: ingest, label, commit, split, train, evaluate.

Prefect tasks in `_flow.py` wrap these one-to-one; this is the only module that wires the
labelers, storage and students packages together.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stillroom import labelers
from stillroom import storage
from stillroom import students
from ._config import Config, DataConfig, LogRegStudent, StudentConfig
from ._ingest import read_records

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


class SetupError(Exception):
    """The run cannot start: a missing API key, an unusable teacher."""


def task_of(config: Config) -> labelers.ClassifyTask:
    t = config.task
    examples: tuple[tuple[str, str], ...] = ()
    if t.examples:
        shots = read_records(
            DataConfig(path=t.examples, id_field=None, gold_field="label"), t.labels
        )
        examples = tuple(
            zip(shots.column("text").to_pylist(), shots.column("gold").to_pylist(), strict=True)
        )
    return labelers.ClassifyTask(
        tuple(t.labels), t.instructions, dict(t.descriptions), examples, t.system_prompt
    )


def licence_of(config: Config) -> storage.Licence:
    d = config.data
    return storage.Licence(d.licence, d.licence_statement, d.source or d.path, d.citation)


def open_cache(config: Config) -> storage.ResponseCache:
    return storage.ResponseCache(Path(config.store) / "cache.sqlite", tag=config.name)


def budget_left(config: Config, cache: storage.ResponseCache) -> float | None:
    """What `teacher.budget_usd` still allows, after everything this config's name has spent."""
    t = config.teacher
    if t.budget_usd is None:
        return None
    if t.known_price() is None:
        print(
            "stillroom: warning: teacher.price is unknown, so teacher.budget_usd is not enforced",
            file=sys.stderr,
        )
        return None
    return max(0.0, t.budget_usd - cache.spent(config.name))


def build_teacher(
    config: Config, cache: labelers.ResponseCache | None, budget_left: float | None = None
) -> Any:
    """The configured teacher; the API key comes from the environment and goes nowhere else."""
    task = task_of(config)
    if config.task.multi_label:
        teacher = labelers.MultiLabelTeacher(
            task, lambda question: _single_teacher(config, question, cache, budget_left)
        )
        teacher.budget_usd = budget_left
        return teacher
    return _single_teacher(config, task, cache, budget_left)


def _single_teacher(
    config: Config,
    task: labelers.ClassifyTask,
    cache: labelers.ResponseCache | None,
    budget_left: float | None,
) -> Any:
    t = config.teacher
    assert t.model is not None
    if t.provider == "transformers":
        return labelers.TransformersTeacher(task, model=t.model, cache=cache)
    if t.provider == "zero-shot":
        temperature = t.temperature if t.temperature is not None else 0.05
        return labelers.ZeroShotTeacher(task, model=t.model, cache=cache, temperature=temperature)
    key = None
    if t.api_key_env:
        key = os.environ.get(t.api_key_env)
        if not key:
            raise SetupError(
                f"environment variable {t.api_key_env} (teacher.api_key_env) is not set"
            )
    known = t.known_price()
    price = labelers.Price(known.input_per_1m, known.output_per_1m) if known else None
    return labelers.OpenAITeacher(
        task,
        model=t.model,
        base_url=t.base_url,
        api_key=key,
        concurrency=t.concurrency,
        rpm=t.rpm,
        tpm=t.tpm,
        budget_usd=budget_left,
        answer_retries=t.answer_retries,
        response_format=t.response_format,
        timeout_s=t.timeout_s,
        max_retries=t.max_retries,
        price=price,
        temperature=t.temperature or 0.0,
        top_logprobs=t.top_logprobs,
        cache=cache,
    )


def preflight(config: Config) -> None:
    """Fail fast on bad input, before Prefect starts or anything is written: the data file and its
    columns, the API key variable, the teacher's URL, the store."""
    storage.Store(config.store)
    read_records(config.data, config.task.labels, multi_label=config.task.multi_label)
    build_teacher(config, None)


def ingest(config: Config, store: storage.Store) -> storage.DatasetRef:
    """Read the records and commit them as the source dataset `NAME-source`."""
    table = read_records(config.data, config.task.labels, multi_label=config.task.multi_label)
    return store.commit(
        f"{config.name}-source",
        table,
        licence=licence_of(config),
        metadata={"kind": "source", "data": config.data.model_dump()},
    )


def shards(table: pa.Table, size: int) -> list[list[tuple[str, str]]]:
    pairs = list(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def label_shard(
    teacher: Any,
    records: Sequence[tuple[str, str]],
    on_answer: Callable[[labelers.Answer], None] | None = None,
) -> list[labelers.Answer]:
    return list(teacher.label(records, on_answer))


def summarise(
    answers: Sequence[labelers.Answer], stats: labelers.LabelStats, wall_s: float
) -> dict[str, Any]:
    """The report's `labeling` section (what this run did and paid) and failures by reason."""
    failures = Counter(a.error for a in answers if a.error)
    report = {
        "records": len(answers),
        "labeled": sum(a.ok for a in answers),
        "failed": sum(failures.values()),
        **asdict(stats),
        "wall_s": round(wall_s, 3),
    }
    report["cost_usd"] = round(stats.cost_usd, 6)
    return {"report": report, "failures": dict(failures)}


def load_split(
    config: Config, store: storage.Store, spec: str
) -> tuple[storage.DatasetRef, dict[str, Any], Split]:
    """A labeled version, its manifest and its train/test split as the config asks."""
    ref = store.resolve(spec)
    manifest = store.manifest(ref)
    split = split_dataset(
        store.load(ref),
        manifest["task"]["labels"],
        config.evaluate.test_fraction,
        config.evaluate.seed,
        bool(manifest["task"].get("multi_label")),
    )
    return ref, manifest, split


def commit_labels(
    config: Config,
    store: storage.Store,
    source: storage.DatasetRef,
    answers: Sequence[labelers.Answer],
    teacher: Any,
) -> storage.DatasetRef:
    """The labeled dataset: every record, labeled or failed with its reason and raw answer."""
    table = store.load(source)
    by_id = {a.id: a for a in answers}
    ordered = [by_id[i] for i in table.column("id").to_pylist()]
    labeled = pa.table(
        {
            "id": table.column("id"),
            "text": table.column("text"),
            "gold": table.column("gold"),
            "label": [a.label for a in ordered],
            "probs": [list(a.probs) if a.probs is not None else None for a in ordered],
            "coverage": [a.coverage for a in ordered],
            "error": [a.error for a in ordered],
            "raw": [a.raw for a in ordered],
        },
        schema=LABELED_SCHEMA,
    )
    task = task_of(config)
    terms = config.teacher.resolved_terms()
    metadata = {
        "kind": "labeled",
        "task": {
            "kind": "classify",
            "labels": list(task.labels),
            "instructions": task.instructions,
            "multi_label": config.task.multi_label,
        },
        "teacher": {**teacher.describe(), "prompt_hash": labelers.prompt_hash(task)},
        "terms": terms.model_dump(),
        "labeling": {
            "labeled": sum(a.ok for a in ordered),
            "failed": sum(not a.ok for a in ordered),
            "failures": dict(Counter(a.error for a in ordered if a.error)),
            "input_tokens": sum(a.usage.input_tokens for a in ordered),
            "output_tokens": sum(a.usage.output_tokens for a in ordered),
            "cost_usd": round(sum(a.usage.cost_usd for a in ordered), 6),
        },
    }
    return store.commit(
        config.name,
        labeled,
        licence=storage.Licence(**source_licence(store, source)),
        parent=source,
        metadata=metadata,
    )


def source_licence(store: storage.Store, ref: storage.DatasetRef) -> dict[str, str]:
    return dict(store.manifest(ref)["licence"])


def held_out(ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """True for test records: a record's side depends only on its id and the seed."""

    def bucket(record_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([bucket(i) < fraction for i in ids], dtype=bool)


@dataclass
class Split:
    """A labeled version cut into train and test, only the records the teacher labeled."""

    labels: list[str]
    train_text: list[str]
    train_proba: np.ndarray
    test_text: list[str]
    test_proba: np.ndarray
    test_gold: list[str | None]
    multi_label: bool = False


def split_dataset(
    table: pa.Table, labels: list[str], fraction: float, seed: int, multi_label: bool = False
) -> Split:
    rows = table.filter(pa.compute.is_valid(table.column("label")))
    if rows.num_rows < 2:
        raise SetupError(f"only {rows.num_rows} record(s) were labeled: nothing to train on")
    test = held_out(rows.column("id").to_pylist(), fraction, seed)
    text = np.array(rows.column("text").to_pylist(), dtype=object)
    proba = np.array(rows.column("probs").to_pylist(), dtype=float)
    gold = np.array(rows.column("gold").to_pylist(), dtype=object)
    if test.all() or not test.any():
        raise SetupError(
            f"{rows.num_rows} labeled records are too few for a {fraction:.0%} test split"
        )
    return Split(
        labels,
        list(text[~test]),
        proba[~test],
        list(text[test]),
        proba[test],
        list(gold[test]),
        multi_label,
    )


def make_student(spec: StudentConfig, multi_label: bool = False) -> Any:
    if isinstance(spec, LogRegStudent):
        kind = students.TfidfLogRegMultiLabel if multi_label else students.TfidfLogReg
        return kind(C=spec.C, max_features=spec.max_features)
    raise SetupError(f"unknown student kind {spec.kind!r}")


def student_spec(raw: dict[str, Any]) -> StudentConfig:
    return LogRegStudent.model_validate(raw)


def load_student(spec: StudentConfig, path: Path) -> Any:
    if isinstance(spec, LogRegStudent):
        return students.TfidfLogReg.load(path)
    raise SetupError(f"unknown student kind {spec.kind!r}")


def train_student(spec: StudentConfig, split: Split) -> tuple[Any, float]:
    """Fit one student on the teacher's labels; returns it and the training seconds."""
    student = make_student(spec, split.multi_label)
    start = time.perf_counter()
    if spec.soft:
        student.fit_soft(split.train_text, split.train_proba, split.labels)
    elif split.multi_label:
        hard = (split.train_proba >= 0.5).astype(float)
        student.fit_soft(split.train_text, hard, split.labels)
    else:
        student.fit(split.train_text, np.asarray(split.labels)[split.train_proba.argmax(axis=1)])
    return student, time.perf_counter() - start


def student_columns(student: Any, labels: list[str], texts: list[str]) -> np.ndarray:
    """predict_proba with columns in the task's label order (hard-label students may lack some)."""
    raw = student.predict_proba(texts)
    if isinstance(student, students.TfidfLogRegMultiLabel):
        return raw  # one column per label, in the task's order
    out = np.zeros((len(texts), len(labels)))
    index = {c: i for i, c in enumerate(student.classes_)}
    for j, label in enumerate(labels):
        if label in index:
            out[:, j] = raw[:, index[label]]
    return out


def evaluate_student(
    spec: StudentConfig, student: Any, split: Split, train_s: float, size_bytes: int
) -> dict[str, Any]:
    proba = student_columns(student, split.labels, split.test_text)
    measure = students.multilabel_closeness if split.multi_label else students.closeness
    scores = measure(split.test_proba, proba, split.labels, split.test_gold)
    return {
        "kind": spec.kind,
        **{k: (None if v is None else round(v, 6)) for k, v in scores.items()},
        "train_s": round(train_s, 3),
        "predict_ms_per_1k": round(students.predict_ms_per_1k(student, split.test_text), 3),
        "size_bytes": size_bytes,
    }


def teacher_accuracy(split: Split) -> float | None:
    known = [
        (g, p) for g, p in zip(split.test_gold, split.test_proba, strict=True) if g is not None
    ]
    if not known:
        return None
    if split.multi_label:
        chosen = [
            "|".join(lab for lab, q in zip(split.labels, p, strict=True) if q >= 0.5)
            for _, p in known
        ]
        return float(
            np.mean(
                [
                    set(c.split("|")) - {""} == set(g.split("|")) - {""}
                    for c, (g, _) in zip(chosen, known, strict=True)
                ]
            )
        )
    return float(np.mean([split.labels[int(np.argmax(p))] == g for g, p in known]))
