"""What a scheduled run decides after labeling: whether the teacher or the data drifted (label
distribution against the previous version, failures, the current students' agreement on what
is new), whether to retrain the students, and whom to tell.

The current students of a config are those of its last run that trained and evaluated them,
recorded in `LOCAL/runs/NAME.current.json`; they count only while the config still asks for the
same students.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from stillroom import storage

from ._config import Config, DriftConfig, GenerativeStudentConfig, student_config
from ._incremental import Tally
from ._report import check_saved
from ._training import load_student, read_trained, student_columns

log = logging.getLogger("stillroom")


class DriftDetected(Exception):
    """A run's checks went past their thresholds (`drift.action: fail`); what it labeled is
    committed and its report written all the same."""


# --- the current students


def current_path(config: Config) -> Path:
    return config.local / "runs" / f"{config.name}.current.json"


def current_students(config: Config) -> dict[str, Any] | None:
    """The last run that trained this config's students, when the config still asks for the same
    students and the run folder is still there."""
    path = current_path(config)
    try:
        current: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    wanted = [s.model_dump() for s in config.students]
    report = Path(current.get("report", ""))
    if current.get("students") != wanted or not report.is_file():
        return None
    return current


def check_current(config: Config) -> None:
    """Refuse, before anything is labeled, current students whose files are not those their
    run wrote (digests in each student.json): the run measures them, and would load them."""
    current = current_students(config)
    if current is None:
        return
    for entry in read_trained(Path(current["run"]))["students"]:
        for folder in [entry["folder"]] + [v["folder"] for v in entry.get("variants", [])]:
            check_saved(folder)


def mark_current(config: Config, report: Path, dataset: str) -> None:
    """Make the students of the run that wrote `report` the config's current ones."""
    path = current_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "report": str(report.resolve()),
        "run": str(report.parent.resolve()),
        "dataset": dataset,
        "students": [s.model_dump() for s in config.students],
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(json.dumps(record, indent=2))
    Path(f.name).replace(path)  # atomic: a reader sees the old record or the new one


def agreement_on(current: dict[str, Any], labels: list[str], tally: Tally) -> list[dict[str, Any]]:
    """Each current classifier student's agreement with the teacher on the newly labeled records
    (a sample of at most `tally.sample_size`), beside its agreement on its own held-out records."""
    if not tally.sample:
        return []
    report = json.loads(Path(current["report"]).read_text())
    trained = read_trained(Path(current["run"]))
    texts = [text for text, _ in tally.sample]
    teacher = np.array([labels.index(label) for _, label in tally.sample])
    held_out = {r["kind"]: r.get("agreement") for r in report["students"] if not r.get("variant")}
    rows = []
    for entry in trained["students"]:
        spec = student_config(entry["spec"])
        if isinstance(spec, GenerativeStudentConfig):
            continue  # writes its label: measured only at evaluation
        student = load_student(spec, Path(entry["folder"]))
        predicted = student_columns(student, labels, texts).argmax(axis=1)
        rows.append(
            {
                "kind": spec.kind,
                "records": len(texts),
                "agreement_on_new": round(float((predicted == teacher).mean()), 6),
                "agreement_held_out": held_out.get(spec.kind),
            }
        )
    return rows


# --- drift


def label_counts(store: storage.Store, ref: storage.DatasetRef) -> dict[str, int]:
    """How often each label was the teacher's answer in a version (failures left out)."""
    counts: dict[str, int] = {}
    for batch in store.scan(ref, columns=["label"]):
        for label in batch.column(0).drop_null().to_pylist():
            counts[label] = counts.get(label, 0) + 1
    return counts


def psi(before: dict[str, int], after: dict[str, int], labels: list[str]) -> float:
    """Population stability index of the label distribution, sum (a - b) ln(a / b), with a
    half-count added to every label so an empty one stays finite."""
    b = np.array([before.get(x, 0) for x in labels], dtype=float) + 0.5
    a = np.array([after.get(x, 0) for x in labels], dtype=float) + 0.5
    b, a = b / b.sum(), a / a.sum()
    return float(np.sum((a - b) * np.log(a / b)))


