"""Runs that end badly through no fault of the config: a teacher that puts everything in one
class, a teacher that cannot be reached, too few held-out records. Each ends in one clear line
(or a warning), with the labeled version committed so that nothing paid is lost."""

import json
import socket

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows._cli import app
from stillroom.storage import Store
from tests.openai_server import FakeTeacher

OPENAI = {
    "teacher.provider": "openai",
    "teacher.model": "fake",
    "teacher.api_key_env": "STILLROOM_TEST_KEY",
    "teacher.price": {"input_per_1m": 0.15, "output_per_1m": 0.6},
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")


def test_a_one_class_training_split_fails_clearly_after_the_labels_are_committed(
    write_config, fake_openai, banking_rows
):
    one_class = FakeTeacher({r["text"]: "card_arrival" for r in banking_rows}, accuracy=1.0)
    server, url = fake_openai(teacher=one_class)
    config = write_config({**OPENAI, "teacher.base_url": url, "data.limit": 20})
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]  # after the progress lines
    assert "Traceback" not in result.stderr
    assert line.startswith("stillroom: error: the teacher put all ")
    assert "training records of banking77@v1 in one class ('card_arrival'); never chosen: " in line
    assert "and 71 more. A student needs at least two classes" in line
    store = Store(config.parent / "store")
    labeled = store.load(store.resolve("banking77@v1"))
    assert labeled.num_rows == 20 and set(labeled.column("label").to_pylist()) == {"card_arrival"}
    assert sum(server.billed.values()) == 20  # paid once, kept


def test_a_teacher_that_cannot_be_reached_fails_the_run_and_says_why(write_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    config = write_config(
        {
            **OPENAI,
            "teacher.base_url": f"http://127.0.0.1:{port}/v1",
            "teacher.max_retries": 0,
            "data.limit": 20,
        }
    )
    result = CliRunner().invoke(app, ["label", str(config)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1:] == [
        "stillroom: error: only 0 of 20 records were labeled (0%, below teacher.min_labeled 50%): "
        "20 connection error: ConnectError. banking77@v1 keeps every failure with its reason "
        "(stillroom datasets show banking77@v1 --failures 10); fix the cause and run the same "
        "command again: answers already paid come from the cache"
    ]
    store = Store(config.parent / "store")
    manifest = store.manifest(store.resolve("banking77@v1"))
    assert manifest["labeling"]["failures"] == {"connection error: ConnectError": 20}
    # a lower bar lets the same (failed) version through: the share is the user's call
    lenient = CliRunner().invoke(app, ["label", str(config), "--set", "teacher.min_labeled=0"])
    assert lenient.exit_code == 0 and lenient.stdout.strip() == "banking77@v1"
    assert "0 labeled, 20 failed (20 connection error: ConnectError)" in lenient.stderr


def test_few_held_out_records_are_counted_in_the_report_and_warned_about(write_config, tmp_path):
    config = write_config({"data.limit": 60, "evaluate.test_fraction": 0.05})
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    dataset = report["dataset"]
    # 60 records leave too few for a calibration slice: every training record trains
    assert dataset["train_records"] + dataset["test_records"] == 60
    assert dataset["calibration_records"] == 0
    assert 0 < dataset["test_records"] < 30
    assert (
        f"stillroom: warning: only {dataset['test_records']} held-out record(s) measure the "
        "students" in result.stderr
    )
    assert (
        f"measured on {dataset['test_records']} held-out records"
        in (tmp_path / "run" / "report.md").read_text()
    )


def test_a_run_with_the_logreg_and_embedding_students(write_config, tmp_path):
    import sqlite3

    config = write_config(
        {"data.limit": 200, "students": [{"kind": "logreg"}, {"kind": "embedding", "C": 5.0}]}
    )
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    kinds = [s["kind"] for s in report["students"]]
    assert kinds == ["logreg", "embedding"]
    embedding = report["students"][1]
    assert 0.3 < embedding["agreement"] <= 1.0 and embedding["size_bytes"] < 1_000_000
    cache = tmp_path / "store" / "embeddings" / "embeddings.sqlite"
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 200
    assert (tmp_path / "run" / "students" / "1-embedding" / "model.skops").is_file()
