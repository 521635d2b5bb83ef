"""Scheduled runs decide for themselves: retrain the students or keep them, judge drift (PSI,
chi-square, failures, the current students' agreement on what is new), fail the run or warn,
call a webhook (retried; one that times out never costs the commit), and publish artifacts."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from stillroom.flows import load_config
from stillroom.flows._flow import distill
from stillroom.flows._policy import chi_square_p, psi
from stillroom.storage import Store


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next of `codes` (200 once they
    run out), or holds it `delay_s` first."""

    def __init__(self, codes=(), delay_s=0.0):
        self.codes, self.delay_s, self.bodies, self.paths = list(codes), delay_s, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.paths.append(self.path)
                time.sleep(outer.delay_s)
                code = outer.codes.pop(0) if outer.codes else 200
                try:
                    self.send_response(code)
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def scheduled(tmp_path, write_config, fake_openai, monkeypatch):
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    server, url = fake_openai()
    data = tmp_path / "records.jsonl"
    receivers = []

    def make(rows, changes=None, receiver=None):
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        base = {
            "data.path": str(data),
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "incremental": True,
            "students": [{"kind": "logreg"}],
            "evaluate.calibration_fraction": 0,
        }
        if receiver is not None:
            receivers.append(receiver)
        return load_config(write_config({**base, **(changes or {})}))

    yield server, make
    for receiver in receivers:
        receiver.close()


