"""Several processes on one store, and processes killed mid-commit: real processes, not threads.

Two writers committing to one dataset at once get distinct, complete versions; a writer killed
before its version is renamed into place leaves nothing visible and nothing in the way; one killed
after it leaves a whole version; four `stillroom label` runs writing answers into one response
cache at once leave it consistent, every answer paid once."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing

import pyarrow as pa
import pytest
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from stillroom.storage import Licence, Store
from tests.conftest import ROOT

# a child process: wait for the go file, then commit COMMITS versions of its own content
WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pyarrow as pa
    from stillroom.storage import Licence, Store

    root, go, who, commits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    while not os.path.exists(go):
        time.sleep(0.005)
    store = Store(root)
    for n in range(commits):
        ids = [f"{who}-{n}-{i}" for i in range(2000)]
        table = pa.table({"id": ids, "text": ["x" * 50] * len(ids)})
        print(store.commit("shared", table, licence=Licence("MIT"), message=f"{who} {n}"))
    """
)

# a child process: commit once, but stop for good at `where` (before the version folder is
# renamed into place, or before its catalog line is written) after saying so
STALLED = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from stillroom.storage import Licence, Store, _catalog, _store

    root, where, ready = sys.argv[1], sys.argv[2], sys.argv[3]

    def stall(*args, **kwargs):
        open(ready, "w").close()
        time.sleep(600)

    if where == "rename":
        _store.os.rename = stall
    else:
        _catalog.append = stall
    table = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    Store(root).commit("d", table, licence=Licence("MIT"))
    """
)


def child(script, *args):
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_when_stalled(root, where, ready):
    """Start a writer that stops for good at `where`, and SIGKILL it once it is there."""
    stalled = child(STALLED, root, where, ready)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and stalled.poll() is None:
        time.sleep(0.01)
    assert ready.exists(), stalled.stderr.read()
    os.killpg(stalled.pid, signal.SIGKILL)
    stalled.wait(10)


@pytest.mark.timeout(300)
def test_two_processes_committing_at_once_get_distinct_whole_versions(tmp_path):
    root, go, commits = tmp_path / "store", tmp_path / "go", 6
    writers = [child(WRITER, root, go, who, commits) for who in ("a", "b")]
    time.sleep(1.0)  # both are importing pyarrow and waiting
    go.touch()
    outputs = [w.communicate(timeout=240) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in outputs]
    refs = [line for out, _ in outputs for line in out.split()]
    assert len(refs) == len(set(refs)) == 2 * commits
    store = Store(root)
    assert store.versions("shared") == [f"v{n}" for n in range(1, 2 * commits + 1)]
    for version in store.versions("shared"):
        ref = store.resolve(f"shared@{version}")
        result = store.verify(ref)
        assert result.ok and not result.notes, (ref, result.problems, result.notes)
        manifest = store.manifest(ref)
        who, n = manifest["message"].split()
        # each version holds exactly its writer's rows, and follows the version numbered before it
        assert set(store.load(ref).column("id").to_pylist()) == {
            f"{who}-{n}-{i}" for i in range(2000)
        }
        number = int(version[1:])
        assert manifest["previous"] == (f"shared@v{number - 1}" if number > 1 else None)
    lines = (root / "catalog.jsonl").read_text().splitlines()
    assert len(lines) == 2 * commits and all(json.loads(line) for line in lines)
    assert not list((root / "datasets" / "shared").glob(".tmp-*"))


@pytest.mark.timeout(120)
def test_a_writer_killed_before_the_rename_leaves_nothing_visible(tmp_path):
    root, ready = tmp_path / "store", tmp_path / "ready"
    kill_when_stalled(root, "rename", ready)
    store = Store(root)
    assert store.versions("d") == [] and store.list() == []
    assert list((root / "datasets" / "d").glob(".tmp-*"))  # its half-written folder, hidden
    # the next commit is not in its way, and gets the first number
    ref = store.commit("d", pa.table({"id": ["a"], "text": ["x"]}), licence=Licence("MIT"))
    assert str(ref) == "d@v1" and store.verify(ref).ok


@pytest.mark.timeout(120)
def test_a_writer_killed_after_the_rename_leaves_a_whole_version(tmp_path):
    root, ready = tmp_path / "store", tmp_path / "ready"
    kill_when_stalled(root, "catalog", ready)
    store = Store(root)
    ref = store.resolve("d")
    result = store.verify(ref)
    # whole and readable; it only misses its catalog line, which verify notes
    assert result.ok and any("not in catalog.jsonl" in note for note in result.notes)
    assert store.load(ref).num_rows == 2
    same = store.commit(
        "d", pa.table({"id": ["a", "b"], "text": ["x", "y"]}), licence=Licence("MIT")
    )
    assert same == ref  # the same content is the same version
    other = store.commit("d", pa.table({"id": ["c"], "text": ["z"]}), licence=Licence("MIT"))
    assert str(other) == "d@v2" and store.verify(other).ok


def label_process(config, home, env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "stillroom", "label", str(config), *args],
        cwd=ROOT,
        env={**os.environ, **env, "PREFECT_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.timeout(600)
def test_four_label_runs_share_one_cache_and_store(
    tmp_path, fake_openai, write_config, monkeypatch
):
    records = 120
    asking: set[str] = set()
    all_asking = threading.Event()

    def gate(body):
        # no answer until all four runs are asking: their cache writes overlap by construction,
        # however far apart the processes start (a bound, so a missing run cannot hang the test)
        asking.add(body["model"])
        if len(asking) == 4:
            all_asking.set()
        all_asking.wait(timeout=240)

    server, url = fake_openai(latency_s=0.2, on_request=gate)
    store = tmp_path / "store"
    configs = [
        write_config(
            {
                "name": f"job-{n}",
                "store": str(store),
                "teacher.provider": "openai",
                "teacher.model": f"fake-{n}",  # a request of its own: nothing is shared
                "teacher.base_url": url,
                "teacher.api_key_env": "STILLROOM_TEST_KEY",
                "teacher.concurrency": 4,
                "data.limit": records,
            },
            f"job-{n}.yaml",
        )
        for n in range(4)
    ]
    with prefect_test_harness(server_startup_timeout=120):
        env = {"STILLROOM_TEST_KEY": "sk-test", "PREFECT_API_URL": PREFECT_API_URL.value()}
        runs = [label_process(c, tmp_path / f"p{n}", env) for n, c in enumerate(configs)]
        outputs = [run.communicate(timeout=400) for run in runs]
    assert [r.returncode for r in runs] == [0] * 4, [err for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == [f"job-{n}@v1" for n in range(4)]
    # the server bills by text: each text once per job, never twice within one
    assert len(server.billed) == records and set(server.billed.values()) == {4}
    with closing(sqlite3.connect(store / "cache.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (4 * records,)
        spans = db.execute(
            "SELECT tag, count(*), min(created_at), max(created_at) FROM ledger GROUP BY tag"
        ).fetchall()
    assert {tag: n for tag, n, _, _ in spans} == {f"job-{n}": records for n in range(4)}
    # the premise: the four wrote into the cache at the same time
    assert max(first for *_, first, _ in spans) < min(last for *_, last in spans)
    s = Store(store)
    for n in range(4):
        ref = s.resolve(f"job-{n}")
        assert s.verify(ref).ok and s.manifest(ref)["labeling"]["labeled"] == records


@pytest.mark.timeout(600)
def test_two_runs_of_one_config_share_its_budget_and_pay_each_request_once(
    tmp_path, fake_openai, write_config
):
    # at 1 USD a million tokens a request's worst case is about $0.005 (the prompt's bytes), its
    # real cost about $0.0005: the first run's 4 holds leave room for the second's, and the
    # budget pays for about half the records
    budget, price = 0.03, 1.0
    both_asking = threading.Event()

    def gate(body):
        # no answer until both runs are asking (the second, with more workers, asks for records
        # the first has not claimed): their spend overlaps by construction
        if len(set(server.auth_headers)) == 2:
            both_asking.set()
        # a run whose every request the other's holds leave no room for never asks: the cap
        # holds that way too, so the wait is bounded
        both_asking.wait(timeout=20)

    server, url = fake_openai(latency_s=0.5, on_request=gate)
    config = write_config(
        {
            "name": "job",
            "store": str(tmp_path / "store"),
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "teacher.concurrency": 4,
            "teacher.budget_usd": budget,
            "teacher.price": {"input_per_1m": price, "output_per_1m": price},
            "data.limit": 120,
        }
    )
    with prefect_test_harness(server_startup_timeout=120):
        env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
        runs = [
            label_process(
                config,
                tmp_path / f"p{n}",
                {**env, "STILLROOM_TEST_KEY": f"sk-run-{n}"},
                *(["--set", "teacher.concurrency=8"] if n else []),
            )
            for n in range(2)
        ]
        outputs = [run.communicate(timeout=400) for run in runs]
    assert [r.returncode for r in runs] == [0, 0], [err for _, err in outputs]
    # both runs overlapped (each started before either was answered); whether both reached the
    # endpoint depends on which took its holds first
    # each request paid once, and all of them together within the budget
    assert server.billed and set(server.billed.values()) == {1}, server.billed
    with closing(sqlite3.connect(tmp_path / "store" / "cache.sqlite")) as db:
        (spent,) = db.execute("SELECT SUM(cost_usd) FROM ledger WHERE tag = 'job'").fetchone()
        (held,) = db.execute("SELECT COUNT(*) FROM holds").fetchone()
    assert 0 < spent <= budget and held == 0
    assert any("budget reached" in err for _, err in outputs), [err for _, err in outputs]
