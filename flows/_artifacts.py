"""What a run shows in the Prefect UI: the report as Markdown, tables of what labeling did and
cost and of the students' metrics, a progress bar while labeling, and a warning when it drifted.

Artifact keys are `NAME-report`, `NAME-labeling`, `NAME-students`, `NAME-labeling-progress` and
`NAME-drift` (NAME the config's, in lowercase letters, digits and dashes), so the UI's Artifacts
page keeps each one's history across runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ._config import Config

if TYPE_CHECKING:
    from ._policy import Drift


def key(config: Config, what: str) -> str:
    """An artifact key: lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", config.name.lower()).strip("-") or "stillroom"
    return f"{slug}-{what}"


def publish(config: Config, report_path: Path) -> None:
    """The report (report.md) and its tables, as artifacts of the running flow."""
    report = json.loads(report_path.read_text())
    markdown = (report_path.parent / "report.md").read_text()
    create_markdown_artifact(
        markdown, key=key(config, "report"), description=f"{config.name}: {report_path}"
    )
    create_table_artifact(
        labeling_rows(report),
        key=key(config, "labeling"),
        description="what this run labeled and paid, and its failures by reason",
    )
    if report.get("students"):
        create_table_artifact(
            student_rows(report["students"]),
            key=key(config, "students"),
            description=f"students measured on {report['dataset']['name']}@"
            f"{report['dataset']['version']}",
        )


def labeling_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    lab = report["labeling"]
    rows: list[dict[str, Any]] = [
        {"what": key, "value": lab[key]}
        for key in (
            "records",
            "labeled",
            "failed",
            "teacher_calls",
            "cache_hits",
            "retries",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "wall_s",
        )
    ]
    incremental = lab.get("incremental") or {}
    rows += [{"what": f"incremental.{k}", "value": v} for k, v in incremental.items()]
    failures = lab.get("failures") or {}
    rows += [{"what": f"failed: {reason}", "value": n} for reason, n in failures.items()]
    return rows


def student_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("agreement", "accuracy_vs_gold", "kl_teacher_student", "ece", "train_s")
    return [
        {
            "student": f"{r['kind']} ({r['variant']})" if r.get("variant") else r["kind"],
            **{k: r.get(k) for k in keys},
            "size_mb": round(r.get("size_bytes", 0) / 1e6, 3),
        }
        for r in results
    ]


def warn(config: Config, message: str, drift: Drift) -> None:
    lines = [f"# Drift: {config.name}", "", message, "", "| check | value | threshold |"]
    lines.append("|---|---|---|")
    for check in drift.checks:
        value = "–" if check.value is None else f"{check.value:.4g}"
        flag = " **drift**" if check.drifted else ""
        lines.append(f"| {check.name} | {value}{flag} | {check.threshold} |")
    create_markdown_artifact("\n".join(lines), key=key(config, "drift"), description=message)


class LabelingProgress:
    """A progress artifact updated after each shard (at most every `every_s` seconds)."""

    def __init__(self, config: Config, total: int, every_s: float = 2.0) -> None:
        self.total, self.every_s = max(total, 1), every_s
        made = create_progress_artifact(
            0.0, key=key(config, "labeling-progress"), description=f"labeling {total} records"
        )
        assert isinstance(made, UUID)  # called from a sync flow: not a coroutine
        self.id = made
        self.last = 0.0

    def update(self, done: int, now: float, force: bool = False) -> None:
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        update_progress_artifact(
            self.id, 100.0 * done / self.total, description=f"{done} of {self.total} labeled"
        )
