"""Prefect for the command line: settings fit for a cold first start and a quiet terminal, and
the API server started before it is needed, so it boots while the teacher loads its model.

A user's own Prefect settings always win: with an API URL configured (a real server, as in
docker-compose.yml), nothing is started and nothing is overridden.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx

STARTUP_TIMEOUT_S = 600
"""Seconds the server may take to answer. A first start on an empty PREFECT_HOME creates and
migrates its database: over Prefect's 20 s default on a 2-core machine."""

_QUIET = "CRITICAL"


def configure(debug: bool = False) -> None:
    """Environment defaults for Prefect and the model libraries, for this process and the ones it
    starts; a variable the user has set is left as it is."""
    console = "INFO" if debug else _QUIET
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_S),
        # quiet on the terminal (the CLI reports in its own lines), every log kept on the server
        # (Prefect's logging.yml has one console handler; its API handler is left at INFO)
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": console,
        "PREFECT_LOGGING_EXTRA_LOGGERS": "stillroom",
        # no model hub here: models come from local folders and packages
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


class EngineError(Exception):
    """Prefect's server could not be started."""


def wait_ready(url: str) -> int:
    """Wait until the Prefect API at `url` answers and its database is reachable (`/ready`),
    retrying with backoff (STILLROOM_API_TRIES tries, default 6; the waits double from
    STILLROOM_API_BACKOFF_S, default 1 s, up to 15 s); returns the tries it took. A server whose
    database is down answers 503 there, and the error says so."""
    tries = max(1, int(os.environ.get("STILLROOM_API_TRIES", "6")))
    delay = float(os.environ.get("STILLROOM_API_BACKOFF_S", "1"))
    problem = ""
    key = os.environ.get("PREFECT_API_KEY")  # Prefect Cloud's, when set
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=5.0, headers=headers) as client:
        for attempt in range(1, tries + 1):
            try:
                answer = client.get(f"{url.rstrip('/')}/ready")
                if answer.status_code == 404:  # an API without /ready (Prefect Cloud's)
                    answer = client.get(f"{url.rstrip('/')}/health")
                if answer.status_code == 200:
                    return attempt
                if answer.status_code in (401, 403):
                    raise EngineError(
                        f"the Prefect API at {url} refused the request (HTTP "
                        f"{answer.status_code}): check PREFECT_API_KEY"
                    )
                problem = (
                    "its database is not available"
                    if answer.status_code == 503
                    else f"it answered HTTP {answer.status_code}"
                )
            except httpx.TransportError as exc:
                problem = f"it is not answering ({type(exc).__name__})"
            if attempt < tries:
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
    raise EngineError(
        f"the Prefect API at {url} is not ready after {tries} tries: {problem}; start the "
        "server and its database (docker-compose up -d, or prefect server start) and run again"
    )


class Engine:
    """The Prefect API this process talks to: the configured one, or Prefect's own server app
    started here in a subprocess (the command Prefect's ephemeral mode runs) and stopped at exit.

    `start()` returns at once; `ready()` waits until the server answers and says how long it
    took since `start()`.
    """

    def __init__(self) -> None:
        self.url: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.started = time.perf_counter()
        self.ready_s = 0.0
        self.external: str | None = None  # a server the user configured

    @classmethod
    def start(cls) -> Engine:
        engine = cls()
        engine.external = configured_server()
        if engine.external:
            return engine
        port = _free_port()
        # the server's stderr goes to a file, not a pipe: a pipe nobody reads during the run
        # would block the server once its buffer filled
        engine.log = tempfile.TemporaryFile()  # noqa: SIM115 (stop closes it)
        engine.process = subprocess.Popen(
            _server_command(port),
            env={**os.environ, **_SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=engine.log,
        )
        # registered before Prefect's own exit handlers, so it runs after they have sent their
        # last logs and events to this server
        atexit.register(engine.stop)
        engine.url = f"http://127.0.0.1:{port}/api"
        return engine

    def ready(self) -> float:
        """Wait for the server; the seconds from `start()` until it answered."""
        if self.external:
            wait_ready(self.external)
            self.ready_s = time.perf_counter() - self.started
            return self.ready_s
        if self.process is None:
            return 0.0
        limit = float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)
        )
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - self.started < limit:
                if self.process.poll() is not None:
                    raise EngineError(
                        f"Prefect's server exited with code {self.process.returncode}: {self._stderr()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return self.ready_s
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise EngineError(
            f"Prefect's server did not answer within {limit:.0f} s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or point PREFECT_API_URL at a running "
            "server (`prefect server start`)"
        )

    @contextlib.contextmanager
    def connected(self) -> Iterator[None]:
        """Prefect's client settings pointed at this server for the body."""
        if self.url is None:
            yield
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()

    def _stderr(self) -> str:
        if self.log is None:
            return "no output"
        self.log.seek(0)
        err = self.log.read().decode(errors="replace")
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "no output"


# what Prefect's ephemeral mode sets for its server, and no block registration (nothing here
# uses blocks; a real `prefect server start` registers them)
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
}


def configured_server() -> str | None:
    """The Prefect API URL the user configured (environment, profile, prefect.toml, .env, or a
    test harness), if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if _may_name_a_server():
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or None
    return None


def _may_name_a_server() -> bool:
    """Whether Prefect's settings could name an API URL outside the environment: then Prefect
    itself is asked (importing it takes a second or two, so it is not asked otherwise). Prefect
    already imported means a caller (a test harness, a notebook) may have set it in code."""
    if "prefect" in sys.modules:
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    places = [
        Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")),
        Path("prefect.toml"),
        Path(".env"),
        Path("pyproject.toml"),
    ]
    for place in places:
        try:
            text = place.read_text(errors="replace")
        except OSError:
            continue
        if "PREFECT_API_URL" in text or "[api]" in text or "api.url" in text:
            return True
    return False


def _server_command(port: int) -> list[str]:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is a dependency"
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(spec.origin).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
