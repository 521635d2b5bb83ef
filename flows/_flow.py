"""Prefect flows, each a recipe of verb-named tasks: `label` (ingest -> label_shard ... ->
commit_version), `train` (train_student per student), `evaluate`, and `distill`, all of them.

Tasks are thin wrappers over the stage modules; everything also runs without a Prefect server
under `prefect_test_harness`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stillroom import labelers, storage, students

from . import _artifacts, _generative, _incremental, _labeling, _policy, _teacher, _training
from ._config import Config, GenerativeStudentConfig, StudentConfig, student_config
from ._generation import generation_stats
from ._incremental import Tally
from ._labeling import LabelingSummary, Record
from ._progress import Progress
from ._report import (
    RUN_OUTPUTS,
    check_run_folder,
    save_student,
    write_model_card,
    write_report,
)


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest(config: Config, store: storage.Store) -> storage.DatasetRef:
    return _labeling.ingest(config, store)


@task(name="label_shard", cache_policy=NO_CACHE, persist_result=False)
def label_shard(
    teacher: labelers.Teacher, records: list[Record], on_answer: labelers.OnAnswer | None = None
) -> tuple[list[labelers.Answer], int]:
    """One shard; a text it holds more than once is asked once. Returns the answers and how
    many were copies (they count as cache hits)."""
    return _labeling.asked_once(lambda r: teacher.label(r, on_answer), records)


@task(name="train_student", cache_policy=NO_CACHE, persist_result=False)
def train_student(
    spec: StudentConfig, split: _training.Split, store: str | None = None
) -> tuple[students.Student, float]:
    return _training.train_student(spec, split, store)


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(
    spec: StudentConfig,
    student: students.Student,
    split: _training.Split,
    train_s: float | None,
    size_bytes: int,
    calibrated: bool = False,
    variant: str | None = None,
    reference: Any = None,
) -> dict[str, Any]:
    return _training.evaluate_student(
        spec, student, split, train_s, size_bytes, calibrated, variant, reference
    )


@task(name="train_generative_student", cache_policy=NO_CACHE, persist_result=False)
def train_generative_student(
    spec: GenerativeStudentConfig, data: _generative.Completions, config: Config
) -> tuple[students.GenerativeStudent, float]:
    return _generative.train_generative(spec, data, config)


@task(name="evaluate_generative", cache_policy=NO_CACHE, persist_result=False)
def evaluate_generative_student(
    spec: GenerativeStudentConfig,
    student: students.GenerativeStudent,
    data: _generative.Completions,
    config: Config,
    train_s: float,
    size_bytes: int,
    folder: Path,
) -> dict[str, Any]:
    return _generative.evaluate_generative(spec, student, data, config, train_s, size_bytes, folder)


@task(name="train_generative_classifier", cache_policy=NO_CACHE, persist_result=False)
def train_generative_classifier(
    spec: GenerativeStudentConfig, data: _generative.LabeledTexts, config: Config
) -> tuple[students.GenerativeStudent, float]:
    return _generative.train_classifier(spec, data, config)


@task(name="evaluate_generative_classifier", cache_policy=NO_CACHE, persist_result=False)
def evaluate_generative_classifier(
    spec: GenerativeStudentConfig,
    student: students.GenerativeStudent,
    data: _generative.LabeledTexts,
    train_s: float,
    size_bytes: int,
    folder: Path,
) -> dict[str, Any]:
    return _generative.evaluate_classifier(spec, student, data, train_s, size_bytes, folder)


@task(name="measure_generation", cache_policy=NO_CACHE, persist_result=False)
def measure_generation(store: storage.Store, ref: storage.DatasetRef) -> dict[str, Any]:
    return generation_stats(store.load(ref))


@flow(name="label")
def label_dataset(config: Config) -> tuple[storage.DatasetRef, LabelingSummary]:
    """Ingest and label; returns the labeled version and what labeling did and cost."""
    return label_config(config)


def label_config(config: Config) -> tuple[storage.DatasetRef, LabelingSummary]:
    """`label_dataset`'s body (also the scheduled `label` deployments')."""
    done = _label(config)
    return done.ref, done.summary


@flow(name="train")
def train(config: Config, dataset: str, out: str | None = None) -> Path:
    """Train every configured student on a labeled version; returns the run folder."""
    return _uploaded(config, _train(config, dataset, out))


@flow(name="evaluate")
def evaluate_run(config: Config, folder: str, labeling: LabelingSummary | None = None) -> Path:
    """Measure the students in a run folder against the teacher; writes report.json and report.md."""
    report = _evaluate(config, folder, labeling)
    _uploaded(config, report.parent)
    return report


@flow(name="distill")
def distill(config: Config, out: str | None = None) -> Path:
    """The whole loop, one flow of tasks; returns the path of report.json. A generate task
    without students stops after labeling, with its completions measured; a config whose
    students could not train on what it labels (terms that forbid training, not acknowledged)
    stops before the teacher is paid."""
    return distill_config(config, out)


def distill_config(config: Config, out: str | None = None) -> Path:
    """`distill`'s body (also the body of the scheduled `distill` deployments): label, decide
    whether to retrain the students (the retraining policy), measure drift, report, and act on
    drift (fail the run or warn, and call the webhook) once everything is committed."""
    _teacher.terms_before_labeling(config)
    _policy.check_webhook(config)
    done = _label(config, check=False)
    ref, labeling = done.ref, done.summary
    store = storage.Store(config.store)
    # the version before this run, as label counts: read once, for both drift measurements
    before = _policy.label_counts(store, done.before) if done.before else None
    drift = _drift(config, done, before, None)
    try:
        _labeling.check_labeled(labeling, ref, config.teacher.min_labeled)
    except _labeling.LabelingFailed:
        if drift.drifted:  # too many failures: whoever watches drift hears of it too
            _notify(config, drift, ref, None)
        raise
    if config.task.kind == "generate":
        if config.students:
            folder = _train(config, str(ref), out)
            report = _evaluate(config, str(folder), labeling)
        else:
            report = _report_generation(config, ref, labeling, out)
        _uploaded(config, report.parent)
        return report
    current = _policy.current_students(config)
    # the current students' agreement on what is new (single-label tasks: a multi-label one's
    # answers are label sets)
    measurable = current is not None and not config.task.multi_label
    labels = list(config.task.labels or [])
    agreement = _policy.agreement_on(current, labels, done.tally) if current and measurable else []
    drift = _drift(config, done, before, agreement)
    decision = _policy.decide(
        config, current, labeling.labeled, store.manifest(ref)["rows"], agreement
    )
    logger = get_run_logger()
    logger.info(f"students: {'retrain' if decision.retrain else 'keep'}: {decision.reason}")
    schedule = {
        "retrain": decision.report(),
        "drift": drift.report(),
        "agreement_on_new": agreement,
    }
    if decision.retrain:
        folder = _run_dir(config, out)
        # students trained into the current students' own folder (the same --out twice) replace
        # them before they could be measured: there is nothing left to compare
        previous = current if current and Path(current["run"]) != folder.resolve() else None
        folder = _train(config, str(ref), str(folder))
        report = _evaluate(config, str(folder), labeling, schedule, previous)
        failing = drift.drifted and config.drift is not None and config.drift.action == "fail"
        if failing:
            logger.warning("the new students are not made current: the run drifted")
        else:
            _policy.mark_current(config, report, str(ref))
    else:
        assert current is not None  # no current students always retrains
        report = _kept_report(config, ref, labeling, schedule, current, out)
    _artifacts.publish(config, report)
    _uploaded(config, report.parent)
    if drift.drifted:
        _on_drift(config, drift, ref, report)
    return report


def _drift(
    config: Config,
    done: _Labeled,
    before: dict[str, int] | None,
    agreement: list[dict[str, Any]] | None,
) -> _policy.Drift:
    """The run's drift checks: against the version before it (`before`, its label counts), with
    the current students' agreement on the new records when measured."""
    labeling = done.summary
    held_back = labeling.failures.get(labelers.BUDGET_EXHAUSTED, 0)  # not asked: no failure
    return _policy.measure_drift(
        config,
        before,
        str(done.before) if done.before else None,
        done.tally,
        labeling.records - held_back,
        labeling.failed - held_back,
        agreement or [],
    )


