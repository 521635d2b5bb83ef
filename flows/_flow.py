"""Prefect flows: `distill` (ingest -> label in shards -> commit -> train -> evaluate) and its parts.

Tasks are thin wrappers over `_pipeline`; they run in-process without a Prefect server too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from stillroom import labelers
from stillroom import storage
from . import _pipeline as p
from ._config import Config
from ._report import save_student, write_report


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest(config: Config, store: storage.Store) -> storage.DatasetRef:
    return p.ingest(config, store)


@task(name="label_shard", cache_policy=NO_CACHE, persist_result=False)
def label_shard(
    teacher: Any, records: list[tuple[str, str]], on_answer: Any = None
) -> list[labelers.Answer]:
    return p.label_shard(teacher, records, on_answer)


@task(name="commit_version", cache_policy=NO_CACHE, persist_result=False)
def commit_version(
    config: Config,
    store: storage.Store,
    source: storage.DatasetRef,
    answers: list[labelers.Answer],
    teacher: Any,
) -> storage.DatasetRef:
    return p.commit_labels(config, store, source, answers, teacher)


@task(name="train_student", cache_policy=NO_CACHE, persist_result=False)
def train_student(spec: Any, split: p.Split) -> tuple[Any, float]:
    return p.train_student(spec, split)


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(
    spec: Any, student: Any, split: p.Split, train_s: float, size_bytes: int
) -> dict[str, Any]:
    return p.evaluate_student(spec, student, split, train_s, size_bytes)


class _Progress:
    """A progress bar on a terminal; a line per shard otherwise."""

    def __init__(self, total: int, teacher: Any) -> None:
        self.total, self.teacher, self.done, self.start = total, teacher, 0, time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("labeling"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rec/s  ${task.fields[cost]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task_id = self.bar.add_task("label", total=total, rate="-", cost="0.0000")

    def advance(self, answer: labelers.Answer) -> None:
        self.done += 1
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(
                self.task_id,
                advance=1,
                rate=f"{rate:.1f}",
                cost=f"{self.teacher.stats.cost_usd:.4f}",
            )

    def shard_done(self) -> None:
        if self.bar is None:  # a log, not a terminal: one key=value line per shard
            elapsed = time.perf_counter() - self.start
            rate = self.done / max(elapsed, 1e-9)
            print(
                f"labeling records={self.done}/{self.total} elapsed_s={elapsed:.1f} "
                f"rate_per_s={rate:.1f} cost_usd={self.teacher.stats.cost_usd:.4f} "
                f"eta_s={(self.total - self.done) / max(rate, 1e-9):.0f}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@flow(name="label")
def label_dataset(config: Config) -> tuple[storage.DatasetRef, dict[str, Any]]:
    """Ingest and label; returns the labeled version and what labeling did."""
    store = storage.Store(config.store)
    p.build_teacher(config, None)  # a missing key or bad URL fails before anything is written
    source = ingest(config, store)
    with p.open_cache(config) as cache:
        teacher = p.build_teacher(config, cache, p.budget_left(config, cache))
        table = store.load(source)
        progress = _Progress(table.num_rows, teacher)
        start = time.perf_counter()
        answers: list[labelers.Answer] = []
        try:
            for shard in p.shards(table, config.teacher.shard_size):
                answers += label_shard(teacher, shard, progress.advance)
                progress.shard_done()
        finally:
            progress.close()
        labeling = p.summarise(answers, teacher.stats, time.perf_counter() - start)
        ref = commit_version(config, store, source, answers, teacher)
        if getattr(teacher, "budget_exhausted", False):
            left = sum(a.error == "budget exhausted" for a in answers)
            print(
                f"stillroom: budget reached: ${cache.spent(config.name):.4f} of "
                f"${config.teacher.budget_usd} spent; {left} records left to label. "
                "Raise teacher.budget_usd and re-run the same command to continue.",
                file=sys.stderr,
            )
    return ref, labeling


def _run_dir(config: Config, out: str | None) -> Path:
    if out:
        return Path(out)
    return Path(config.store) / "runs" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="train")
def train(config: Config, dataset: str, out: str | None = None) -> Path:
    """Train every configured student on a labeled version; returns the run folder."""
    ref, manifest, split = p.load_split(config, storage.Store(config.store), dataset)
    folder = _run_dir(config, out)
    trained = []
    for i, spec in enumerate(config.students):
        student, train_s = train_student(spec, split)
        sub = folder / "students" / f"{i}-{spec.kind}"
        size = save_student(student, sub, spec.kind, str(ref), manifest)
        trained.append(
            {"folder": str(sub), "spec": spec.model_dump(), "train_s": train_s, "size_bytes": size}
        )
    (folder / "train.json").write_text(
        json.dumps({"dataset": str(ref), "students": trained}, indent=2)
    )
    return folder


@flow(name="evaluate")
def evaluate_run(config: Config, folder: str, labeling: dict[str, Any] | None = None) -> Path:
    """Measure the students in a run folder against the teacher; writes report.json and report.md."""
    run = Path(folder)
    trained = json.loads((run / "train.json").read_text())
    ref, manifest, split = p.load_split(config, storage.Store(config.store), trained["dataset"])
    results = []
    for entry in trained["students"]:
        spec = p.student_spec(entry["spec"])
        student = p.load_student(spec, Path(entry["folder"]) / "model.joblib")
        results.append(evaluate(spec, student, split, entry["train_s"], entry["size_bytes"]))
    labeling = labeling or {
        "report": _labeling_from_manifest(manifest),
        "failures": manifest.get("labeling", {}).get("failures", {}),
    }
    report = {
        "name": config.name,
        "dataset": {"name": ref.name, "version": ref.version, "rows": manifest["rows"]},
        "labeling": labeling["report"],
        "teacher": {"accuracy_vs_gold": p.teacher_accuracy(split)},
        "students": results,
    }
    return write_report(run, report, labeling["failures"])


def _labeling_from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The labeling section for a report on an existing version: nothing was called in this run."""
    lab = manifest.get("labeling", {})
    return {
        "records": manifest["rows"],
        "labeled": lab.get("labeled", 0),
        "failed": lab.get("failed", 0),
        "teacher_calls": 0,
        "cache_hits": 0,
        "retries": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "wall_s": 0.0,
    }


@flow(name="distill")
def distill(config: Config, out: str | None = None) -> Path:
    """The whole loop; returns the path of report.json."""
    ref, labeling = label_dataset(config)
    folder = train(config, str(ref), out)
    return evaluate_run(config, str(folder), labeling)
