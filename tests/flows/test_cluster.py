"""Labeling on a Dask cluster (a LocalCluster of two worker processes, through Prefect's Dask
task runner) commits the very version a serial run commits, and pays for nothing twice: a text
two workers ask about at once is sent once."""

import json
import os

import pytest
from prefect.testing.utilities import prefect_test_harness

from stillroom.flows import load_config
from stillroom.flows._flow import label_dataset
from stillroom.storage import Store

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_local_dask_cluster_commits_what_a_serial_run_does(
    tmp_path, banking_rows, write_config, fake_openai, monkeypatch
):
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")  # the workers inherit it
    # 120 records: the second 40 repeat the first 40 texts under new ids, in shards that are out
    # on the workers at the same time as the first ones
    rows = banking_rows[::37][:80]
    rows = rows[:40] + [dict(r, id=f"again-{r['id']}") for r in rows[:40]] + rows[40:]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {
        "data.path": str(data),
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "teacher.shard_size": 10,
        "teacher.concurrency": 8,
    }
    serial_server, serial_url = fake_openai(latency_s=0.02)
    serial = load_config(
        write_config(
            {**common, "teacher.base_url": serial_url, "store": str(tmp_path / "a")}, "a.yaml"
        )
    )
    ref, _ = label_dataset(serial)

    server, url = fake_openai(latency_s=0.02)
    config = load_config(
        write_config(
            {
                **common,
                "teacher.base_url": url,
                "store": str(tmp_path / "b"),
                "runner": {"kind": "dask", "workers": 2, "in_flight": 8},
            },
            "b.yaml",
        )
    )
    before = dict(os.environ)
    cluster_ref, summary = label_dataset(config)
    assert dict(os.environ) == before  # the local cluster's settings for its workers are undone
    a, b = Store(serial.store), Store(config.store)
    assert str(cluster_ref) == str(ref) == "banking77@v1"
    assert b.manifest(cluster_ref)["content_sha256"] == a.manifest(ref)["content_sha256"]
    assert b.load(cluster_ref).equals(a.load(ref))
    # 80 distinct texts: 80 calls, whichever worker asked first; the rest came from the cache
    assert server.requests == 80 and serial_server.requests == 80
    assert (summary.records, summary.labeled, summary.run.teacher_calls) == (120, 120, 80)
    assert summary.run.cache_hits == 40


def test_a_budget_holds_across_the_workers_of_a_cluster(
    tmp_path, banking_rows, write_config, fake_openai, monkeypatch
):
    import sqlite3
    from contextlib import closing

    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")  # the workers inherit it
    server, url = fake_openai(latency_s=0.2)
    budget = 0.01  # a few requests' worst case at a time, at 1 USD a million tokens
    config = load_config(
        write_config(
            {
                "teacher.provider": "openai",
                "teacher.model": "fake",
                "teacher.api_key_env": "STILLROOM_TEST_KEY",
                "teacher.base_url": url,
                "teacher.shard_size": 10,
                "teacher.concurrency": 4,
                "teacher.budget_usd": budget,
                "teacher.price": {"input_per_1m": 1.0, "output_per_1m": 1.0},
                "data.limit": 80,
                "runner": {"kind": "dask", "workers": 2, "in_flight": 8},
            }
        )
    )
    _, summary = label_dataset(config)
    assert summary.failures.get("budget exhausted") and summary.labeled > 0
    assert server.billed and set(server.billed.values()) == {1}
    with closing(sqlite3.connect(config.cache_path)) as db:
        (spent,) = db.execute("SELECT SUM(cost_usd) FROM ledger").fetchone()
    assert 0 < spent <= budget