def _notify(
    config: Config, drift: _policy.Drift, ref: storage.DatasetRef, report: Path | None
) -> str:
    """Tell the webhook (when there is one) that the run drifted; returns the message."""
    assert config.drift is not None  # nothing drifts unless judged
    message = f"{config.name}: drift in {ref}: {drift.text()}"
    body = {
        "event": "stillroom.drift",
        "name": config.name,
        "dataset": str(ref),
        "action": config.drift.action,
        "drift": drift.report(),
        "report": str(report) if report else None,
    }
    _policy.notify(config, body)
    return message


def _on_drift(config: Config, drift: _policy.Drift, ref: storage.DatasetRef, report: Path) -> None:
    """Tell the webhook, then fail the run (`drift.action: fail`) or leave a warning artifact."""
    assert config.drift is not None  # nothing drifts unless judged
    message = _notify(config, drift, ref, report)
    if config.drift.action == "fail":
        raise _policy.DriftDetected(f"{message} ({ref} is committed; report: {report})")
    get_run_logger().warning(message)
    _artifacts.warn(config, message, drift)


def _uploaded(config: Config, folder: Path) -> Path:
    """The run folder, copied into the store when the store is in object storage (a local
    store's run folders are in it already); returns the local folder."""
    where = storage.Store(config.store).upload_run(folder)
    if where != str(folder):
        get_run_logger().info(f"run folder {folder} copied to {where}")
    return folder


