"""The training and evaluation stage: split a labeled version by id, fit each configured student
on the teacher's labels, and measure it against the teacher (and gold, where there is gold)."""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stillroom import labelers, storage, students

from ._config import Config, EmbeddingStudent, LogRegStudent, StudentConfig
from ._teacher import SetupError

SEPARATOR, THRESHOLD = labelers.MULTI_LABEL_SEPARATOR, labelers.MULTI_LABEL_THRESHOLD
log = logging.getLogger("stillroom")


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

    def gold_sets(self) -> list[frozenset[str] | None]:
        """Multi-label gold as label sets ('a|b' -> {a, b})."""
        return [
            None if g is None else frozenset(filter(None, g.split(SEPARATOR)))
            for g in self.test_gold
        ]


def held_out(ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """True for test records: a record's side depends only on its id and the seed."""

    def bucket(record_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([bucket(i) < fraction for i in ids], dtype=bool)


def split_dataset(
    table: pa.Table, labels: list[str], fraction: float, seed: int, multi_label: bool = False
) -> Split:
    rows = table.filter(pc.is_valid(table.column("label")))
    if rows.num_rows < 2:
        raise SetupError(f"only {rows.num_rows} record(s) were labeled: nothing to train on")
    test = held_out(rows.column("id").to_pylist(), fraction, seed)
    if test.all() or not test.any():
        raise SetupError(
            f"{rows.num_rows} labeled records are too few for a {fraction:.0%} test split"
        )
    text = np.array(rows.column("text").to_pylist(), dtype=object)
    proba = np.array(rows.column("probs").to_pylist(), dtype=float)
    gold = np.array(rows.column("gold").to_pylist(), dtype=object)
    return Split(
        labels,
        list(text[~test]),
        proba[~test],
        list(text[test]),
        proba[test],
        list(gold[test]),
        multi_label,
    )


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
    if not split.multi_label:
        _need_two_classes(split, ref)
    return ref, manifest, split


MIN_HELD_OUT = 30
"""Below this many held-out records, the metrics say little, and the CLI says so."""


def warn_if_few_held_out(split: Split) -> None:
    n = len(split.test_text)
    if n < MIN_HELD_OUT:
        log.warning(
            f"only {n} held-out record(s) measure the students: agreement, KL and ECE say little "
            f"below {MIN_HELD_OUT} (raise evaluate.test_fraction or label more records)"
        )


def _need_two_classes(split: Split, ref: storage.DatasetRef) -> None:
    """A classifier needs at least two of the teacher's classes among its training records."""
    chosen = np.asarray(split.labels)[split.train_proba.argmax(axis=1)]
    present = sorted(set(chosen.tolist()))
    if len(present) >= 2:
        return
    missing = [label for label in split.labels if label not in present]
    shown = ", ".join(repr(m) for m in missing[:5]) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    )
    raise SetupError(
        f"the teacher put all {len(chosen)} training records of {ref} in one class "
        f"({present[0]!r}); never chosen: {shown}. A student needs at least two classes: label "
        "more (or more varied) records, e.g. raise data.limit; the labeled version is kept"
    )


def _student_class(spec: StudentConfig, multi_label: bool) -> type[students.Student]:
    if isinstance(spec, LogRegStudent):
        return students.TfidfLogRegMultiLabel if multi_label else students.TfidfLogReg
    if multi_label:
        raise SetupError(
            f"the {spec.kind} student does not support multi-label versions yet (use kind: logreg)"
        )
    if isinstance(spec, EmbeddingStudent):
        return students.EmbeddingLogReg
    raise SetupError(f"unknown student kind {spec.kind!r}")


def make_student(
    spec: StudentConfig, multi_label: bool = False, cache_dir: str | None = None
) -> students.Student:
    """A new, unfitted student with the config's parameters; embedding students keep their
    embeddings in `cache_dir`."""
    extra = {"cache_dir": cache_dir} if isinstance(spec, EmbeddingStudent) else {}
    return _student_class(spec, multi_label)(**spec.parameters(), **extra)


def load_student(spec: StudentConfig, path: Path, multi_label: bool = False) -> students.Student:
    return _student_class(spec, multi_label).load(path)


def train_student(
    spec: StudentConfig, split: Split, cache_dir: str | None = None
) -> tuple[students.Student, float]:
    """Fit one student on the teacher's labels; returns it and the training seconds."""
    student = make_student(spec, split.multi_label, cache_dir)
    start = time.perf_counter()
    if spec.soft:
        student.fit_soft(split.train_text, split.train_proba, split.labels)
    elif split.multi_label:
        student.fit_soft(split.train_text, (split.train_proba >= THRESHOLD) * 1.0, split.labels)
    else:
        student.fit(split.train_text, np.asarray(split.labels)[split.train_proba.argmax(axis=1)])
    return student, time.perf_counter() - start


def student_columns(student: students.Student, labels: list[str], texts: list[str]) -> np.ndarray:
    """predict_proba with columns in the task's label order (hard-label students may lack some)."""
    raw = student.predict_proba(texts)
    out = np.zeros((len(texts), len(labels)))
    index = {c: i for i, c in enumerate(student.classes_)}
    for j, label in enumerate(labels):
        if label in index:
            out[:, j] = raw[:, index[label]]
    return out


def evaluate_student(
    spec: StudentConfig, student: students.Student, split: Split, train_s: float, size_bytes: int
) -> dict[str, Any]:
    proba = student_columns(student, split.labels, split.test_text)
    if split.multi_label:
        scores = students.multilabel_closeness(
            split.test_proba, proba, split.labels, split.gold_sets(), threshold=THRESHOLD
        )
    else:
        scores = students.closeness(split.test_proba, proba, split.labels, split.test_gold)
    return {
        "kind": spec.kind,
        **{k: (None if v is None else round(v, 6)) for k, v in scores.items()},
        "train_s": round(train_s, 3),
        "predict_ms_per_1k": round(
            students.predict_ms_per_1k(_uncached(student), split.test_text), 3
        ),
        "size_bytes": size_bytes,
    }


def _uncached(student: students.Student) -> students.Student:
    """The student as it predicts for a user: an embedding student timed on its embedding cache
    would time cache reads, not the encoder."""
    if not isinstance(student, students.EmbeddingLogReg):
        return student
    twin = copy.copy(student)
    twin.vectoriser_ = students.SentenceEncoder(student.encoder, student.batch_size, None)
    return twin


def teacher_accuracy(split: Split) -> float | None:
    """The teacher's accuracy against gold on the held-out records that have gold (exact label
    sets for a multi-label task)."""
    known = [i for i, g in enumerate(split.test_gold) if g is not None]
    if not known:
        return None
    if split.multi_label:
        gold = split.gold_sets()
        labels = np.asarray(split.labels)
        chosen = [frozenset(labels[split.test_proba[i] >= THRESHOLD]) for i in known]
        return float(np.mean([c == gold[i] for c, i in zip(chosen, known, strict=True)]))
    best = np.asarray(split.labels)[split.test_proba[known].argmax(axis=1)]
    return float(np.mean(best == np.asarray(split.test_gold, dtype=object)[known]))
