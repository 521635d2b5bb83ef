"""Generative students in the flows: a generate version cut into training and held-out
completions by id; each generative student fine-tuned on the training side, then measured on the
held-out side against the teacher: the NLL of the teacher's completions before and after
training, and ROUGE-L, exact match, lengths and latency of what the student writes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stillroom import labelers, students

from ._config import Config, GenerativeStudentConfig
from ._errors import SetupError
from ._generation import exact_match, rouge_l, spread
from ._teacher import task_of
from ._training import held_out

HELD_OUT_FILE = "held_out.jsonl"
"""Each generative student's completions of the held-out prompts, beside the teacher's."""

SAMPLES = 3
"""Teacher and student outputs shown side by side in report.md, per student."""


@dataclass
class Completions:
    """A generate version's completed records, cut into training and held-out examples."""

    train: list[students.Example]
    test: list[students.Example]
    test_ids: list[str]


def completion_split(table: pa.Table, fraction: float, seed: int) -> Completions:
    """The completed records (failures have nothing to learn), each side chosen by its id."""
    rows = table.filter(pc.is_null(table.column("error"))).to_pylist()
    if len(rows) < 2:
        raise SetupError(f"only {len(rows)} record(s) were completed: nothing to train on")
    test = held_out([r["id"] for r in rows], fraction, seed)
    if test.all() or not test.any():
        raise SetupError(
            f"{len(rows)} completed records are too few for a {fraction:.0%} test split"
        )
    examples = [_example(r) for r in rows]
    return Completions(
        [e for e, t in zip(examples, test, strict=True) if not t],
        [e for e, t in zip(examples, test, strict=True) if t],
        [r["id"] for r, t in zip(rows, test, strict=True) if t],
    )


def _example(row: dict[str, Any]) -> students.Example:
    steps = row.get("tokens")
    tokens = (
        None
        if not steps
        else [
            (s["token"], s["logprob"], [(a["token"], a["logprob"]) for a in s["top"] or []])
            for s in steps
        ]
    )
    # a recorded completion without a finish reason is taken as whole
    return students.Example(
        row["text"], row["completion"], tokens, stopped=row["finish_reason"] != "length"
    )


def make_generative(
    spec: GenerativeStudentConfig, config: Config, store: str | Path | None = None
) -> students.GenerativeStudent:
    """An unfitted generative student as the config asks: the teacher's system message, at
    most task.max_tokens per completion, checkpoints and the de-quantised base in the store."""
    extra: dict[str, Any] = {
        "system": labelers.system_prompt(task_of(config)),
        "max_new_tokens": spec.max_new_tokens or config.task.max_tokens,
    }
    extra |= _in_store(store)
    if spec.distill == "full":
        extra["teacher"] = config.teacher.model
    params = spec.parameters() | extra
    return students.GenerativeStudent(**params)


def check_generative(config: Config) -> None:
    """Refuse, before anything is labeled, a generative student that could not be trained."""
    for i, spec in enumerate(config.students):
        if isinstance(spec, GenerativeStudentConfig):
            try:
                make_generative(spec, config).check()
            except ValueError as exc:
                raise SetupError(f"students.{i}: {exc}") from None


def train_generative(
    spec: GenerativeStudentConfig, data: Completions, config: Config
) -> tuple[students.GenerativeStudent, float]:
    """Fine-tune one generative student on the training completions; returns it and the
    training seconds."""
    return _timed_fit(spec, make_generative(spec, config, config.local), data.train)


def _timed_fit(
    spec: GenerativeStudentConfig,
    student: students.GenerativeStudent,
    examples: list[students.Example],
) -> tuple[students.GenerativeStudent, float]:
    """The student fitted on `examples`, and the seconds it took; a student's refusal is a
    one-line setup error."""
    start = time.perf_counter()
    try:
        student.fit(examples)
    except ValueError as exc:
        raise SetupError(f"student {spec.kind}: {exc}") from None
    return student, time.perf_counter() - start


def evaluate_generative(
    spec: GenerativeStudentConfig,
    student: students.GenerativeStudent,
    data: Completions,
    config: Config,
    train_s: float,
    size_bytes: int,
    folder: Path,
) -> dict[str, Any]:
    """The student's report entry, measured on the held-out completions; what it wrote is kept
    in the student's folder (held_out.jsonl) beside the teacher's."""
    before = student.base_nll(data.test)
    after = student.nll(data.test)
    count = min(config.evaluate.generation_records, len(data.test))
    prompts = [e.prompt for e in data.test[:count]]
    start = time.perf_counter()
    written = student.generate(prompts)
    seconds = time.perf_counter() - start
    teacher = [e.completion for e in data.test[:count]]
    rows = [
        {"id": i, "prompt": p, "teacher": t, "student": w}
        for i, p, t, w in zip(data.test_ids, prompts, teacher, written, strict=False)
    ]
    with (folder / HELD_OUT_FILE).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tokenizer = student.tokenizer_
    lengths = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in written]
    pairs = list(zip(written, teacher, strict=True))
    model = student.model_
    return {
        "kind": spec.kind,
        "variant": None,
        "train_records": len(data.train),
        "test_records": len(data.test),
        "kd_records": student.kd_examples_,
        "nll_before": round(before, 6),
        "nll_after": round(after, 6),
        "generated_records": count,
        "rougeL_vs_teacher": rouge_l(pairs),
        "exact_match_vs_teacher": exact_match(pairs),
        "output_tokens": spread(lengths),
        "completion_chars": spread([len(w) for w in written]),
        "latency_ms_per_record": round(1000 * seconds / max(count, 1), 3),
        "layers": int(model.config.num_hidden_layers),
        "parameters": sum(p.numel() for p in model.parameters()),
        "lora_rank": student.lora_,
        "train_s": round(train_s, 3),
        "size_bytes": size_bytes,
        "history": student.history_,
        "samples": rows[:SAMPLES],
    }


