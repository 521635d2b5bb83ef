"""`stillroom run` end to end, in a subprocess, against the local OpenAI-compatible server with
about 10% injected faults; then the same command again, which must not pay for anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SENTINEL_KEY

RECORDS = 320
FAULTS = {
    "429": 0.02,
    "500": 0.02,
    "503": 0.015,
    "timeout": 0.01,
    "malformed": 0.015,
    "drop": 0.01,
    "off_label": 0.03,
}


def stillroom(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "STILLROOM_TEST_KEY": SENTINEL_KEY,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "stillroom", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.mark.timeout(900)
def test_run_through_a_faulty_endpoint_then_rerun_for_free(tmp_path, fake_openai, write_config):
    server, url = fake_openai(faults=FAULTS, retry_after="0.2", hang_s=2.0, seed=7)
    config = write_config(
        {
            "teacher.provider": "openai",
            "teacher.model": "fake-teacher",
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "teacher.timeout_s": 1.0,
            "teacher.concurrency": 16,
            "teacher.max_retries": 8,
            "teacher.shard_size": 100,
            "teacher.answer_retries": 0,  # off-label answers stay failures here (re-asks: unit tests)
        }
    )

    def run_into(folder: Path) -> subprocess.CompletedProcess:
        overrides = ["--set", f"teacher.base_url={url}", "--set", f"data.limit={RECORDS}"]
        return stillroom("run", str(config), *overrides, "--out", str(folder), home=tmp_path)

    out = tmp_path / "run1"
    first = run_into(out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == str(out / "report.json")
    report = json.loads((out / "report.json").read_text())
    lab = report["labeling"]

    # every record ends labeled or failed with a reason; the failures are the off-label answers
    assert lab["records"] == RECORDS and lab["labeled"] + lab["failed"] == RECORDS
    assert sum(server.faults_sent.values()) >= 0.05 * RECORDS
    assert lab["failed"] == server.faults_sent["off_label"] > 0
    # no request was paid twice, and the report counts exactly what the server billed
    assert max(server.billed.values()) == 1
    assert lab["teacher_calls"] == sum(server.billed.values()) == RECORDS
    assert lab["retries"] >= sum(n for k, n in server.faults_sent.items() if k != "off_label")
    assert lab["cost_usd"] == pytest.approx(
        (0.15 * lab["input_tokens"] + 0.6 * lab["output_tokens"]) / 1e6, abs=1e-6
    )

    store = tmp_path / "store"
    name, version = report["dataset"]["name"], report["dataset"]["version"]
    table = pq.read_table(store / "datasets" / name / version / "data.parquet").to_pylist()
    failed = [r for r in table if r["label"] is None]
    assert len(failed) == lab["failed"] and all(
        r["error"] == "off-label answer" and r["raw"] for r in failed
    )
    gold_hits = sum(r["label"] == r["gold"] for r in table if r["label"])
    (student,) = report["students"]
    assert report["teacher"]["accuracy_vs_gold"] > 0.6  # the server answers gold 85% of the time
    assert (
        0.0 < student["agreement"] <= 1.0
        and student["size_bytes"] > 0
        and gold_hits > 0.7 * lab["labeled"]
    )

    calls = server.requests
    second = run_into(tmp_path / "run2")
    assert second.returncode == 0, second.stderr
    again = json.loads((tmp_path / "run2" / "report.json").read_text())
    assert server.requests == calls
    assert again["labeling"]["teacher_calls"] == 0 and again["labeling"]["cache_hits"] == RECORDS
    assert again["dataset"] == report["dataset"]  # same content: the same immutable version

    verify = stillroom(
        "datasets", "verify", f"{name}@{version}", "--store", str(store), home=tmp_path
    )
    assert verify.returncode == 0, verify.stderr

    # the key went to the server as a bearer token and nowhere else
    assert all(h == f"Bearer {SENTINEL_KEY}" for h in server.auth_headers)
    for path in list(store.rglob("*")) + list(out.rglob("*")):
        if path.is_file():
            assert SENTINEL_KEY.encode() not in path.read_bytes(), path
    for proc in (first, second):
        assert SENTINEL_KEY not in proc.stdout + proc.stderr
