"""The run's outputs: report.json (the contract in DESIGN.md), its one rendering as Markdown
(report.md, and what the CLI shows), and student artefacts with model cards that inherit the
dataset's licence and the teacher's terms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stillroom import students


def save_student(
    student: students.Student, folder: Path, kind: str, dataset: str, manifest: dict[str, Any]
) -> int:
    """Save the model and its card; returns the model file's size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = student.save(folder / "model.joblib")
    licence = manifest.get("licence") or {}
    terms = manifest.get("terms") or {}
    teacher = manifest.get("teacher") or {}
    card = [
        f"# {kind} student distilled from `{dataset}`",
        "",
        f"- teacher: {teacher.get('provider')} `{teacher.get('model')}`",
        f"- training data licence: `{licence.get('spdx')}` {licence.get('statement', '')}".rstrip(),
        f"- teacher terms ({terms.get('profile', 'unknown')}): {terms.get('statement', '')}",
    ]
    if terms.get("restrictions"):
        card.append(
            f"- restrictions inherited from the teacher: {', '.join(terms['restrictions'])}"
        )
    card += ["", f"Load with `{type(student).__name__}.load('model.joblib')`."]
    (folder / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    return path.stat().st_size


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.1f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_report(report: dict[str, Any], failures: dict[str, int]) -> str:
    """The report as Markdown: report.md, and what `stillroom run` and `evaluate` print."""
    lab, teacher = report["labeling"], report["teacher"]
    dataset = report["dataset"]
    lines = [
        f"# {report['name']}: distillation report",
        "",
        f"Dataset `{dataset['name']}@{dataset['version']}` ({dataset['rows']} rows).",
        "",
        "## Labeling",
        "",
        f"{lab['labeled']} of {lab['records']} records labeled, {lab['failed']} failed; "
        f"{lab['teacher_calls']} teacher calls, {lab['cache_hits']} cache hits, {lab['retries']} retries; "
        f"{lab['input_tokens']} input + {lab['output_tokens']} output tokens; "
        f"${lab['cost_usd']:.4f} paid in {lab['wall_s']:.1f} s.",
        "",
        f"Teacher accuracy vs gold (held-out): {_fmt(teacher['accuracy_vs_gold'], pct=True)}.",
    ]
    if failures:
        lines += ["", "| failure reason | records |", "|---|---|"]
        lines += [
            f"| {reason} | {n} |" for reason, n in sorted(failures.items(), key=lambda kv: -kv[1])
        ]
    lines += [
        "",
        "## Students (held-out)",
        "",
        "| student | agreement | acc. vs gold | KL | ECE | train s | ms / 1k | size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["students"]:
        lines.append(
            f"| {s['kind']} | {_fmt(s['agreement'], True)} | {_fmt(s['accuracy_vs_gold'], True)} | "
            f"{_fmt(s['kl_teacher_student'])} | {_fmt(s['ece'])} | {_fmt(s['train_s'])} | "
            f"{_fmt(s['predict_ms_per_1k'])} | {s['size_bytes'] / 1e6:.2f} MB |"
        )
    lines += [
        "",
        "Agreement: same top label as the teacher; KL: KL(teacher‖student) in nats; ECE: the "
        "student's calibration against the teacher's labels.",
    ]
    multi = [s for s in report["students"] if s.get("f1_micro_vs_teacher") is not None]
    if multi:
        lines.append("")
        lines += [
            f"{s['kind']}: F1 vs teacher micro {s['f1_micro_vs_teacher']:.3f}, macro "
            f"{s['f1_macro_vs_teacher']:.3f} (multi-label: agreement is the same label set)."
            for s in multi
        ]
    lines += ["", _teacher_cost(lab)]
    return "\n".join(lines) + "\n"


def _teacher_cost(lab: dict[str, Any]) -> str:
    if not lab["teacher_calls"]:
        return "Teacher: every answer came from the cache; nothing was paid in this run."
    per_1k = 1000 / lab["teacher_calls"]
    return (
        f"Teacher: ${lab['cost_usd'] * per_1k:.4f} and {lab['wall_s'] * per_1k:.1f} s per 1k "
        "records; students: $0 and the ms / 1k above."
    )


def write_report(folder: Path, report: dict[str, Any], failures: dict[str, int]) -> Path:
    """Write report.json and report.md; returns the path of report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(render_report(report, failures))
    return path