def chi_square_p(before: dict[str, int], after: dict[str, int], labels: list[str]) -> float:
    """The p-value of a chi-square test that both label counts come from one distribution
    (labels neither has are left out)."""
    from scipy.stats import chi2_contingency

    used = [x for x in labels if before.get(x, 0) + after.get(x, 0) > 0]
    if len(used) < 2 or not sum(before.values()) or not sum(after.values()):
        return 1.0
    table = np.array([[before.get(x, 0) for x in used], [after.get(x, 0) for x in used]])
    return float(chi2_contingency(table).pvalue)


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    drifted: bool
    note: str = ""

    def text(self) -> str:
        if self.value is None:
            return f"{self.name}: not measured ({self.note})"
        bound = "" if self.threshold is None else f" (threshold {self.threshold:g})"
        return f"{self.name} {self.value:.4g}{bound}" + (" DRIFT" if self.drifted else "")


@dataclass
class Drift:
    checks: list[Check] = field(default_factory=list)
    compared_with: str | None = None

    @property
    def drifted(self) -> list[Check]:
        return [c for c in self.checks if c.drifted]

    def report(self) -> dict[str, Any]:
        return {
            "compared_with": self.compared_with,
            "drifted": bool(self.drifted),
            "checks": [
                {
                    "name": c.name,
                    "value": None if c.value is None else round(c.value, 6),
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                    **({"note": c.note} if c.note else {}),
                }
                for c in self.checks
            ],
        }

    def text(self) -> str:
        return "; ".join(c.text() for c in self.drifted or self.checks)


def measure_drift(
    config: Config,
    before: dict[str, int] | None,
    compared_with: str | None,
    tally: Tally,
    asked: int,
    failed: int,
    agreement: list[dict[str, Any]],
) -> Drift:
    """The run's checks against `config.drift` (measured whether or not it sets thresholds):
    PSI and chi-square of the new labels against `before`, the share of failures among the
    `asked` records, and the current students' lowest agreement on what is new."""
    limits = config.drift or DriftConfig()
    judged = config.drift is not None
    labels = [] if config.task.multi_label else list(config.task.labels or [])
    new = sum(tally.labels.values())
    drift = Drift(compared_with=compared_with)
    if before is None or not labels or not sum(before.values()):
        why = (
            "no previous version"
            if before is None
            else "multi-label: not measured yet"
            if config.task.multi_label
            else "not a classification"
            if not labels
            else "the previous version has no labels"
        )
        drift.checks += [Check("psi", None, limits.max_psi, False, why)]
        drift.checks += [Check("chi2_p", None, limits.min_p_value, False, why)]
    elif new < limits.min_records:
        why = f"{new} new labels, fewer than drift.min_records {limits.min_records}"
        drift.checks += [Check("psi", None, limits.max_psi, False, why)]
        drift.checks += [Check("chi2_p", None, limits.min_p_value, False, why)]
    else:
        value = psi(before, tally.labels, labels)
        over = judged and limits.max_psi is not None and value > limits.max_psi
        drift.checks.append(Check("psi", value, limits.max_psi, over))
        p = chi_square_p(before, tally.labels, labels)
        under = judged and limits.min_p_value is not None and p < limits.min_p_value
        drift.checks.append(Check("chi2_p", p, limits.min_p_value, under))
    if asked:
        share = failed / asked
        over = judged and limits.max_failure_share is not None and share > limits.max_failure_share
        drift.checks.append(Check("failure_share", share, limits.max_failure_share, over))
    else:
        drift.checks.append(
            Check("failure_share", None, limits.max_failure_share, False, "nothing asked")
        )
    if agreement:
        low = min(r["agreement_on_new"] for r in agreement)
        under = judged and limits.min_agreement is not None and low < limits.min_agreement
        drift.checks.append(Check("student_agreement", low, limits.min_agreement, under))
    else:
        drift.checks.append(
            Check("student_agreement", None, limits.min_agreement, False, "no current students")
        )
    return drift


