"""The run's outputs: report.json (the contract in DESIGN.md), its one rendering as Markdown
(report.md, and what the CLI shows), and student artefacts with model cards that inherit the
dataset's licence and the teacher's terms."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from stillroom import storage, students

from ._errors import SetupError
from ._generation import generation_lines

# (report key, Hub metric type, what it measures), in the card's order
_CARD_METRICS = (
    ("agreement", "accuracy", "agreement with the teacher"),
    ("accuracy_vs_gold", "accuracy", "accuracy against gold labels"),
    ("kl_teacher_student", "kl_divergence", "KL(teacher ‖ student), nats"),
    ("ece", "ece", "expected calibration error against the teacher"),
    ("f1_micro_vs_teacher", "f1", "micro F1 against the teacher"),
    ("f1_macro_vs_teacher", "f1", "macro F1 against the teacher"),
)
_CARD_COSTS = (
    ("train_s", "training time, s"),
    ("predict_ms_per_1k", "prediction time per 1,000 texts, ms"),
    ("latency_ms_per_record", "generation time per record (greedy), ms"),
    ("size_bytes", "model file size, bytes"),
)
# a generative student's, measured on the teacher's held-out completions
_CARD_GENERATIVE = (
    ("nll_before", "loss", "NLL per token of the teacher's completions, before training"),
    ("nll_after", "loss", "NLL per token of the teacher's completions, after training"),
    ("rougeL_vs_teacher", "rouge", "ROUGE-L F1 against the teacher's completions"),
    ("exact_match_vs_teacher", "exact_match", "exact match with the teacher's completions"),
)
STUDENT_INFO = "student.json"
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


AnyStudent = students.Student | students.GenerativeStudent
"""A classifier student, or a generative one."""

_FOLDER_STUDENTS = (students.BertStudent, students.GenerativeStudent)


def artefact(student: AnyStudent | type[AnyStudent], folder: Path) -> Path:
    """Where a student's model lives in its folder: a bert or generative student is a
    transformers folder (the student folder itself), the others one skops file."""
    whole = student in _FOLDER_STUDENTS or isinstance(student, _FOLDER_STUDENTS)
    return folder if whole else folder / "model.skops"


def save_student(
    student: AnyStudent,
    folder: Path,
    spec: dict[str, Any],
    dataset: str,
    manifest: dict[str, Any],
) -> int:
    """Save the model, its card (without metrics) and `student.json` (what it is and where it
    came from, so it can teach); returns the model's size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = student.save(artefact(student, folder))
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
    files = [f for f in files if f.name not in ("README.md", STUDENT_INFO)]
    info = {
        "kind": spec["kind"],
        "spec": spec,
        "dataset": dataset,
        "labels": list((manifest.get("task") or {}).get("labels") or []),
        "teacher": manifest.get("teacher"),
        "terms": manifest.get("terms"),
        "licence": manifest.get("licence"),
        "fingerprint": _fingerprint(files),
        # checked before any of them is opened again (check_saved)
        "files": {f.name: storage.sha256_file(f) for f in files},
    }
    (folder / STUDENT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    write_model_card(folder, student, spec["kind"], dataset, manifest)
    return sum(f.stat().st_size for f in files)


def _fingerprint(files: list[Path]) -> str:
    """One digest of a student's files, names and bytes (a student teacher's cache key)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def check_saved(folder: Path) -> None:
    """Refuse a student folder whose files are not those `save_student` wrote: each file
    recorded in its student.json must have the sha256 recorded there, checked before anything
    opens it (a model file replaced in a store or a run folder could run code when loaded)."""
    info_path = folder / STUDENT_INFO
    try:
        files = json.loads(info_path.read_text())["files"]
        names = sorted(files)
    except FileNotFoundError:
        raise SetupError(
            f"{folder} is not a trained student's folder (no {STUDENT_INFO})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise SetupError(
            f"{info_path} records no digests of the student's files (damaged, or written by an "
            "older stillroom): train the student again"
        ) from None
    for name in names:
        path = folder / name
        if Path(name).name != name or not path.is_file() or path.is_symlink():
            raise SetupError(f"{path} is missing or not a file: train the student again")
        if storage.sha256_file(path) != files[name]:
            raise SetupError(
                f"{path} is not the file the student wrote (its sha256 differs from the one in "
                f"{STUDENT_INFO}): it was not loaded; train the student again"
            )


def _card_metadata(
    kind: str, dataset: str, manifest: dict[str, Any], metrics: dict[str, Any] | None
) -> dict[str, Any]:
    model = str((manifest.get("teacher") or {}).get("model") or "")
    meta: dict[str, Any] = {
        "library_name": "transformers" if kind in ("bert", "generative") else "sklearn",
        "pipeline_tag": _pipeline(kind),
        **storage.hub_licence((manifest.get("licence") or {}).get("spdx")),
    }
    if _HUB_MODEL_ID.match(model) and not Path(model).exists():  # a Hub id, not a local folder
        meta["base_model"] = model
    meta["datasets"] = [dataset]
    meta["tags"] = ["stillroom", "distillation", _pipeline(kind), kind]
    if (manifest.get("task") or {}).get("multi_label"):
        meta["tags"].append("multi-label")
    scores = [
        {"type": kind_of, "value": float(metrics[key]), "name": name}
        for key, kind_of, name in _CARD_METRICS + _CARD_GENERATIVE
        if metrics and metrics.get(key) is not None
    ]
    if scores:
        meta["metrics"] = sorted({score["type"] for score in scores})
        meta["model-index"] = [_model_index(kind, dataset, scores)]
    return meta


def _pipeline(kind: str) -> str:
    return "text-generation" if kind == "generative" else "text-classification"


def _model_index(kind: str, dataset: str, scores: list[dict[str, Any]]) -> dict[str, Any]:
    name = "Text Generation" if kind == "generative" else "Text Classification"
    task = {"type": _pipeline(kind), "name": name}
    held_out = {"name": f"{dataset} (held-out)", "type": dataset.split("@")[0]}
    return {
        "name": f"{kind} student of {dataset}",
        "results": [{"task": task, "dataset": held_out, "metrics": scores}],
    }


def _provenance(manifest: dict[str, Any]) -> list[str]:
    """The teacher, the training data's licence and the teacher's terms, as card lines."""
    licence = manifest.get("licence") or {}
    terms = manifest.get("terms") or {}
    teacher = manifest.get("teacher") or {}
    lines = [
        f"- teacher: {teacher.get('provider')} `{teacher.get('model')}`",
        f"- training data licence: `{licence.get('spdx')}` {licence.get('statement', '')}".rstrip(),
    ]
    lines += [f"- data {key}: {licence[key]}" for key in ("source", "citation") if licence.get(key)]
    lines.append(
        f"- teacher terms ({terms.get('profile', 'unknown')}): {terms.get('statement', '')}"
    )
    if terms.get("as_of") or terms.get("url"):
        lines.append(
            f"- terms wording as of {terms.get('as_of') or '?'}: {terms.get('url') or 'no URL'}"
        )
    if terms.get("restrictions"):
        lines.append(
            f"- restrictions inherited from the teacher: {', '.join(terms['restrictions'])}"
        )
    restrictions = storage.manifest_restrictions(manifest)
    if restrictions:
        lines += ["", "### Usage restrictions (inherited from the data and the teacher)", ""]
        lines += [f"- {storage.describe_restriction(r)}" for r in restrictions]
    acknowledged = manifest.get("acknowledged_terms")
    if acknowledged:
        overrides = "; ".join(acknowledged.get("overrides") or []) or "no restriction forbade it"
        lines += [
            "",
            f"**Terms acknowledged** by {acknowledged['user']} at {acknowledged['at']}: "
            f'"{acknowledged["text"]}" (trained although: {overrides}).',
        ]
    return lines


def _evaluation(metrics: dict[str, Any]) -> list[str]:
    rows = [(name, key) for key, _, name in _CARD_METRICS + _CARD_GENERATIVE]
    rows += [(name, key) for key, name in _CARD_COSTS]
    return ["## Evaluation (held-out records)", "", "| metric | value |", "|---|---|"] + [
        f"| {name} | {_fmt(metrics[key])} |" for name, key in rows if metrics.get(key) is not None
    ]


def render_model_card(
    student: AnyStudent,
    kind: str,
    dataset: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> str:
    """The student's README.md: Hugging Face-style YAML metadata, then where it came from, under
    which licence and terms, how close it gets to its teacher, and how to load it."""
    meta = _card_metadata(kind, dataset, manifest, metrics)
    loader = type(student).__name__
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    lines += [f"# {kind} student distilled from `{dataset}`", ""]
    made = "completed" if isinstance(student, students.GenerativeStudent) else "labelled"
    lines += [f"A stillroom `{loader}` trained on `{dataset}`, {made} by its teacher.", ""]
    lines += ["## Teacher and data", "", *_provenance(manifest), ""]
    lines += [*_evaluation(metrics), ""] if metrics else []
    return "\n".join(lines + _how_to_load(student, loader)) + "\n"


def _how_to_load(student: AnyStudent, loader: str) -> list[str]:
    if isinstance(student, students.GenerativeStudent):
        return [
            "## How to load",
            "",
            "A standard transformers folder (the tokenizer carries its chat template):",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            'generate = pipeline("text-generation", model=".")',
            'generate([{"role": "user", "content": "an instruction"}], max_new_tokens=128)',
            "```",
            "",
            '`GenerativeStudent.load(".")` (stillroom) gives the student with its settings, '
            "recorded in `stillroom.json`; `held_out.jsonl` holds its completions of the "
            "held-out prompts beside the teacher's.",
        ]
    if isinstance(student, students.BertStudent) and not student.is_quantized:
        return [
            "## How to load",
            "",
            "A standard transformers folder (labels in `config.json`'s `id2label`):",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            'classify = pipeline("text-classification", model=".")',
            'classify("a text to classify")',
            "```",
            "",
            '`BertStudent.load(".")` (stillroom) gives the student with its calibration '
            "temperature, recorded in `stillroom.json`.",
        ]
    where = "." if isinstance(student, students.BertStudent) else "model.skops"
    lines = [
        "## How to load",
        "",
        "```python",
        f"from stillroom.students import {loader}",
        "",
        f'model = {loader}.load("{where}")',
        'model.predict(["a text to classify"])',
        "```",
        "",
    ]
    if isinstance(student, students.BertStudent):
        return lines + ["int8 weights (`model-int8.pt`): it needs stillroom and torch installed."]
    return lines + [
        "It needs stillroom installed. `model.versions.json` records the Python and library "
        "versions it was saved with; `load` warns when the installed scikit-learn differs in "
        "major.minor version."
    ]


def write_model_card(
    folder: Path,
    student: AnyStudent,
    kind: str,
    dataset: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write (or rewrite, once there are metrics) the student's README.md; returns its path."""
    path = folder / "README.md"
    path.write_text(render_model_card(student, kind, dataset, manifest, metrics))
    return path


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        # 4 significant digits, but never in exponent form for a large value (871261, not 8.713e+05)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def render_report(report: dict[str, Any], failures: dict[str, int]) -> str:
    """The report as Markdown: report.md, and what `stillroom run` and `evaluate` print."""
    if report.get("generation") is not None:
        return _render_generation(report, failures)
    teacher, dataset = report["teacher"], report["dataset"]
    lines = [
        f"# {report['name']}: distillation report",
        "",
        f"Dataset `{dataset['name']}@{dataset['version']}` ({dataset['rows']} rows; students "
        f"trained on {dataset.get('train_records', '?')} and measured on "
        f"{dataset.get('test_records', '?')} held-out records).",
        "",
        *_labeling_lines(report["labeling"], failures, "labeled"),
        "",
        _teacher_line(teacher),
    ]
    lines += [
        "",
        "## Students (held-out)",
        "",
        "| student | agree | gold | KL | ECE raw | ECE | T | train s | ms/1k | MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["students"]:
        name = f"{s['kind']} ({s['variant']})" if s.get("variant") else s["kind"]
        lines.append(
            f"| {name} | {_fmt(s['agreement'], True)} | {_fmt(s['accuracy_vs_gold'], True)} | "
            f"{_fmt(s['kl_teacher_student'])} | {_fmt(s.get('ece_uncalibrated'))} | "
            f"{_fmt(s['ece'])} | {_fmt(s.get('calibration_temperature'))} | "
            f"{_fmt(s['train_s'])} | {_fmt(s['predict_ms_per_1k'])} | "
            f"{s['size_bytes'] / 1e6:.2f} |"
        )
    lines += [
        "",
        "agree: same top label as the teacher; gold: accuracy against gold labels; KL: "
        "KL(teacher‖student) in nats; ECE: the student's calibration against the teacher's "
        "labels, raw and after temperature scaling by T (fitted on a calibration slice of the "
        "training records); ms/1k: prediction time per 1,000 records; MB: the saved model.",
    ]
    variants = [s for s in report["students"] if s.get("agreement_with_student") is not None]
    if variants:
        lines.append("")
        lines += [
            f"{s['kind']} ({s['variant']}): same label as the uncompressed student on "
            f"{_fmt(s['agreement_with_student'], True)} of held-out records."
            for s in variants
        ]
    multi = [s for s in report["students"] if s.get("f1_micro_vs_teacher") is not None]
    if multi:
        lines.append("")
        lines += [
            f"{s['kind']}: F1 vs teacher micro {s['f1_micro_vs_teacher']:.3f}, macro "
            f"{s['f1_macro_vs_teacher']:.3f} (multi-label: agreement is the same label set)."
            for s in multi
        ]
    lines += _schedule_lines(report)
    lines += ["", _teacher_cost(report["labeling"], teacher)]
    return "\n".join(lines) + "\n"


def _schedule_lines(report: dict[str, Any]) -> list[str]:
    """A scheduled run's decisions: what was new, whether the students were retrained (and how
    the old and new ones compare), and the drift checks."""
    incremental = report["labeling"].get("incremental")
    schedule = report.get("schedule")
    if not schedule and not incremental:
        return []
    lines = ["", "## This run"]
    if incremental:
        lines += [
            "",
            f"Incremental from `{incremental['base']}`: {incremental['new']} new, "
            f"{incremental['edited']} edited and {incremental['retried']} failed-before records "
            f"labeled; {incremental['kept']} rows kept.",
        ]
    if not schedule:
        return lines
    retrain = schedule["retrain"]
    lines += [
        "",
        f"Students {'retrained' if retrain['retrained'] else 'kept'}: {retrain['reason']}.",
    ]
    comparison = retrain.get("comparison") or []
    if comparison:
        lines += [
            "",
            "| student | trained on | agree before → after | gold before → after |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c['kind']} | {c['trained_on']} | {_fmt(c['agreement_before'], True)} → "
            f"{_fmt(c['agreement_after'], True)} | {_fmt(c['accuracy_vs_gold_before'], True)} → "
            f"{_fmt(c['accuracy_vs_gold_after'], True)} |"
            for c in comparison
        ]
        lines += ["", "Both measured on this version's held-out records."]
    drift = schedule["drift"]
    against = f" against `{drift['compared_with']}`" if drift["compared_with"] else ""
    lines += [
        "",
        f"Drift{against}: " + ("**drifted**" if drift["drifted"] else "none past its thresholds"),
        "",
        "| check | value | threshold |",
        "|---|---|---|",
    ]
    for check in drift["checks"]:
        value = _fmt(check["value"]) if check["value"] is not None else f"– ({check.get('note')})"
        flag = " **drift**" if check["drifted"] else ""
        lines.append(f"| {check['name']} | {value}{flag} | {_fmt(check['threshold'])} |")
    return lines


def _teacher_line(teacher: dict[str, Any]) -> str:
    """The teacher's accuracy against gold: held out, and over every record with gold."""
    who = f"Teacher {teacher['model']}" if teacher.get("model") else "Teacher"
    if teacher.get("recorded_at"):
        who += f" (answers recorded {teacher['recorded_at']})"
    line = f"{who} accuracy vs gold: {_fmt(teacher['accuracy_vs_gold'], pct=True)} held-out"
    if teacher.get("accuracy_vs_gold_all") is not None:
        line += (
            f", {_fmt(teacher['accuracy_vs_gold_all'], pct=True)} over all "
            f"{teacher['gold_records']} records with gold (a failed answer counts as wrong)"
        )
    return line + "."


def _labeling_lines(lab: dict[str, Any], failures: dict[str, int], done: str) -> list[str]:
    """The Labeling section: what this run asked, got and paid; the failures by reason."""
    lines = [
        "## Labeling",
        "",
        f"{lab['labeled']} of {lab['records']} records {done}, {lab['failed']} failed; "
        f"{lab['teacher_calls']} teacher calls, {lab['cache_hits']} cache hits, {lab['retries']} retries; "
        f"{lab['input_tokens']} input + {lab['output_tokens']} output tokens; "
        f"${lab['cost_usd']:.4f} paid in {lab['wall_s']:.1f} s.",
    ]
    if failures:
        lines += ["", "| failure reason | records |", "|---|---|"]
        lines += [
            f"| {reason} | {n} |" for reason, n in sorted(failures.items(), key=lambda kv: -kv[1])
        ]
    return lines


def _render_generation(report: dict[str, Any], failures: dict[str, int]) -> str:
    """A generate run's report: labeling, the completions in numbers, then the generative
    students measured on the teacher's held-out completions, with a few outputs side by side."""
    dataset, learners = report["dataset"], report["students"]
    about = (
        f"generative students trained on {dataset['train_records']} completions and measured "
        f"on {dataset['test_records']} held-out ones"
        if learners
        else "no students"
    )
    lines = [
        f"# {report['name']}: generation report",
        "",
        f"Dataset `{dataset['name']}@{dataset['version']}` ({dataset['rows']} rows; {about}).",
        "",
        *_labeling_lines(report["labeling"], failures, "completed"),
        "",
        "## Completions",
        "",
        *(f"{line}  " for line in generation_lines(report["generation"])),
    ]
    if learners:
        lines += ["", *_generative_lines(learners)]
    lines += ["", _teacher_cost(report["labeling"], report["teacher"], students=bool(learners))]
    return "\n".join(lines) + "\n"


def _generative_lines(learners: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Students (held-out)",
        "",
        "| student | NLL before | NLL after | ROUGE-L | exact | ms/record | train s | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(learners):
        lines.append(
            f"| {i}-{s['kind']} | {s['nll_before']:.3f} | {s['nll_after']:.3f} | "
            f"{_fmt(s['rougeL_vs_teacher'])} | {_fmt(s['exact_match_vs_teacher'], True)} | "
            f"{s['latency_ms_per_record']:.0f} | {_fmt(s['train_s'])} | "
            f"{s['size_bytes'] / 1e6:.1f} |"
        )
    lines += [
        "",
        "NLL: mean negative log-likelihood per token (nats) of the teacher's held-out "
        "completions, by the base model and by the trained student; ROUGE-L, exact: the "
        "student's greedy completions of held-out prompts against the teacher's; ms/record: "
        "generation time per record on this machine.",
        "",
    ]
    lines += [
        f"{i}-{s['kind']}: {s['layers']} layers, {s['parameters'] / 1e6:.1f} M parameters, "
        + (f"LoRA rank {s['lora_rank']}; " if s.get("lora_rank") else "every weight trained; ")
        + f"{s['kd_records']} of {s['train_records']} training completions distilled token by "
        f"token; its completions {_fmt(s['output_tokens']['mean'])} tokens on average."
        for i, s in enumerate(learners)
    ]
    for i, s in enumerate(learners):
        lines += ["", f"### {i}-{s['kind']}: teacher and student side by side", ""]
        for sample in s["samples"]:
            lines += [
                f"**{sample['id']}** — {_clip(sample['prompt'], 200)}",
                "",
                f"- teacher: {_clip(sample['teacher'], 300)}",
                f"- student: {_clip(sample['student'], 300)}",
                "",
            ]
    return lines


def _clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _teacher_cost(lab: dict[str, Any], teacher: dict[str, Any], students: bool = True) -> str:
    if teacher.get("provider") == "recorded":
        return (
            f"Teacher: answers {teacher['model']} made in {teacher['recorded_at']}, replayed; "
            "nothing was called or paid in this run."
        )
    if not lab["teacher_calls"]:
        return "Teacher: every answer came from the cache; nothing was paid in this run."
    per_1k = 1000 / lab["teacher_calls"]
    cost = f"Teacher: ${lab['cost_usd'] * per_1k:.4f} and {lab['wall_s'] * per_1k:.1f} s per 1k records"
    return cost + ("; students: $0 and the ms / 1k above." if students else ".")


RUN_OUTPUTS = ("students", "train.json", "report.json", "report.md")
"""What a run writes into its folder, and only these: all that a later run into it replaces."""


def check_run_folder(folder: Path, name: str) -> None:
    """Refuse an --out folder that holds something other than a run of the config `name`: what
    a run writes there would overwrite the user's files (README.md, report.json) or sit beside
    another run's students."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SetupError(f"--out {folder} is a file: name a new or empty folder")
    if any(folder.iterdir()) and name not in (_run_name(folder, f) for f in RUN_OUTPUTS[1:3]):
        raise SetupError(
            f"--out {folder} is not empty and not a run folder of {name!r}: name a new or empty "
            "folder (nothing was written)"
        )


def _run_name(folder: Path, record: str) -> str | None:
    """The config name a run's train.json or report.json records, if it is one."""
    try:
        found = json.loads((folder / record).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def write_report(folder: Path, report: dict[str, Any], failures: dict[str, int]) -> Path:
    """Write report.json and report.md; returns the path of report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(render_report(report, failures))
    return path
