"""`stillroom deploy` against a real Prefect API (the test harness's server): create, update,
list and delete scheduled deployments; bad input fails with one line. A Prefect API that is not
ready is waited for with backoff, then named."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect import get_client
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows import _engine
from stillroom.flows._cli import app
from stillroom.flows._deploy import scheduled_label

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def deployments():
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def test_deploy_creates_updates_lists_and_deletes(write_config, tmp_path, monkeypatch):
    config = write_config()
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["deploy", str(config), "--cron", "0 2 * * *"])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().splitlines()[-1] == "distill/banking77"
    made = deployments()["banking77"]
    assert [s.schedule.cron for s in made.schedules] == ["0 2 * * *"]
    assert made.parameters == {"config": str(config), "overrides": []}
    assert made.entrypoint == "stillroom.flows._deploy.scheduled_distill"
    assert made.work_pool_name == "stillroom" and made.job_variables == {
        "working_dir": str(tmp_path),
        "env": {"PREFECT_LOGGING_EXTRA_LOGGERS": "stillroom"},
    }
    # a late run waits for the one before it
    assert made.global_concurrency_limit.limit == 1

    # the same name again: updated, not doubled
    again = runner.invoke(
        app,
        ["deploy", str(config), "--cron", "30 1 * * 1", "--flow", "label", "--name", "weekly"],
    )
    assert again.exit_code == 0, again.output
    updated = runner.invoke(
        app, ["deploy", str(config), "--cron", "0 3 * * *", "--set", "data.limit=100"]
    )
    assert updated.exit_code == 0, updated.output
    found = deployments()
    assert set(found) == {"banking77", "weekly"}
    assert [s.schedule.cron for s in found["banking77"].schedules] == ["0 3 * * *"]
    assert found["banking77"].parameters["overrides"] == ["data.limit=100"]

    listed = runner.invoke(app, ["deploy", "--list"])
    assert listed.stdout.splitlines() == [
        f"distill/banking77\t0 3 * * *\tactive\tstillroom\t{config}",
        f"label/weekly\t30 1 * * 1\tactive\tstillroom\t{config}",
    ]
    gone = runner.invoke(app, ["deploy", "--delete", "weekly"])
    assert gone.exit_code == 0 and gone.stdout.strip() == "deleted label/weekly"
    assert set(deployments()) == {"banking77"}
    missing = runner.invoke(app, ["deploy", "--delete", "weekly"])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "stillroom: error: no deployment named 'weekly' (stillroom deploy --list)"
    )
    runner.invoke(app, ["deploy", "--delete", "distill/banking77"])
    assert deployments() == {}


@pytest.mark.parametrize(
    ("cron", "reason"),
    [("every night", "Invalid cron string"), ("0 25 * * *", "Invalid cron string")],
)
def test_an_invalid_cron_fails_with_one_line_and_deploys_nothing(write_config, cron, reason):
    out = runner.invoke(app, ["deploy", str(write_config()), "--cron", cron])
    assert out.exit_code == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"stillroom: error: --cron {cron!r}: {reason}"), line
    assert "banking77" not in deployments()


def test_a_secret_in_a_deployment_parameter_is_refused(write_config):
    out = runner.invoke(
        app,
        [
            "deploy",
            str(write_config()),
            "--cron",
            "0 2 * * *",
            "--set",
            "drift.webhook.url=https://hooks.example/T0KEN",
        ],
    )
    assert out.exit_code == 2 and "T0KEN" not in out.output
    assert out.stderr.startswith(
        "stillroom: error: --set drift.webhook.url: a deployment's parameters are shown in the "
        "Prefect UI"
    )
    named = runner.invoke(
        app,
        ["deploy", str(write_config()), "--cron", "0 2 * * *", "--set", "teacher.api_key_env=K"],
    )
    assert named.exit_code == 0, named.output  # the name of a variable is no secret
    runner.invoke(app, ["deploy", "--delete", "banking77"])


def test_deploy_checks_the_config_now(tmp_path):
    out = runner.invoke(app, ["deploy", str(tmp_path / "nope.yaml"), "--cron", "0 2 * * *"])
    assert out.exit_code == 2
    assert out.stderr.strip() == f"stillroom: error: config file not found: {tmp_path}/nope.yaml"


def test_a_deployment_whose_config_is_gone_fails_its_run_saying_so(write_config):
    config = write_config()
    config.unlink()
    state = scheduled_label(str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"config file not found: {config}"):
        state.result()


class Api:
    """A stand-in Prefect API whose /ready answers the next of `codes` (200 once they run out)."""

    def __init__(self, codes):
        self.codes, self.calls = list(codes), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.calls += 1
                self.send_response(outer.codes.pop(0) if outer.codes else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_an_api_whose_database_is_down_is_retried_with_backoff(monkeypatch):
    monkeypatch.setenv("STILLROOM_API_BACKOFF_S", "0.01")
    api = Api([503, 503])
    assert _engine.wait_ready(api.url) == 3 and api.calls == 3
    monkeypatch.setenv("STILLROOM_API_TRIES", "4")
    down = Api([503] * 10)
    with pytest.raises(_engine.EngineError, match="not ready after 4 tries: its database is not"):
        _engine.wait_ready(down.url)
    assert down.calls == 4
    down.server.shutdown()
    down.server.server_close()
    with pytest.raises(_engine.EngineError, match=r"not answering \(ConnectError\)"):
        _engine.wait_ready(down.url)


def test_deploy_needs_a_server(write_config, tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "p")}
    out = subprocess.run(
        [sys.executable, "-m", "stillroom", "deploy", str(write_config()), "--cron", "0 2 * * *"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().startswith("stillroom: error: deploy needs a running Prefect server")


def test_prefect_yaml_deploys_the_same_with_prefects_own_cli(tmp_path):
    """The repository's prefect.yaml, deployed by `prefect deploy --all`: the deployment
    `stillroom deploy examples/scheduled.yaml` would make, listed by `stillroom deploy --list`."""
    import os
    import shutil
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from stillroom.flows._deploy import _ensure_pool
    from tests.conftest import ROOT

    _ensure_pool("stillroom")
    shutil.copy(ROOT / "prefect.yaml", tmp_path / "prefect.yaml")
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "home"),
        "PWD": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    made = deployments()["banking77-nightly"]
    assert made.entrypoint == "stillroom.flows._deploy.scheduled_distill"
    assert made.parameters == {"config": "examples/scheduled.yaml", "overrides": []}
    assert [s.schedule.cron for s in made.schedules] == ["0 2 * * *"]
    assert made.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}
    ]
    listed = runner.invoke(app, ["deploy", "--list"])
    assert "distill/banking77-nightly\t0 2 * * *\tactive\tstillroom\texamples/scheduled.yaml" in (
        listed.stdout.splitlines()
    )
    runner.invoke(app, ["deploy", "--delete", "banking77-nightly"])