# --- retraining


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str

    def report(self) -> dict[str, Any]:
        return {"retrained": self.retrain, "reason": self.reason}


def decide(
    config: Config,
    current: dict[str, Any] | None,
    new_labels: int,
    version_rows: int,
    agreement: list[dict[str, Any]],
) -> Decision:
    """Retrain when there are no current students, when enough records are newly labeled (a
    count or a share of the version), or when a current student's agreement on them fell by
    more than `retrain.max_agreement_drop` from its held-out agreement; else keep them."""
    policy = config.retrain
    if current is None:
        return Decision(True, "no current students for this config")
    drops = [
        (r["kind"], r["agreement_held_out"] - r["agreement_on_new"])
        for r in agreement
        if r["agreement_held_out"] is not None
    ]
    if policy.max_agreement_drop is not None and drops:
        kind, drop = max(drops, key=lambda d: d[1])
        if drop > policy.max_agreement_drop:
            return Decision(
                True,
                f"the {kind} student agrees {drop:.1%} less on the new records than on its "
                f"held-out ones (retrain.max_agreement_drop {policy.max_agreement_drop:.1%})",
            )
    if policy.min_new_records is not None and new_labels >= policy.min_new_records:
        return Decision(
            True, f"{new_labels} new labels (retrain.min_new_records {policy.min_new_records})"
        )
    share = new_labels / version_rows if version_rows else 0.0
    if policy.min_new_share is not None and new_labels and share >= policy.min_new_share:
        return Decision(
            True,
            f"{new_labels} new labels, {share:.1%} of the version "
            f"(retrain.min_new_share {policy.min_new_share:.1%})",
        )
    return Decision(
        False,
        f"{new_labels} new labels, under the retraining thresholds: the current students "
        f"(trained on {current['dataset']}) are kept",
    )


# --- the webhook


def _webhook_url(config: Config) -> str | None:
    hook = config.drift.webhook if config.drift else None
    if hook is None:
        return None
    return hook.url or os.environ.get(hook.url_env or "") or None


def check_webhook(config: Config) -> None:
    """Warn at the start of a run, not when it drifts, that its webhook has no URL."""
    hook = config.drift.webhook if config.drift else None
    if hook is not None and _webhook_url(config) is None:
        _log().warning(
            f"environment variable {hook.url_env} (drift.webhook.url_env) is not set: drift "
            "will not be reported to the webhook"
        )


def _log() -> Any:
    """The flow run's logger inside a flow (its lines reach the Prefect UI), else stillroom's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def notify(config: Config, body: dict[str, Any]) -> bool:
    """POST `body` as JSON to `drift.webhook`, retried with backoff; True once delivered. A
    webhook that never answers, or has no URL, is logged, never fatal: what the run committed
    stays."""
    hook = config.drift.webhook if config.drift else None
    url = _webhook_url(config)
    if hook is None or url is None:
        return False
    where = urlsplit(url).hostname or "?"  # the URL's path may hold a token: logs name the host
    delay = hook.backoff_s
    problem = ""
    for attempt in range(1, hook.retries + 2):
        try:
            answer = httpx.post(url, json=body, timeout=hook.timeout_s)
            if answer.status_code < 300:
                _log().info(f"webhook {where} notified (attempt {attempt})")
                return True
            problem = f"HTTP {answer.status_code}"
            if answer.status_code < 500 and answer.status_code != 429:
                break  # the receiver refused the body: sending it again will not help
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            problem = type(exc).__name__
            if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
                break  # no address to send to
        if attempt <= hook.retries:
            time.sleep(delay)
            delay *= 2
    _log().warning(f"webhook {where} was not notified after {attempt} attempts ({problem})")
    return False