# --- classification through generation (distilling step by step) -----------------------------

LABEL_TASK = "[label] "
RATIONALE_TASK = "[rationale] "
"""What starts the user turn of each of a classifying student's two tasks (Hsieh et al. 2023)."""


@dataclass
class LabeledTexts:
    """A labeled version's labeled records, cut into training and held-out by id as the
    classifier students' split (the same held-out records)."""

    labels: list[str]
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]


def labeled_split(table: pa.Table, labels: list[str], fraction: float, seed: int) -> LabeledTexts:
    rows = table.filter(pc.is_valid(table.column("label"))).to_pylist()
    test = held_out([r["id"] for r in rows], fraction, seed)
    return LabeledTexts(
        labels,
        [r for r, t in zip(rows, test, strict=True) if not t],
        [r for r, t in zip(rows, test, strict=True) if t],
    )


def classifier_examples(
    spec: GenerativeStudentConfig, data: LabeledTexts
) -> list[students.Example]:
    """The label task for every training record, and with `spec.rationale` the rationale task
    for every one whose teacher gave a rationale."""
    examples = [students.Example(LABEL_TASK + r["text"], r["label"]) for r in data.train]
    if spec.rationale:
        examples += [
            students.Example(RATIONALE_TASK + r["text"], r["rationale"])
            for r in data.train
            if r.get("rationale")
        ]
    return examples


def make_classifier(
    spec: GenerativeStudentConfig, config: Config, store: str | Path | None = None
) -> students.GenerativeStudent:
    """A generative student that answers a label: the task's instructions and label list as its
    system message, a few tokens per answer."""
    task = task_of(config)
    assert isinstance(task, labelers.ClassifyTask)
    plain = labelers.ClassifyTask(
        task.labels, task.instructions, task.descriptions, (), task.system
    )
    extra: dict[str, Any] = {
        "system": labelers.system_prompt(plain),
        "max_new_tokens": spec.max_new_tokens or 16,
    }
    params: dict[str, Any] = spec.parameters() | extra | _in_store(store)
    return students.GenerativeStudent(**params)


def _in_store(store: str | Path | None) -> dict[str, str]:
    """Where a generative student keeps its checkpoints and the de-quantised base."""
    if store is None:
        return {}
    return {
        "checkpoint_dir": str(Path(store) / "checkpoints"),
        "cache_dir": str(Path(store) / "models"),
    }


def train_classifier(
    spec: GenerativeStudentConfig, data: LabeledTexts, config: Config
) -> tuple[students.GenerativeStudent, float]:
    student = make_classifier(spec, config, config.local)
    return _timed_fit(spec, student, classifier_examples(spec, data))


def evaluate_classifier(
    spec: GenerativeStudentConfig,
    student: students.GenerativeStudent,
    data: LabeledTexts,
    train_s: float,
    size_bytes: int,
    folder: Path,
) -> dict[str, Any]:
    """The student's report entry as a classifier: its generated label of each held-out record
    against the teacher's (agreement) and gold; what it wrote is kept in held_out.jsonl."""
    start = time.perf_counter()
    written = student.generate([LABEL_TASK + r["text"] for r in data.test])
    seconds = time.perf_counter() - start
    said = [labelers.match_label(w, data.labels) for w in written]
    with (folder / HELD_OUT_FILE).open("w", encoding="utf-8") as out:
        for r, w, s in zip(data.test, written, said, strict=True):
            row = {"id": r["id"], "teacher": r["label"], "student": s, "written": w}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    agree = [s == r["label"] for s, r in zip(said, data.test, strict=True)]
    gold = [(s, r["gold"]) for s, r in zip(said, data.test, strict=True) if r["gold"] is not None]
    n = max(len(data.test), 1)
    return {
        "kind": spec.kind,
        "variant": "rationales" if spec.rationale else None,
        "agreement": round(sum(agree) / n, 6),
        "accuracy_vs_gold": round(sum(s == g for s, g in gold) / len(gold), 6) if gold else None,
        "kl_teacher_student": None,
        "ece": None,
        "unparsed": sum(s is None for s in said),
        "train_records": len(data.train),
        "rationale_records": sum(1 for r in data.train if r.get("rationale"))
        if spec.rationale
        else 0,
        "lora_rank": student.lora_,
        "train_s": round(train_s, 3),
        "predict_ms_per_1k": round(1e6 * seconds / n, 3),
        "size_bytes": size_bytes,
        "history": student.history_,
    }
