"""docker-compose.yml is valid, and each of its services starts natively and works for real:
PostgreSQL 15 from Debian's packages and `prefect server start` on it, with a flow run against it."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_file_is_valid_and_pins_what_we_test():
    spec = yaml.safe_load(COMPOSE.read_text())
    assert set(spec["services"]) == {"postgres", "prefect-server"}
    import prefect

    assert spec["services"]["prefect-server"]["image"].startswith(
        f"prefecthq/prefect:{prefect.__version__}-"
    )
    assert spec["services"]["postgres"]["image"] == "postgres:15"
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (Debian package) is not installed; YAML checked only")
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == {"postgres", "prefect-server"}


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    pg = _pg_bin()
    if pg is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs Debian's PostgreSQL and root (to run it as the postgres user)")
    folder = Path(tempfile.mkdtemp(prefix="stillroom-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, str(pg / "initdb"), "-D", str(folder / "data"), "-U", "prefect", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *as_pg,
            str(pg / "pg_ctl"),
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(
            [*as_pg, str(pg / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server(postgres, tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            time.sleep(1)
        else:
            pytest.fail(
                "prefect server did not come up: " + (home / "server.log").read_text()[-2000:]
            )
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_a_labeling_flow_runs_against_prefect_on_postgres(prefect_server, write_config, tmp_path):
    config = write_config({"data.limit": 200})
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "client"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "stillroom", "label", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "banking77@v1"
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
    assert [(r["name"] != "", r["state_type"]) for r in runs] == [(True, "COMPLETED")]
    tasks = httpx.post(f"{prefect_server}/task_runs/filter", json={"limit": 50}, timeout=10).json()
    names = sorted({t["task_key"].split("-")[0] for t in tasks})
    assert "ingest" in names and "commit_version" in names
    assert (
        sum(t["name"].startswith("label_shard") for t in tasks) == 1
    )  # 200 records, shards of 256

    # the terminal stays quiet, but the flow's logs are on the server for the UI
    assert "Finished in state" not in result.stderr
    logs = httpx.post(
        f"{prefect_server}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200},
        timeout=10,
    ).json()
    messages = [log["message"] for log in logs]
    assert any(m.startswith("banking77@v1: 200 labeled, 0 failed") for m in messages), messages
    assert any("Finished in state Completed" in m for m in messages), messages

    # Prefect's own CLI, from the project's environment, lists the run (no 422s from fastapi)
    listed = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "ls"],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert runs[0]["name"] in listed.stdout and "COMPLETED" in listed.stdout
