"""The training and evaluation stage: split a labeled version by id, fit each configured student
on the teacher's labels, and measure it against the teacher (and gold, where there is gold)."""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stillroom import labelers, storage, students

from ._config import (
    BertStudentConfig,
    Config,
    EmbeddingStudent,
    GenerativeStudentConfig,
    LogRegStudent,
    StudentConfig,
)
from ._errors import SetupError
from ._report import artefact, check_saved

SEPARATOR, THRESHOLD = labelers.MULTI_LABEL_SEPARATOR, labelers.MULTI_LABEL_THRESHOLD
log = logging.getLogger("stillroom")


@dataclass
class Split:
    """A labeled version cut into train and test, only the records the teacher labeled; a
    calibration slice of the training side (possibly empty) fits the students' temperatures."""

    labels: list[str]
    train_text: list[str]
    train_proba: np.ndarray
    test_text: list[str]
    test_proba: np.ndarray
    test_gold: list[str | None]
    multi_label: bool = False
    calib_text: list[str] = field(default_factory=list)
    calib_proba: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def gold_sets(self) -> list[frozenset[str] | None]:
        """Multi-label gold as label sets ('a|b' -> {a, b})."""
        return [
            None if g is None else frozenset(filter(None, g.split(SEPARATOR)))
            for g in self.test_gold
        ]


MIN_CALIBRATION = 20
"""Below this many records, a calibration slice is not cut: the records train the students."""


