"""Kill `stillroom label` with SIGKILL at random points, run it again: the job finishes, no
request is paid twice, and the dataset is the same as an uninterrupted run's."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import pyarrow.parquet as pq
import pytest
import yaml
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from stillroom.flows import load_config
from stillroom.flows._teacher import build_teacher
from stillroom.storage import Store
from tests.conftest import ROOT
from tests.openai_server import expected_generation

RECORDS = 200


def start_label(config, home):
    env = {**os.environ, "STILLROOM_TEST_KEY": "sk-test", "PREFECT_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "stillroom", "label", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a suite started in the background by a shell ignores SIGINT, and so would the CLI
        # (Python leaves an ignored SIGINT ignored): the CLI gets Ctrl-C as a terminal sends it
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dataset(store, version):
    table = pq.read_table(store / "datasets" / "banking77" / version / "data.parquet").to_pylist()
    return sorted((r["id"], r["label"], r["probs"], r["error"]) for r in table)


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_then_resume(tmp_path, fake_openai, write_config):
    changes = {
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "teacher.concurrency": 8,
        "data.limit": RECORDS,
    }
    control, control_url = fake_openai(latency_s=0.05)
    clean = write_config(
        {**changes, "teacher.base_url": control_url, "store": str(tmp_path / "clean")}, "clean.yaml"
    )
    done = start_label(clean, tmp_path / "p0")
    assert done.wait(300) == 0, done.stderr.read()

    server, url = fake_openai(latency_s=0.2)
    config = write_config(
        {**changes, "teacher.base_url": url, "store": str(tmp_path / "killed")}, "killed.yaml"
    )
    rng = random.Random(11)
    kills: list[float] = []
    for attempt in range(3):
        target = server.requests + rng.randint(10, 50)
        process = start_label(config, tmp_path / f"p{attempt + 1}")
        deadline = time.monotonic() + 120
        while server.requests < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills.append(time.monotonic())
        process.wait(30)
    assert len(kills) == 3 and sum(server.billed.values()) < RECORDS

    final = start_label(config, tmp_path / "p9")
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert out.strip() == "banking77@v1"
    # an answer is stored the moment it arrives, so the only requests paid twice are those
    # whose answer was on the wire (or not yet stored, on a busy machine) when the process died:
    # billed by the server within half a second of a kill (a request written just before the
    # kill can be read by a busy server just after it), at most `concurrency` per kill
    twice = [key for key, n in server.billed.items() if n > 1]
    assert max(server.billed.values()) <= 2 and len(twice) <= 8 * len(kills)
    for key in twice:
        first_sent = server.billed_at[key][0]
        assert any(abs(first_sent - kill) <= 0.5 for kill in kills), (key, first_sent, kills)
    assert len(server.billed) == RECORDS
    assert dataset(tmp_path / "killed", "v1") == dataset(tmp_path / "clean", "v1")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGINT, 130, "interrupted."), (signal.SIGTERM, 143, "terminated (SIGTERM).")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(
    tmp_path, fake_openai, write_config, signum, code, said
):
    server, url = fake_openai(latency_s=0.2)
    config = write_config(
        {
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "teacher.concurrency": 4,
            "data.limit": 100,
        }
    )
    process = start_label(config, tmp_path / "p")
    deadline = time.monotonic() + 120
    while server.requests < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, (server.requests, err[-3000:])
    assert (
        err.strip().splitlines()[-1].startswith(f"stillroom: {said}")
        and "run the same command" in err
    )
    paid = sum(server.billed.values())
    final = start_label(config, tmp_path / "q")
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    # as with a kill, only the answers in flight at the interrupt (at most `concurrency`) are paid again
    twice = [key for key, n in server.billed.items() if n > 1]
    assert len(server.billed) == 100 and len(twice) <= 4 and paid < 100


GENERATIONS = 120
EDGE_WORDS = {7: "EMPTY", 13: "REFUSE", 21: "FILTER"}  # by record number modulo 40


def write_generate(tmp_path, name, url, store):
    """A `task.kind: generate` config (top_logprobs > 0, so tokens are stored) for the fake
    server at `url`; every config of a test shares one data file."""
    data = tmp_path / "prompts.jsonl"
    if not data.exists():
        rows = [
            {
                "id": f"g{i:03d}",
                "instruction": f"Write about stone number {i} {EDGE_WORDS.get(i % 40, '')}".strip(),
                "input": f"The stone lies by house {i}." if i % 3 == 0 else "",
            }
            for i in range(GENERATIONS)
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "gen",
        "store": str(store),
        "data": {
            "path": str(data),
            "instruction_field": "instruction",
            "input_field": "input",
            "gold_field": None,
            "licence": "MIT",
            "licence_statement": "MIT License",
        },
        "task": {
            "kind": "generate",
            "instructions": "Answer in prose.",
            "system_prompt": "You write calm prose.",
            "max_tokens": 24,
            "top_logprobs": 3,
        },
        "teacher": {
            "provider": "openai",
            "model": "fake",
            "base_url": url,
            "api_key_env": "STILLROOM_TEST_KEY",
            "concurrency": 8,
            "price": {"input_per_1m": 1.0, "output_per_1m": 2.0},
            "terms": "openai",
        },
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def cached_answers(store):
    """How many answers the store's response cache holds, read as another process would."""
    path = store / "cache.sqlite"
    if not path.exists():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def as_steps(choice):
    """The server's logprobs as the stored `tokens` column holds them (None for a refusal)."""
    if "logprobs" not in choice:
        return None
    return [
        {
            "token": s["token"],
            "logprob": s["logprob"],
            "top": [{"token": t["token"], "logprob": t["logprob"]} for t in s["top_logprobs"]],
        }
        for s in choice["logprobs"]["content"]
    ]


