"""Labeling on a Dask cluster (`runner: {kind: dask}`), through Prefect's Dask task runner: each
shard is a `label_shard` task run on a worker, which builds the teacher from the config once per
worker process and answers from (and into) the response cache. Shards are handed out a few at a
time and their answers come back in order, so the version is the one a serial run commits.

Nothing is paid twice: every worker reads the same cache before it sends, and a request another
worker is sending at that moment is waited for (`ResponseCache.claim`), not sent again. The cache
is one SQLite file, so the workers must share a file system with it: true of a local cluster,
and of a cluster whose workers mount the same volume.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from stillroom import labelers, storage

from . import _teacher
from ._config import Config
from ._labeling import LabelShards, Record, asked_once

_TEACHERS: dict[str, tuple[labelers.Teacher, Any]] = {}  # per worker process, by config
_LOCK = threading.Lock()


def label_on_worker(
    config: Config, records: list[Record]
) -> tuple[list[labelers.Answer], labelers.LabelStats]:
    """One shard, labeled on a worker; returns its answers and what they cost there."""
    key = config.model_dump_json()
    with _LOCK:
        if key not in _TEACHERS:
            cache = storage.ResponseCache(config.cache_path, tag=config.name, claims=True)
            # the budget's spend and holds are in the shared cache: it holds across the workers
            teacher = _teacher.build_teacher(config, cache, _teacher.budget_left(config, cache))
            teacher.prepare()
            _TEACHERS[key] = (teacher, cache)
        teacher, _ = _TEACHERS[key]
        before = labelers.LabelStats(**vars(teacher.stats))
        answers, copies = asked_once(teacher.label, records)
        after = teacher.stats
    spent = labelers.LabelStats(
        **{name: getattr(after, name) - getattr(before, name) for name in vars(after)}
    )
    spent.cache_hits += copies
    return answers, spent


# a task around the module's function (not decorating it), so the function pickles by reference
label_shard_on_worker = task(name="label_shard", cache_policy=NO_CACHE, persist_result=False)(
    label_on_worker
)


@contextmanager
def on_cluster(config: Config, stats: labelers.LabelStats) -> Iterator[LabelShards]:
    """A cluster for the body (the one at `runner.address`, or a local one started and stopped
    here) and the function that labels shards on it; what the workers spent is added to
    `stats`."""
    from prefect_dask.task_runners import DaskTaskRunner

    config = _absolute(config)  # workers started elsewhere resolve paths from their own folder
    r = config.runner
    if r.address:
        runner = DaskTaskRunner(address=r.address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={"n_workers": r.workers, "threads_per_worker": 1, "processes": True}
        )
    ahead = r.in_flight or 2 * r.workers

    def label(shards: Iterator[list[Record]]) -> Iterator[list[labelers.Answer]]:
        waiting: deque[Any] = deque()
        for records in shards:
            waiting.append(
                runner.submit(label_shard_on_worker, {"config": config, "records": records})
            )
            if len(waiting) >= ahead:
                yield _collect(waiting.popleft(), stats)
        while waiting:
            yield _collect(waiting.popleft(), stats)

    # a local cluster sets variables in this process's environment for its workers (one
    # thread each for OpenMP, MKL, OpenBLAS; a fixed PYTHONHASHSEED): they are put back after,
    # so what this process starts later (training, other runs) gets the environment it had
    saved = dict(os.environ)
    try:
        with runner:
            yield label
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _absolute(config: Config) -> Config:
    """The config with its local paths (store, local_dir, teacher.path) made absolute."""
    update: dict[str, Any] = {}
    if not storage.is_remote(config.store):
        update["store"] = str(Path(config.store.removeprefix("file://")).resolve())
    update["local_dir"] = str(Path(config.local_dir).resolve())
    teacher = config.teacher
    if teacher.path:
        teacher = teacher.model_copy(update={"path": str(Path(teacher.path).resolve())})
    return config.model_copy(update={**update, "teacher": teacher})


def _collect(future: Any, stats: labelers.LabelStats) -> list[labelers.Answer]:
    answers, spent = future.result()
    for name in vars(stats):
        setattr(stats, name, getattr(stats, name) + getattr(spent, name))
    return list(answers)