def report_of(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def spread(banking_rows):
    """The bundled records are sorted by label: every fifth one is a mix of them all."""
    return banking_rows[::5]


def test_students_are_retrained_when_enough_is_new_and_kept_otherwise(scheduled, spread):
    server, make = scheduled
    policy = {"retrain.min_new_records": 100}
    first = report_of(distill(make(spread[:300], policy)))
    assert first["schedule"]["retrain"] == {
        "retrained": True,
        "reason": "no current students for this config",
    }
    assert first["schedule"]["drift"]["compared_with"] is None

    # nothing new: no version, no training; the report carries the current students
    again = report_of(distill(make(spread[:300], policy)))
    assert again["labeling"]["records"] == 0 and server.requests == 300
    assert again["schedule"]["retrain"]["retrained"] is False
    assert again["students"] == first["students"]
    assert again["dataset"]["version"] == "v1" and again["dataset"]["students_trained_on"] == (
        "banking77@v1"
    )

    # 40 new: under the threshold, kept
    kept = report_of(distill(make(spread[:340], policy)))
    assert kept["dataset"]["version"] == "v2" and kept["labeling"]["records"] == 40
    assert kept["schedule"]["retrain"]["retrained"] is False
    assert "40 new labels" in kept["schedule"]["retrain"]["reason"]

    # 160 more: retrained, and the old students measured beside the new on the same records
    new_path = distill(make(spread[:500], policy))
    new = report_of(new_path)
    retrain = new["schedule"]["retrain"]
    assert retrain["retrained"] is True and retrain["reason"].startswith("160 new labels")
    (row,) = retrain["comparison"]
    assert row["kind"] == "logreg" and row["trained_on"] == "banking77@v1"
    assert row["agreement_after"] == new["students"][0]["agreement"]
    assert 0 < row["agreement_before"] <= 1 and row["agreement_before"] != row["agreement_after"]
    markdown = (new_path.parent / "report.md").read_text()
    assert "Students retrained: 160 new labels" in markdown and "banking77@v1 | " in markdown
    assert new["schedule"]["agreement_on_new"][0]["records"] == 160


def test_a_drop_in_agreement_on_new_records_retrains(scheduled, spread, banking_labels):
    server, make = scheduled
    policy = {"retrain.min_new_records": None, "retrain.max_agreement_drop": 0.05}
    seen = [r for r in spread if r["label"] in banking_labels[:60]]
    distill(make(seen, policy))
    # new records of labels the student never saw: it agrees far less on them
    unseen = [r for r in spread if r["label"] in banking_labels[60:]][:60]
    report = report_of(distill(make(seen + unseen, policy)))
    retrain = report["schedule"]["retrain"]
    assert retrain["retrained"] is True and "agrees" in retrain["reason"], retrain
    (measured,) = report["schedule"]["agreement_on_new"]
    assert measured["agreement_held_out"] - measured["agreement_on_new"] > 0.05


def test_drift_fails_the_run_after_committing_and_tells_the_webhook(
    scheduled, spread, banking_rows, banking_labels
):
    server, make = scheduled
    receiver = Receiver(codes=[500])  # the first delivery fails, the retry gets through
    drift = {
        "drift": {
            "max_psi": 0.5,
            "min_records": 30,
            "webhook": {"url": receiver.url, "retries": 2, "backoff_s": 0.05},
        }
    }
    distill(make(spread[:300], drift, receiver))
    one_label = [r for r in banking_rows if r["label"] == banking_labels[0] and r not in spread]
    config = make(spread[:300] + one_label[:40], drift)
    state = distill(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"drift in banking77@v2: psi \d"):
        state.result()
    store = Store(config.store)
    assert (
        store.versions("banking77") == ["v1", "v2"]
        and store.verify(store.resolve("banking77@v2")).ok
    )
    assert len(receiver.bodies) == 2 and receiver.bodies[0] == receiver.bodies[1]
    body = receiver.bodies[0]
    assert (body["event"], body["dataset"], body["action"]) == (
        "stillroom.drift",
        "banking77@v2",
        "fail",
    )
    (psi_check,) = [c for c in body["drift"]["checks"] if c["name"] == "psi"]
    assert psi_check["drifted"] and psi_check["value"] > 0.5
    assert "secret-token" not in json.dumps(body)
    # the hook is called at its whole URL, which is written nowhere: not in Prefect's flow-run
    # parameters (the config is one), nor in any file of the store
    assert receiver.paths == ["/hook/secret-token"] * 2
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert runs and all("secret-token" not in json.dumps(r.parameters, default=str) for r in runs)
    assert any("127.0.0.1" in json.dumps(r.parameters, default=str) for r in runs)
    for path in Path(config.store).rglob("*"):
        if path.is_file():
            assert b"secret-token" not in path.read_bytes(), path
    # the students trained on what drifted are not made current
    current = json.loads((Path(config.store) / "runs" / "banking77.current.json").read_text())
    assert current["dataset"] == "banking77@v1"


def test_a_run_that_mostly_fails_tells_the_webhook_before_it_stops(scheduled, spread, fake_openai):
    server, make = scheduled
    receiver = Receiver()
    broken, broken_url = fake_openai(faults={"500": 1.0})
    config = make(
        spread[:60],
        {
            "teacher.base_url": broken_url,
            "teacher.max_retries": 0,
            "drift": {"max_failure_share": 0.2, "webhook": {"url": receiver.url}},
        },
        receiver,
    )
    state = distill(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="only 0 of 60 records were labeled"):
        state.result()
    (body,) = receiver.bodies
    (share,) = [c for c in body["drift"]["checks"] if c["name"] == "failure_share"]
    assert share == {"name": "failure_share", "value": 1.0, "threshold": 0.2, "drifted": True}
    assert body["report"] is None and Store(config.store).versions("banking77") == ["v1"]


def test_drift_can_warn_and_a_webhook_that_times_out_costs_nothing(
    scheduled, spread, banking_rows, banking_labels, caplog
):
    server, make = scheduled
    receiver = Receiver(delay_s=1.0)
    drift = {
        "drift": {
            "max_psi": 0.5,
            "min_records": 30,
            "action": "warn",
            "webhook": {"url": receiver.url, "timeout_s": 0.2, "retries": 1, "backoff_s": 0.05},
        }
    }
    distill(make(spread[:300], drift, receiver))
    one_label = [r for r in banking_rows if r["label"] == banking_labels[0] and r not in spread]
    config = make(spread[:300] + one_label[:40], drift)
    with caplog.at_level("WARNING"):
        report = report_of(distill(config))  # completes
    assert report["schedule"]["drift"]["drifted"] is True
    assert len(receiver.bodies) == 2  # tried, retried, given up
    assert "was not notified after 2 attempts (ReadTimeout)" in caplog.text
    assert "secret-token" not in caplog.text and "127.0.0.1" in caplog.text
    assert Store(config.store).versions("banking77") == ["v1", "v2"]

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = {
            a.key: a  # the latest of each key
            for a in sorted(
                client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(
                            any_=[
                                "banking77-drift",
                                "banking77-report",
                                "banking77-labeling",
                                "banking77-students",
                                "banking77-labeling-progress",
                            ]
                        )
                    )
                ),
                key=lambda a: a.created,
            )
        }
    assert set(found) == {
        "banking77-drift",
        "banking77-report",
        "banking77-labeling",
        "banking77-students",
        "banking77-labeling-progress",
    }
    assert "drift in banking77@v2" in found["banking77-drift"].data
    assert found["banking77-report"].data.startswith("# banking77")
    assert found["banking77-labeling-progress"].data == 100.0
    rows = json.loads(found["banking77-labeling"].data)
    assert {"what": "records", "value": len(one_label[:40])} in rows
    assert {"what": "incremental.base", "value": "banking77@v1"} in rows


def test_a_previous_version_without_labels_is_not_compared(write_config):
    from stillroom.flows._incremental import Tally
    from stillroom.flows._policy import measure_drift

    config = load_config(write_config({"drift": {"max_psi": 0.1, "min_records": 1}}))
    tally = Tally(labels={"card_arrival": 40})
    drift = measure_drift(config, {}, "banking77@v1", tally, 40, 0, [])
    (psi_check,) = [c for c in drift.checks if c.name == "psi"]
    assert psi_check.value is None and psi_check.note == "the previous version has no labels"
    assert not drift.drifted


def test_psi_and_chi_square_see_a_shift_and_not_noise():
    labels = ["a", "b", "c"]
    same = psi({"a": 100, "b": 100, "c": 100}, {"a": 98, "b": 101, "c": 101}, labels)
    shifted = psi({"a": 100, "b": 100, "c": 100}, {"a": 250, "b": 25, "c": 25}, labels)
    assert same < 0.01 < 0.5 < shifted
    assert chi_square_p({"a": 100, "b": 100}, {"a": 98, "b": 102}, labels) > 0.5
    assert chi_square_p({"a": 100, "b": 100}, {"a": 180, "b": 20}, labels) < 1e-6
    assert chi_square_p({"a": 10}, {"a": 5}, labels) == 1.0  # one label: nothing to test