# The stages' bodies: each flow above runs one, `distill` all three (as one flow run, not three
# subflows: every flow run costs Prefect a second or so of bookkeeping).


@dataclass(frozen=True)
class _Labeled:
    ref: storage.DatasetRef
    summary: LabelingSummary
    tally: Tally  # the new labels' distribution and a sample of them
    before: storage.DatasetRef | None  # the latest version before this run


def _label(config: Config, check: bool = True) -> _Labeled:
    """Ingest, then label shard by shard into the version being built (nothing holds every
    answer). Incremental: only records the latest version does not already answer are sent, and
    when there are none nothing is committed and that version is returned."""
    store = storage.Store(config.store)
    _teacher.build_teacher(config)  # a missing key or bad URL fails before anything is written
    source = ingest(config, store)
    logger = get_run_logger()
    versions = store.versions(config.name)
    before = storage.DatasetRef(config.name, versions[-1]) if versions else None
    with _teacher.open_cache(config) as cache:
        teacher = _teacher.build_teacher(config, cache, _teacher.budget_left(config, cache))
        plan = _plan(config, store, source, teacher)
        if plan.nothing_new:
            assert plan.base is not None
            logger.info(
                f"nothing new: {plan.base} already answers all {plan.records} records of "
                f"{source}; nothing committed, the teacher was not asked"
            )
            summary = LabelingSummary(0, 0, incremental=plan.describe())
            return _Labeled(plan.base, summary, Tally(), before)
        if plan.base is not None:
            logger.info(
                f"{plan.to_label} of {plan.records} records to label ({plan.new} new, "
                f"{plan.edited} edited, {plan.retried} failed before); {plan.base} answers the rest"
            )
        start = time.perf_counter()
        counted, tally = _labeling.Counted(), Tally()
        # what the teacher object here does not count: copies of a text within a shard (asked
        # once), and what a cluster's workers spent
        elsewhere = labelers.LabelStats()
        shown = _artifacts.LabelingProgress(config, plan.to_label)
        with Progress(plan.to_label, lambda: teacher.stats.cost_usd) as progress:

            def shard_done() -> None:
                progress.shard_done()
                shown.update(progress.done, time.perf_counter())

            def serial(shards: Iterator[list[Record]]) -> Iterator[list[labelers.Answer]]:
                for records in shards:
                    answers, copies = label_shard(teacher, records, progress.advance)
                    elsewhere.cache_hits += copies
                    for _ in range(copies):
                        progress.advance(answers[0])
                    shard_done()
                    yield answers

            with _labelers_for(config, serial, elsewhere, progress, shard_done) as label:
                rows = _labeling.labeled_batches(
                    store,
                    source,
                    plan,
                    label,
                    config.teacher.shard(),
                    config.task.rationale,
                    config.task.kind == "generate",
                    counted,
                    tally,
                )
                ref = _labeling.commit_labels(config, store, source, rows, teacher, counted, plan)
            shown.update(progress.done, time.perf_counter(), force=True)
        run = teacher.stats + elsewhere
        summary = counted.summary(run, time.perf_counter() - start, plan)
    run = summary.run
    logger.info(
        f"{ref}: {summary.labeled} labeled, {summary.failed} failed ({summary.failures_text()}); "
        f"{run.teacher_calls} teacher calls, {run.cache_hits} cache hits, {run.retries} retries, "
        f"${run.cost_usd:.4f} in {summary.wall_s:.1f} s"
    )
    if check:
        _labeling.check_labeled(summary, ref, config.teacher.min_labeled)
    return _Labeled(ref, summary, tally, before)


