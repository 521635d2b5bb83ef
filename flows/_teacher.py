"""The teacher stage: the task the config describes, the response cache, the budget left, and
the teacher itself, built from the config with the API key read from the environment."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from stillroom import labelers, storage

from ._config import Config, DataConfig, student_config
from ._errors import SetupError
from ._ingest import InputError, read_records, source_licence
from ._report import STUDENT_INFO, check_saved
from ._training import check_students, load_student, student_columns, terms_gate

log = logging.getLogger("stillroom")

Task = labelers.ClassifyTask | labelers.GenerateTask
"""Either kind of task a config describes."""


def task_of(config: Config) -> Task:
    """What the teacher is asked: the classification or the generation the config describes."""
    return generate_task(config) if config.task.kind == "generate" else classify_task(config)


def classify_task(config: Config) -> labelers.ClassifyTask:
    t = config.task
    assert t.labels is not None  # the config requires labels to classify
    examples: tuple[tuple[str, str], ...] = ()
    if t.examples:
        shots = read_records(
            DataConfig(path=t.examples, id_field=None, gold_field="label"), t.labels
        )
        examples = tuple(
            zip(shots.column("text").to_pylist(), shots.column("gold").to_pylist(), strict=True)
        )
    return labelers.ClassifyTask(
        tuple(t.labels),
        t.instructions,
        dict(t.descriptions),
        examples,
        t.system_prompt,
        t.rationale,
    )


def generate_task(config: Config) -> labelers.GenerateTask:
    t = config.task
    return labelers.GenerateTask(
        system=t.system_prompt,
        instructions=t.instructions,
        examples=_generate_examples(t.examples) if t.examples else (),
        max_tokens=t.max_tokens,
        temperature=t.temperature,
        stop=tuple(t.stop),
        top_logprobs=t.top_logprobs,
    )


def _generate_examples(path: str) -> tuple[tuple[str, str], ...]:
    """The few-shot (prompt, completion) pairs of `task.examples`; every one needs both."""
    data = DataConfig(path=path, id_field=None, text_field="prompt", gold_field="completion")
    try:
        shots = read_records(data)
    except InputError as exc:
        raise InputError(f"task.examples: {exc}") from None
    completions = shots.column("gold").to_pylist()
    if None in completions:
        raise InputError(
            f"task.examples: {path}: example {completions.index(None) + 1} has no 'completion'"
        )
    return tuple(zip(shots.column("text").to_pylist(), completions, strict=True))


def read_source(config: Config) -> pa.Table:
    """The config's records, validated: ids, the text (or prompt) sent, gold."""
    return read_records(config.data, config.task.labels, multi_label=config.task.multi_label)


def open_cache(config: Config) -> storage.ResponseCache:
    """The store's response cache, its ledger rows filed under the config's name. Claims are on:
    another process labeling into the same store (a second run of the config, a cluster's
    worker) may be sending the same request, and is waited for rather than paid twice."""
    return storage.ResponseCache(config.cache_path, tag=config.name, claims=True)


def budget_left(config: Config, cache: storage.ResponseCache) -> labelers.Budget | None:
    """`teacher.budget_usd` over everything this config's name has spent and holds in the
    store's ledger: every run of the config on the store draws on it, earlier ones and those
    running at the same time."""
    t = config.teacher
    if t.budget_usd is None:
        return None
    if t.known_price() is None:
        log.warning("teacher.price is unknown, so teacher.budget_usd is not enforced")
        return None
    return labelers.Budget(t.budget_usd, ledger=cache)


def build_teacher(
    config: Config,
    cache: labelers.ResponseCache | None = None,
    budget: labelers.Budget | None = None,
) -> labelers.Teacher:
    """The configured teacher; the API key comes from the environment and goes nowhere else.
    A multi-label task's per-label teachers share the cache and the budget."""
    task = task_of(config)
    if config.task.multi_label and isinstance(task, labelers.ClassifyTask):
        return labelers.MultiLabelTeacher(
            task,
            lambda question: _single_teacher(config, question, cache, budget),
            threshold=labelers.MULTI_LABEL_THRESHOLD,
        )
    return _single_teacher(config, task, cache, budget)


def _single_teacher(
    config: Config,
    task: Task,
    cache: labelers.ResponseCache | None,
    budget: labelers.Budget | None,
) -> labelers.Teacher:
    t = config.teacher
    assert t.model is not None  # the config fills in each provider's default model
    if t.provider == "openai":
        return _openai_teacher(config, task, cache, budget)
    if t.provider == "transformers":
        return labelers.TransformersTeacher(task, model=t.model, cache=cache)
    if t.provider == "recorded":
        return _recorded_teacher(config, task)
    # the config lets only providers openai, transformers and recorded generate
    assert isinstance(task, labelers.ClassifyTask)
    if t.provider == "student":
        return _student_teacher(config, task, cache)
    # an unset temperature keeps the zero-shot teacher's own default
    extra: dict[str, Any] = {} if t.temperature is None else {"temperature": t.temperature}
    return labelers.ZeroShotTeacher(task, model=t.model, cache=cache, **extra)