def held_out(ids: Sequence[str], fraction: float, seed: int | str) -> np.ndarray:
    """True for held-out records: a record's side depends only on its id and the seed."""

    def bucket(record_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([bucket(i) < fraction for i in ids], dtype=bool)


def split_dataset(
    table: pa.Table,
    labels: list[str],
    fraction: float,
    seed: int,
    multi_label: bool = False,
    calibration_fraction: float = 0.0,
) -> Split:
    rows = table.filter(pc.is_valid(table.column("label")))
    if rows.num_rows < 2:
        raise SetupError(f"only {rows.num_rows} record(s) were labeled: nothing to train on")
    test = held_out(rows.column("id").to_pylist(), fraction, seed)
    if test.all() or not test.any():
        raise SetupError(
            f"{rows.num_rows} labeled records are too few for a {fraction:.0%} test split"
        )
    ids = np.array(rows.column("id").to_pylist(), dtype=object)
    text = np.array(rows.column("text").to_pylist(), dtype=object)
    proba = np.array(rows.column("probs").to_pylist(), dtype=float)
    gold = np.array(rows.column("gold").to_pylist(), dtype=object)
    calib = np.zeros(len(ids), dtype=bool)
    if calibration_fraction and not multi_label:
        calib[~test] = held_out(list(ids[~test]), calibration_fraction, f"calibration:{seed}")
        if calib.sum() < MIN_CALIBRATION or (~test & ~calib).sum() < 2:
            calib[:] = False
    train = ~test & ~calib
    return Split(
        labels,
        list(text[train]),
        proba[train],
        list(text[test]),
        proba[test],
        list(gold[test]),
        multi_label,
        list(text[calib]),
        proba[calib],
    )


def check_trainable(ref: storage.DatasetRef, manifest: dict[str, Any], config: Config) -> None:
    """Refuse a version the config's students cannot learn from: completions need a generate
    config with generative students, labels a classify config."""
    completions = (manifest.get("task") or {}).get("kind") == "generate"
    if completions and config.task.kind != "generate":
        raise SetupError(
            f"{ref} holds completions (task.kind generate): train it with a generate config "
            f"whose students are kind generative; `stillroom datasets show {ref}` gives their "
            "statistics"
        )
    if completions and not config.students:
        raise SetupError(
            f"{ref} holds completions and the config has no students: add "
            "`students: [{kind: generative}]`"
        )
    if not completions and config.task.kind == "generate":
        raise SetupError(f"{ref} holds labels, not completions: train it with a classify config")


def terms_gate(
    ref: storage.DatasetRef | str, manifest: dict[str, Any], config: Config
) -> dict[str, Any]:
    """The manifest to train with. A version whose restrictions forbid training (its source's
    terms, or a teacher's) is refused with one line naming the restriction and how to go on,
    unless the config acknowledges it; the acknowledgement (the reason, when, who, and what it
    overrides) is then added to the manifest as `acknowledged_terms`, which train.json and every
    student's model card record."""
    restrictions = storage.manifest_restrictions(manifest)
    forbidden = storage.forbids_training(restrictions)
    if forbidden and not config.acknowledge_terms:
        raise SetupError(
            f"{ref} may not be used to train models: {storage.describe_restriction(forbidden[0])}. "
            'To train on it anyway, say why: --acknowledge-terms "REASON" (or acknowledge_terms: '
            "in the config); the reason is recorded in the run and every student's model card"
        )
    if not config.acknowledge_terms:
        return manifest
    acknowledged = {
        "text": config.acknowledge_terms,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "user": _user(),
        "overrides": [storage.describe_restriction(r) for r in forbidden],
    }
    return manifest | {"acknowledged_terms": acknowledged}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def load_split(
    config: Config, store: storage.Store, spec: str
) -> tuple[storage.DatasetRef, dict[str, Any], Split]:
    """A labeled version, its manifest and its train/test split as the config asks."""
    ref = store.resolve(spec)
    manifest = store.manifest(ref)
    check_trainable(ref, manifest, config)
    split = split_dataset(
        store.load(ref),
        manifest["task"]["labels"],
        config.evaluate.test_fraction,
        config.evaluate.seed,
        bool(manifest["task"].get("multi_label")),
        config.evaluate.calibration_fraction,
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
    if isinstance(spec, BertStudentConfig):
        return students.BertStudent
    raise SetupError(f"unknown student kind {spec.kind!r}")


def check_students(config: Config) -> None:
    """Refuse, before anything is labeled, a student that could not be trained: a bert base
    folder that is not a BERT-style encoder."""
    for i, spec in enumerate(config.students):
        if isinstance(spec, BertStudentConfig):
            try:
                students.BertStudent(**spec.parameters()).check_base()
            except ValueError as exc:
                raise SetupError(f"students.{i}: {exc}") from None


def make_student(
    spec: StudentConfig, multi_label: bool = False, store: str | Path | None = None
) -> students.Student:
    """A new, unfitted student with the config's parameters; in `store`, embedding students keep
    their embeddings and bert students their epoch checkpoints."""
    extra: dict[str, Any] = {}
    if store is not None and isinstance(spec, EmbeddingStudent):
        extra["cache_dir"] = str(Path(store) / "embeddings")
    if store is not None and isinstance(spec, BertStudentConfig):
        extra["checkpoint_dir"] = str(Path(store) / "checkpoints")
    return _student_class(spec, multi_label)(**spec.parameters(), **extra)


TRAIN_RECORD = "train.json"
"""What a run folder records of the students trained into it (written by the train flow)."""


def read_trained(run: Path) -> dict[str, Any]:
    """A run folder's train.json, with each student's and variant's folder as a path inside
    `run` (train.json records them relative to it, so a copied run reads its own students)."""
    path = run / TRAIN_RECORD
    try:
        trained: dict[str, Any] = json.loads(path.read_text())
        for entry in trained["students"]:
            entry["folder"] = _in_run(run, entry["folder"])
            for variant in entry.get("variants", []):
                variant["folder"] = _in_run(run, variant["folder"])
    except FileNotFoundError:
        raise SetupError(f"{run} is not a run folder made by train (no {TRAIN_RECORD})") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise SetupError(f"{path} is damaged: train the students again") from None
    return trained


def _in_run(run: Path, name: str) -> Path:
    """The folder `name` (from train.json) inside `run`; one outside it is refused."""
    path = Path(name)
    if path.is_absolute():  # written by an older stillroom: fine while it lies in this run
        inside = [
            path.relative_to(r) for r in (run.absolute(), run.resolve()) if path.is_relative_to(r)
        ]
        if not inside:
            raise SetupError(
                f"{run / TRAIN_RECORD} names {name}, which is not inside the run folder (a "
                "copied run?): train the students again"
            )
        path = inside[0]
    if ".." in path.parts:
        raise SetupError(f"{run / TRAIN_RECORD} names {name}, which leaves the run folder")
    return run / path


def load_student(spec: StudentConfig, folder: Path, multi_label: bool = False) -> students.Student:
    """The student saved in `folder`, once its files are checked against their digests."""
    cls = _student_class(spec, multi_label)
    check_saved(folder)
    return cls.load(artefact(cls, folder))


def load_writer(folder: Path) -> students.GenerativeStudent:
    """The generative student saved in `folder`, once its files are checked."""
    check_saved(folder)
    return students.GenerativeStudent.load(folder)


def train_student(
    spec: StudentConfig, split: Split, store: str | Path | None = None
) -> tuple[students.Student, float]:
    """Fit one student on the teacher's labels, then its calibration temperature on the
    calibration slice (when there is one); returns it and the training seconds."""
    assert not isinstance(spec, GenerativeStudentConfig)  # they learn from completions
    try:
        student = make_student(spec, split.multi_label, store)
        start = time.perf_counter()
        if spec.soft:
            student.fit_soft(split.train_text, split.train_proba, split.labels)
        elif split.multi_label:
            student.fit_soft(split.train_text, (split.train_proba >= THRESHOLD) * 1.0, split.labels)
        else:
            student.fit(
                split.train_text, np.asarray(split.labels)[split.train_proba.argmax(axis=1)]
            )
    except ValueError as exc:  # the student's own checks: a bad base folder, one class only
        raise SetupError(f"student {spec.kind}: {exc}") from None
    train_s = time.perf_counter() - start
    if split.calib_text:
        # against the teacher's top labels (classic temperature scaling): the confidence then
        # says how often the student agrees with the teacher, which is what ECE measures
        raw = student_columns(student, split.labels, split.calib_text)
        top = np.eye(len(split.labels))[split.calib_proba.argmax(axis=1)]
        student.calibration_temperature_ = students.fit_temperature(raw, top)  # type: ignore[attr-defined]
    return student, train_s


def compressed(
    spec: StudentConfig, student: students.Student
) -> list[tuple[str, students.Student]]:
    """The compressed copies the config asks for, by name (a bert student's `quantize: int8`)."""
    if isinstance(spec, BertStudentConfig) and spec.quantize == "int8":
        assert isinstance(student, students.BertStudent)
        return [("int8", student.quantized())]
    return []


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
    spec: StudentConfig,
    student: students.Student,
    split: Split,
    train_s: float | None,
    size_bytes: int,
    calibrated: bool = False,
    variant: str | None = None,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """The student's report entry: closeness to the teacher (and gold) on the held-out records,
    before and after calibration (when it was `calibrated` at training), its cost; a compressed
    `variant` also reports its agreement with the `reference` probabilities of the student it
    was made from."""
    proba = student_columns(student, split.labels, split.test_text)
    if split.multi_label:
        scores = students.multilabel_closeness(
            split.test_proba, proba, split.labels, split.gold_sets(), threshold=THRESHOLD
        )
    else:
        scores = students.closeness(split.test_proba, proba, split.labels, split.test_gold)
    entry: dict[str, Any] = {
        "kind": spec.kind,
        "variant": variant,
        **_rounded(scores),
        "train_s": None if train_s is None else round(train_s, 3),
        "predict_ms_per_1k": round(
            students.predict_ms_per_1k(_uncached(student), split.test_text), 3
        ),
        "size_bytes": size_bytes,
    }
    if reference is not None:
        entry["agreement_with_student"] = round(
            students.agreement(reference.argmax(axis=1), proba.argmax(axis=1)), 6
        )
    if not split.multi_label:
        entry.update(_calibration(student, split, proba, calibrated))
    return entry


def _calibration(
    student: students.Student, split: Split, proba: np.ndarray, calibrated: bool
) -> dict[str, Any]:
    """ECE and KL before calibration, the temperature, and the reliability bins before/after."""
    raw = student_columns(_uncalibrated(student), split.labels, split.test_text)
    before = students.closeness(split.test_proba, raw, split.labels)
    target = split.test_proba.argmax(axis=1)
    temperature = float(getattr(student, "calibration_temperature_", 1.0))
    return {
        "calibration_temperature": round(temperature, 6) if calibrated else None,
        "ece_uncalibrated": round(before["ece"] or 0.0, 6),
        "kl_uncalibrated": round(before["kl_teacher_student"] or 0.0, 6),
        "reliability": {
            "before": students.reliability_bins(raw, target),
            "after": students.reliability_bins(proba, target),
        },
    }


def _rounded(scores: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v, 6)) for k, v in scores.items()}


def _uncalibrated(student: students.Student) -> students.Student:
    twin = copy.copy(student)
    twin.calibration_temperature_ = 1.0  # type: ignore[attr-defined]
    return twin


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