@contextmanager
def _labelers_for(
    config: Config,
    serial: _labeling.LabelShards,
    stats: labelers.LabelStats,
    progress: Progress,
    shard_done: Callable[[], None],
) -> Iterator[_labeling.LabelShards]:
    """How shards get labeled: here, one after another (`serial`), or on a Dask cluster."""
    if config.runner.kind != "dask":
        yield serial
        return
    from ._cluster import on_cluster

    with on_cluster(config, stats) as remote:

        def label(shards: Iterator[list[Record]]) -> Iterator[Sequence[labelers.Answer]]:
            for answers in remote(shards):
                for answer in answers:
                    progress.advance(answer)
                shard_done()
                yield answers

        yield label


def _plan(
    config: Config, store: storage.Store, source: storage.DatasetRef, teacher: labelers.Teacher
) -> _incremental.Plan:
    """Every record of the source, or (incremental) those the latest version does not answer."""
    records = store.manifest(source)["rows"]
    if not config.incremental:
        return _incremental.Plan(records=records, new=records)
    said = {"prompt_hash": labelers.prompt_hash(_teacher.task_of(config)), **teacher.describe()}
    plan = _incremental.plan(store, config.name, source, said, _labeling.schema_of(config))
    if plan.why_full:
        get_run_logger().info(f"labeling every record: {plan.why_full}")
    return plan


def _run_dir(config: Config, out: str | None) -> Path:
    if out:
        check_run_folder(Path(out), config.name)
        return Path(out)
    folder = config.local / "runs" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = folder
    n = 1
    while taken.exists():  # two runs in one second
        n += 1
        taken = folder.with_name(f"{folder.name}-{n}")
    return taken


def _fresh(folder: Path) -> Path:
    """`folder` without the outputs of an earlier run into it (its students, train.json and
    report), so that none outlives the students trained now."""
    for name in RUN_OUTPUTS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return folder


def _train(config: Config, dataset: str, out: str | None) -> Path:
    if config.task.kind == "generate":
        return _train_generative(config, dataset, out)
    store = storage.Store(config.store)
    ref, manifest, split = _training.load_split(config, store, dataset)
    manifest = _training.terms_gate(ref, manifest, config)
    folder = _fresh(_run_dir(config, out))
    trained = []
    for i, spec in enumerate(config.students):
        if isinstance(spec, GenerativeStudentConfig):  # classifies by writing the label
            trained.append(_train_classifier(config, store, ref, manifest, spec, folder, i))
            continue
        student, train_s = train_student(spec, split, str(config.local))
        sub = folder / "students" / f"{i}-{spec.kind}"
        size = save_student(student, sub, spec.model_dump(), str(ref), manifest)
        get_run_logger().info(
            f"student {i} ({spec.kind}) trained on {len(split.train_text)} records of {ref} "
            f"in {train_s:.1f} s: {size / 1e6:.2f} MB"
        )
        variants = []
        for name, small in _training.compressed(spec, student):
            path = sub / name
            small_size = save_student(small, path, spec.model_dump(), str(ref), manifest)
            variants.append(
                {"name": name, "folder": _inside(path, folder), "size_bytes": small_size}
            )
        trained.append(
            {
                "folder": _inside(sub, folder),
                "spec": spec.model_dump(),
                "train_s": train_s,
                "size_bytes": size,
                "calibrated": bool(split.calib_text),
                "variants": variants,
            }
        )
    record = {
        "name": config.name,
        "dataset": str(ref),
        "train_records": len(split.train_text),
        "calibration_records": len(split.calib_text),
        "acknowledged_terms": manifest.get("acknowledged_terms"),
        "students": trained,
    }
    (folder / _training.TRAIN_RECORD).write_text(json.dumps(record, indent=2))
    return folder


