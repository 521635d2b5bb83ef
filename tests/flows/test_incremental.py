"""Incremental labeling: a source that grows is labeled one new or edited record at a time, into
child versions that keep what was answered; a run with nothing new commits nothing."""

import json

import pytest
from prefect.testing.utilities import prefect_test_harness

from stillroom.flows import load_config
from stillroom.flows._flow import label_dataset
from stillroom.storage import Store


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def grow(tmp_path, banking_rows, write_config, fake_openai, monkeypatch):
    """A config over a JSONL file the test rewrites, labeled by the local test server."""
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    server, url = fake_openai()
    data = tmp_path / "records.jsonl"

    def write(rows):
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    config_path = write_config(
        {
            "data.path": str(data),
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "teacher.shard_size": 16,
            "incremental": True,
        }
    )
    return server, write, config_path


def test_a_growing_source_is_labeled_only_where_it_is_new(grow, banking_rows):
    server, write, config_path = grow
    config = load_config(config_path)
    store = Store(config.store)
    first = banking_rows[:60]
    write(first)
    ref, summary = label_dataset(config)
    assert (str(ref), summary.records, server.requests) == ("banking77@v1", 60, 60)
    assert summary.incremental is None  # the first version grows from nothing
    v1 = store.load(ref).to_pylist()

    # the same records again: nothing is sent, nothing committed
    ref, summary = label_dataset(config)
    assert (str(ref), summary.records, server.requests) == ("banking77@v1", 0, 60)
    assert summary.incremental["to_label"] == 0 and store.versions("banking77") == ["v1"]

    # 20 new records and 3 edited ones: 23 calls, a child version that keeps the other 57
    edited = [dict(r, text=r["text"] + " (edited)") for r in first[:3]]
    write(edited + first[3:] + banking_rows[60:80])
    ref, summary = label_dataset(config)
    assert (str(ref), summary.records, server.requests) == ("banking77@v2", 23, 83)
    manifest = store.manifest(ref)
    assert manifest["incremental"] == {
        "base": "banking77@v1",
        "records": 80,
        "to_label": 23,
        "new": 20,
        "edited": 3,
        "retried": 0,
        "kept": 57,
    }
    assert manifest["rows"] == 80 and manifest["labeling"]["labeled"] == 80
    assert (
        manifest["previous"] == "banking77@v1"
        and "57 kept from banking77@v1" in (manifest["message"])
    )
    v2 = {r["id"]: r for r in store.load(ref).to_pylist()}
    assert len(v2) == 80
    for row in v1[3:]:
        assert v2[row["id"]] == row  # kept as they were: label, probabilities, raw answer
    for row in edited:
        assert v2[row["id"]]["text"] == row["text"]
    assert store.verify(ref).ok


def test_a_corrected_gold_label_reaches_the_child_version(grow, banking_rows):
    server, write, config_path = grow
    config = load_config(config_path)
    rows = banking_rows[:30]
    write(rows)
    label_dataset(config)
    fixed = [dict(rows[0], label="card_linking")]  # it was card_arrival
    write(fixed + rows[1:])
    ref, summary = label_dataset(config)
    assert (str(ref), summary.records, server.requests) == ("banking77@v2", 1, 30)  # cached
    assert summary.incremental["edited"] == 1
    table = Store(config.store).load(ref).to_pydict()
    gold = dict(zip(table["id"], table["gold"], strict=True))
    assert gold[rows[0]["id"]] == "card_linking" and len(gold) == 30


def test_records_that_leave_the_source_stay_in_the_child_version(grow, banking_rows):
    server, write, config_path = grow
    config = load_config(config_path)
    write(banking_rows[:30])
    label_dataset(config)
    write(banking_rows[20:40])  # today's file only: ten already labeled, ten new
    ref, summary = label_dataset(config)
    assert (summary.records, server.requests) == (10, 40)
    table = Store(config.store).load(ref)
    assert table.num_rows == 40 and table.column("error").null_count == 40


def test_another_prompt_labels_everything_again(grow, banking_rows):
    server, write, config_path = grow
    write(banking_rows[:30])
    label_dataset(load_config(config_path))
    other = load_config(config_path, ["task.instructions=Say which banking intent this is."])
    ref, summary = label_dataset(other)
    assert (str(ref), summary.records, server.requests) == ("banking77@v2", 30, 60)
    assert "incremental" not in Store(other.store).manifest(ref)


def test_without_incremental_every_record_is_labeled_again(grow, banking_rows):
    server, write, config_path = grow
    write(banking_rows[:30])
    config = load_config(config_path, ["incremental=false"])
    label_dataset(config)
    ref, summary = label_dataset(config)  # every answer from the cache: the same version
    assert (str(ref), summary.records, summary.run.cache_hits, server.requests) == (
        "banking77@v1",
        30,
        30,
        30,
    )