def _openai_teacher(
    config: Config,
    task: Task,
    cache: labelers.ResponseCache | None,
    budget: labelers.Budget | None,
) -> labelers.Teacher:
    t = config.teacher
    assert t.model is not None  # required for provider openai
    known = t.known_price()
    return labelers.OpenAITeacher(
        task,
        model=t.model,
        base_url=t.base_url,
        api_key=_api_key(config),
        concurrency=t.concurrency,
        rpm=t.rpm,
        tpm=t.tpm,
        budget=budget,
        answer_retries=t.answer_retries,
        response_format=t.response_format,
        timeout_s=t.timeout_s,
        max_retries=t.max_retries,
        price=labelers.Price(known.input_per_1m, known.output_per_1m) if known else None,
        temperature=t.temperature
        if t.temperature is not None
        else labelers.OpenAIOptions.temperature,
        top_logprobs=t.top_logprobs,
        max_input_chars=t.max_input_chars,
        max_response_bytes=t.max_response_bytes,
        query=t.query,
        headers={
            **t.headers,
            **{name: _env(var, f"teacher.header_env.{name}") for name, var in t.header_env.items()},
        },
        cache=cache,
        retry_malformed=t.retry_malformed,
    )


def _recorded_teacher(config: Config, task: Task) -> labelers.Teacher:
    """Answers bought earlier, replayed by record id from the file at teacher.path."""
    t = config.teacher
    assert t.path is not None and t.model is not None and t.recorded_at is not None
    assert t.fields is not None  # the config fills in the default fields
    known = t.known_price()
    return labelers.RecordedTeacher.from_file(
        task,
        t.path,
        model=t.model,
        recorded_at=t.recorded_at,
        fields=labelers.RecordedFields(**t.fields.model_dump()),
        price=labelers.Price(known.input_per_1m, known.output_per_1m) if known else None,
    )


def _student_teacher(
    config: Config, task: labelers.ClassifyTask, cache: labelers.ResponseCache | None
) -> labelers.Teacher:
    """A trained student as the teacher: its probabilities over the task's labels, free."""
    assert config.teacher.path is not None
    folder = Path(config.teacher.path)
    info = student_info(folder)
    extra = [label for label in task.labels if label not in info["labels"]]
    lacking = [label for label in info["labels"] if label not in task.labels]
    if extra or lacking:
        problem = (
            f"task.labels has {extra[0]!r}, which it never learned"
            if extra
            else f"task.labels lacks {lacking[0]!r}, which it predicts"
        )
        raise SetupError(
            f"the student at {folder} was trained on other labels: {problem}; give the task the "
            "labels of the version it learned from"
        )
    check_saved(folder)  # now, before Prefect starts; and again when it is loaded
    spec = student_config(info["spec"])
    loaded: list[Any] = []

    def score(texts: list[str]) -> list[list[float]]:
        if not loaded:  # loaded on first use, not when the config is checked
            loaded.append(load_student(spec, folder))
        rows: list[list[float]] = student_columns(loaded[0], list(task.labels), texts).tolist()
        return rows

    return labelers.ScoringTeacher(
        task,
        model=str(folder),
        score=score,
        provider="student",
        parameters={
            "kind": spec.kind,
            "fingerprint": info["fingerprint"],
            "trained_on": info["dataset"],
            "student_of": info["teacher"],
        },
        cache=cache,
    )


def student_info(folder: Path) -> dict[str, Any]:
    """What a trained student's folder records of itself (student.json)."""
    path = folder / STUDENT_INFO
    if not path.is_file():
        raise SetupError(
            f"teacher.path {folder} is not a trained student's folder (no {STUDENT_INFO}); "
            "give RUN/students/N-KIND from a stillroom run"
        )
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        student_config(info["spec"])
        if not isinstance(info["terms"], dict) or not isinstance(info["labels"], list):
            raise ValueError
        info["dataset"], info["teacher"], info["fingerprint"]  # noqa: B018
    except (ValueError, KeyError, TypeError):
        raise SetupError(f"{path} is damaged: write the student again (stillroom train)") from None
    return info


def terms_of(config: Config) -> dict[str, Any]:
    """The teacher's terms for a version's manifest; a student teacher passes on those of the
    teacher it learned from, restrictions included."""
    if config.teacher.provider == "student" and config.teacher.path:
        inherited = dict(student_info(Path(config.teacher.path))["terms"])
        inherited["statement"] = (
            f"Labels from a stillroom student of another teacher; that teacher's terms apply: "
            f"{inherited.get('statement', '')}"
        )
        return inherited
    return config.teacher.resolved_terms().model_dump()


def terms_before_labeling(config: Config) -> None:
    """For `run`: refuse, before the teacher is paid, a config whose students could not train on
    what it labels (the source's terms or the teacher's forbid training) unless acknowledged."""
    if not config.students:
        return
    licence = source_licence(config.data).__dict__
    restrictions = storage.restrictions_of(licence, terms_of(config), config.data.restrictions)
    terms_gate(f"what {config.name} would label", {"restrictions": restrictions}, config)


def _api_key(config: Config) -> str | None:
    name = config.teacher.api_key_env
    return _env(name, "teacher.api_key_env") if name else None


def _env(name: str, key: str) -> str:
    """A secret from the environment; the error names the variable, never a value."""
    value = os.environ.get(name)
    if not value:
        raise SetupError(f"environment variable {name} ({key}) is not set")
    if not labelers.header_safe(value):
        # httpx's error would carry the value into logs and Prefect's database
        raise SetupError(
            f"environment variable {name} ({key}) must hold the bare secret: printable ASCII "
            "without spaces (a copy-paste may have added a space, newline or non-breaking space)"
        )
    return value


def preflight(config: Config) -> labelers.Teacher:
    """Fail fast on bad input, before Prefect starts or anything is written: the data file and its
    columns, the API key variable, the teacher's URL, the store. Returns the teacher it built."""
    storage.Store(config.store)
    cache = config.cache_path
    if cache.exists():  # a damaged cache fails now, not after the model has loaded
        open_cache(config).close()
    read_source(config)
    check_students(config)
    from ._generative import check_generative  # it imports this module: here, not at the top

    check_generative(config)
    return build_teacher(config)