@pytest.mark.timeout(240)
def test_generate_sigkill_mid_run_then_resume(tmp_path, fake_openai, monkeypatch):
    """A generate task killed mid-run and run again: it finishes, every record is paid exactly
    once over both runs, and the version holds the completions, finish reasons and tokens of an
    uninterrupted run, byte for byte."""
    # Once the run is past a random point, the server holds each new request unanswered; when
    # all 8 workers wait on one, no answer is on the wire, and the kill lands mid-run with 8
    # requests in flight yet every delivered answer in the hands of the process. (A kill while an
    # answer is being read pays that one again: test_sigkill_at_random_points_then_resume allows
    # for it.) So each answer paid before the kill must come from the cache: paid once, in all.
    holding, release, lock = threading.Event(), threading.Event(), threading.Lock()
    held = [0]

    def hold(body):
        if holding.is_set():
            with lock:
                held[0] += 1
            release.wait(60)

    control, control_url = fake_openai()
    server, url = fake_openai(latency_s=0.05, on_request=hold)
    clean = write_generate(tmp_path, "clean.yaml", control_url, tmp_path / "clean")
    config = write_generate(tmp_path, "killed.yaml", url, tmp_path / "killed")
    target = random.Random(13).randint(20, GENERATIONS - 40)
    started: list[subprocess.Popen] = []
    # one Prefect server for every run: each process starting its own (as in the test above)
    # would cost more than the labeling itself
    with prefect_test_harness(server_startup_timeout=120):
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        try:
            # the uninterrupted run, into a store of its own, alongside the killed one
            done = start_label(clean, tmp_path / "p0")
            process = start_label(config, tmp_path / "p1")
            started += [done, process]
            deadline = time.monotonic() + 90
            while (
                server.requests < target and process.poll() is None and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            holding.set()
            while held[0] < 8 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert process.poll() is None and held[0] == 8, (held, process.poll())
            paid = sum(server.billed.values())
            assert paid == server.requests - 8 and target <= paid < GENERATIONS - 8
            # an answer is stored the moment it arrives: a worker asks again only once it is in
            assert cached_answers(tmp_path / "killed") == paid
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            holding.clear()
            release.set()
            time.sleep(0.3)  # the held requests find their client gone: not delivered, not billed
            assert sum(server.billed.values()) == paid
            assert Store(tmp_path / "killed").versions("gen") == []  # killed before any commit

            out, err = done.communicate(timeout=120)
            assert done.returncode == 0, err
            assert out.strip() == "gen@v1"
            assert sum(control.billed.values()) == len(control.billed) == GENERATIONS

            final = start_label(config, tmp_path / "p2")
            started.append(final)
            out, err = final.communicate(timeout=120)
            assert final.returncode == 0, err
            assert out.strip() == "gen@v1"
            assert f"{GENERATIONS - paid} teacher calls, {paid} cache hits" in err
        finally:
            release.set()
            for p in started:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(30)
    # every record paid exactly once, over both runs: as many answers served as records
    assert sum(server.billed.values()) == len(server.billed) == GENERATIONS

    resumed_store, clean_store = Store(tmp_path / "killed"), Store(tmp_path / "clean")
    resumed = resumed_store.load(resumed_store.resolve("gen@v1"))
    reference = clean_store.load(clean_store.resolve("gen@v1"))
    # the same version content: every column (completions, finish reasons, tokens, usage, cost)
    # and the same bytes
    assert resumed.to_pylist() == reference.to_pylist()
    assert (
        resumed_store.manifest(resumed_store.resolve("gen@v1"))["content_sha256"]
        == clean_store.manifest(clean_store.resolve("gen@v1"))["content_sha256"]
    )
    # both are exactly what the server writes for each prompt
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    teacher = build_teacher(load_config(config))
    rows = resumed.to_pylist()
    assert [r["id"] for r in rows] == [f"g{i:03d}" for i in range(GENERATIONS)]
    for row in rows:
        choice = expected_generation(teacher.build_request(row["text"]))["choices"][0]
        assert row["completion"] == choice["message"]["content"], row["id"]
        assert row["finish_reason"] == choice["finish_reason"], row["id"]
        assert row["tokens"] == as_steps(choice), row["id"]
    assert {r["finish_reason"] for r in rows} == {"stop", "length", "content_filter"}
    assert sum(r["tokens"] is not None and len(r["tokens"]) > 0 for r in rows) > 100
    assert all(len(s["top"]) == 3 for r in rows for s in r["tokens"] or [])