def _inside(path: Path, run: Path) -> str:
    """`path` as train.json records it: relative to the run folder, which may be moved or
    copied whole."""
    return path.relative_to(run).as_posix()


def _train_classifier(
    config: Config,
    store: storage.Store,
    ref: storage.DatasetRef,
    manifest: dict[str, Any],
    spec: GenerativeStudentConfig,
    folder: Path,
    i: int,
) -> dict[str, Any]:
    data = _labeled_texts(config, store, ref, manifest)
    student, train_s = train_generative_classifier(spec, data, config)
    sub = folder / "students" / f"{i}-{spec.kind}"
    size = save_student(student, sub, spec.model_dump(), str(ref), manifest)
    what = "labels and rationales" if spec.rationale else "labels"
    get_run_logger().info(
        f"student {i} ({spec.kind}) trained on the {what} of {len(data.train)} records of {ref} "
        f"in {train_s:.1f} s: {size / 1e6:.2f} MB"
    )
    entry = {"folder": _inside(sub, folder), "spec": spec.model_dump(), "train_s": train_s}
    return entry | {"size_bytes": size, "calibrated": False, "variants": []}


def _labeled_texts(
    config: Config, store: storage.Store, ref: storage.DatasetRef, manifest: dict[str, Any]
) -> _generative.LabeledTexts:
    e = config.evaluate
    labels = list(manifest["task"]["labels"])
    return _generative.labeled_split(store.load(ref), labels, e.test_fraction, e.seed)


def _train_generative(config: Config, dataset: str, out: str | None) -> Path:
    store = storage.Store(config.store)
    ref, manifest, data = _completions(config, store, dataset)
    manifest = _training.terms_gate(ref, manifest, config)
    folder = _fresh(_run_dir(config, out))
    trained = []
    for i, spec in enumerate(config.students):
        assert isinstance(spec, GenerativeStudentConfig)  # the config allows no other here
        student, train_s = train_generative_student(spec, data, config)
        sub = folder / "students" / f"{i}-{spec.kind}"
        size = save_student(student, sub, spec.model_dump(), str(ref), manifest)
        get_run_logger().info(
            f"student {i} ({spec.kind}) trained on {len(data.train)} completions of {ref} "
            f"in {train_s:.1f} s: {size / 1e6:.2f} MB"
        )
        entry = {"folder": _inside(sub, folder), "spec": spec.model_dump(), "train_s": train_s}
        trained.append(entry | {"size_bytes": size, "calibrated": False, "variants": []})
    record = {
        "name": config.name,
        "dataset": str(ref),
        "train_records": len(data.train),
        "acknowledged_terms": manifest.get("acknowledged_terms"),
        "students": trained,
    }
    (folder / _training.TRAIN_RECORD).write_text(json.dumps(record, indent=2))
    return folder


def _completions(
    config: Config, store: storage.Store, dataset: str
) -> tuple[storage.DatasetRef, dict[str, Any], _generative.Completions]:
    ref = store.resolve(dataset)
    manifest = store.manifest(ref)
    _training.check_trainable(ref, manifest, config)
    e = config.evaluate
    return ref, manifest, _generative.completion_split(store.load(ref), e.test_fraction, e.seed)


def _evaluate(
    config: Config,
    folder: str,
    labeling: LabelingSummary | None,
    schedule: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> Path:
    """Measure the run's students and write the report; a scheduled run's decisions go in as
    `schedule`, and the students it replaces (`previous`, the current ones) are measured on the
    same held-out records beside the new ones."""
    if config.task.kind == "generate":
        return _evaluate_generative(config, folder, labeling)
    start = time.perf_counter()
    run = Path(folder)
    trained = _training.read_trained(run)
    store = storage.Store(config.store)
    ref, manifest, split = _training.load_split(config, store, trained["dataset"])
    if trained.get("acknowledged_terms"):  # the cards rewritten with metrics keep it
        manifest = manifest | {"acknowledged_terms": trained["acknowledged_terms"]}
    results = []
    for entry in trained["students"]:
        spec = student_config(entry["spec"])
        if isinstance(spec, GenerativeStudentConfig):  # classifies by writing the label
            sub = Path(entry["folder"])
            writer = _training.load_writer(sub)
            data = _labeled_texts(config, store, ref, manifest)
            results.append(
                evaluate_generative_classifier(
                    spec, writer, data, entry["train_s"], entry["size_bytes"], sub
                )
            )
            write_model_card(sub, writer, spec.kind, str(ref), manifest, results[-1])
            continue
        student = _training.load_student(spec, Path(entry["folder"]), split.multi_label)
        calibrated = entry.get("calibrated", False)
        results.append(
            evaluate(spec, student, split, entry["train_s"], entry["size_bytes"], calibrated)
        )
        # the card written at training time, now with this student's metrics
        write_model_card(Path(entry["folder"]), student, spec.kind, str(ref), manifest, results[-1])
        reference = _training.student_columns(student, split.labels, split.test_text)
        for v in entry.get("variants", []):
            small = _training.load_student(spec, Path(v["folder"]), split.multi_label)
            results.append(
                evaluate(
                    spec, small, split, None, v["size_bytes"], calibrated, v["name"], reference
                )
            )
            write_model_card(Path(v["folder"]), small, spec.kind, str(ref), manifest, results[-1])
    labeling = labeling or LabelingSummary.from_manifest(manifest)
    _training.warn_if_few_held_out(split)
    report = {
        "name": config.name,
        "dataset": {
            "name": ref.name,
            "version": ref.version,
            "rows": manifest["rows"],
            # as the students were trained (the config may have changed since)
            "train_records": trained.get("train_records", len(split.train_text)),
            "calibration_records": trained.get("calibration_records", 0),
            "test_records": len(split.test_text),
        },
        "labeling": labeling.report(),
        "teacher": _teacher_summary(
            manifest, _training.teacher_accuracy(split), storage.Store(config.store).load(ref)
        ),
        "students": results,
        "timings_s": _timings(labeling, trained, start),
    }
    if schedule is not None:
        report["schedule"] = schedule
        if previous is not None:
            schedule["retrain"]["comparison"] = _compare(previous, results, split)
    path = write_report(run, report, labeling.failures)
    get_run_logger().info(
        f"report: {path}; agreement with the teacher: "
        + ", ".join(f"{_name(r)} {r['agreement']:.1%}" for r in results)
    )
    return path


def _compare(
    previous: dict[str, Any], results: list[dict[str, Any]], split: _training.Split
) -> list[dict[str, Any]]:
    """The replaced students against the new ones, on the same held-out records (a version's
    split is by id hash, so what the new students hold out, the old ones held out too, edited
    records aside)."""
    trained = _training.read_trained(Path(previous["run"]))
    new = {r["kind"]: r for r in results if not r.get("variant")}
    rows = []
    for entry in trained["students"]:
        spec = student_config(entry["spec"])
        if isinstance(spec, GenerativeStudentConfig) or spec.kind not in new:
            continue
        old = _training.load_student(spec, Path(entry["folder"]), split.multi_label)
        before = _training.evaluate_student(
            spec, old, split, None, entry["size_bytes"], entry.get("calibrated", False)
        )
        after = new[spec.kind]
        row: dict[str, Any] = {"kind": spec.kind, "trained_on": previous["dataset"]}
        for key in ("agreement", "accuracy_vs_gold", "kl_teacher_student", "ece"):
            row[f"{key}_before"], row[f"{key}_after"] = before[key], after[key]
        rows.append(row)
    return rows


def _kept_report(
    config: Config,
    ref: storage.DatasetRef,
    labeling: LabelingSummary,
    schedule: dict[str, Any],
    current: dict[str, Any],
    out: str | None,
) -> Path:
    """The report of a run that kept the current students: what it labeled, its decisions, and
    the current students as they were measured when trained."""
    kept = json.loads(Path(current["report"]).read_text())
    store = storage.Store(config.store)
    manifest = store.manifest(ref)
    schedule["retrain"]["current_run"] = current["run"]
    report = {
        "name": config.name,
        "dataset": {
            **kept["dataset"],
            "name": ref.name,
            "version": ref.version,
            "rows": manifest["rows"],
            "students_trained_on": current["dataset"],
        },
        "labeling": labeling.report(),
        "teacher": kept["teacher"],
        "students": kept["students"],
        "timings_s": {"labeling": round(labeling.wall_s, 3), "training": 0.0, "evaluation": 0.0},
        "schedule": schedule,
    }
    path = write_report(_run_dir(config, out), report, labeling.failures)
    get_run_logger().info(f"report: {path}; students kept from {current['run']}")
    return path


def _timings(labeling: LabelingSummary, trained: dict[str, Any], start: float) -> dict[str, float]:
    """report.json's seconds per stage: labeling, training (train.json), evaluation (since
    `start`)."""
    return {
        "labeling": round(labeling.wall_s, 3),
        "training": round(sum(e["train_s"] for e in trained["students"]), 3),
        "evaluation": round(time.perf_counter() - start, 3),
    }


def _teacher_summary(
    manifest: dict[str, Any], held_out: float | None, table: Any
) -> dict[str, Any]:
    """Who the teacher was (a recorded one says when its answers were made) and how often its
    label was the gold one: on the held-out records, and on every record with gold (a failed
    answer counts as wrong)."""
    gold = table.column("gold").to_pylist()
    labels = table.column("label").to_pylist()
    pairs = [(label, g) for label, g in zip(labels, gold, strict=True) if g is not None]
    return {
        **_teacher_of(manifest),
        "accuracy_vs_gold": held_out,
        "accuracy_vs_gold_all": (
            sum(label == g for label, g in pairs) / len(pairs) if pairs else None
        ),
        "gold_records": len(pairs),
    }


def _evaluate_generative(config: Config, folder: str, labeling: LabelingSummary | None) -> Path:
    start = time.perf_counter()
    run = Path(folder)
    trained = _training.read_trained(run)
    store = storage.Store(config.store)
    ref, manifest, data = _completions(config, store, trained["dataset"])
    if trained.get("acknowledged_terms"):  # the cards rewritten with metrics keep it
        manifest = manifest | {"acknowledged_terms": trained["acknowledged_terms"]}
    results = []
    for entry in trained["students"]:
        spec = student_config(entry["spec"])
        assert isinstance(spec, GenerativeStudentConfig)
        sub = Path(entry["folder"])
        student = _training.load_writer(sub)
        result = evaluate_generative_student(
            spec, student, data, config, entry["train_s"], entry["size_bytes"], sub
        )
        results.append(result)
        write_model_card(sub, student, spec.kind, str(ref), manifest, result)
    labeling = labeling or LabelingSummary.from_manifest(manifest)
    report = {
        "name": config.name,
        "dataset": {
            "name": ref.name,
            "version": ref.version,
            "rows": manifest["rows"],
            "train_records": len(data.train),
            "test_records": len(data.test),
        },
        "labeling": labeling.report(),
        "teacher": {**_teacher_of(manifest), "accuracy_vs_gold": None},
        "generation": generation_stats(store.load(ref)),
        "students": results,
        "timings_s": _timings(labeling, trained, start),
    }
    path = write_report(run, report, labeling.failures)
    get_run_logger().info(
        f"report: {path}; held-out NLL of the teacher's completions: "
        + ", ".join(f"{r['kind']} {r['nll_before']:.3f} -> {r['nll_after']:.3f}" for r in results)
    )
    return path


def _teacher_of(manifest: dict[str, Any]) -> dict[str, Any]:
    described = manifest.get("teacher") or {}
    return {k: described.get(k) for k in ("provider", "model", "recorded_at")}


def _report_generation(
    config: Config, ref: storage.DatasetRef, labeling: LabelingSummary, out: str | None
) -> Path:
    start = time.perf_counter()
    store = storage.Store(config.store)
    stats = measure_generation(store, ref)
    report = {
        "name": config.name,
        "dataset": {"name": ref.name, "version": ref.version, "rows": stats["records"]},
        "labeling": labeling.report(),
        "teacher": {**_teacher_of(store.manifest(ref)), "accuracy_vs_gold": None},
        "generation": stats,
        "students": [],
        "timings_s": {
            "labeling": round(labeling.wall_s, 3),
            "training": 0.0,
            "evaluation": round(time.perf_counter() - start, 3),
        },
    }
    path = write_report(_run_dir(config, out), report, labeling.failures)
    rouge = stats["rougeL_vs_reference"]
    get_run_logger().info(
        f"report: {path}; {stats['completed']} of {stats['records']} completed"
        + (f", ROUGE-L vs reference {rouge:.4f}" if rouge is not None else "")
    )
    return path


def _name(result: dict[str, Any]) -> str:
    return f"{result['kind']} ({result['variant']})" if result.get("variant") else result["kind"]
