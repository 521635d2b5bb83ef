"""A new machine's first `stillroom run`: an empty HOME and PREFECT_HOME, so Prefect creates and
migrates its database on this very run (longer than Prefect's own 20 s start-up default on a
small machine), and the command must still succeed, in one go, without a traceback."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, EXAMPLE


@pytest.mark.timeout(900)
def test_the_first_run_under_an_empty_prefect_home_succeeds(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") or key == "PREFECT_SERVER_ANALYTICS_ENABLED"
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        PREFECT_HOME=str(home / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    result = subprocess.run(
        [sys.executable, "-m", "stillroom", "run", str(EXAMPLE)]
        + ["--set", f"data.path={DATA}", "--set", "data.limit=200"]
        + ["--set", f"store={tmp_path / 'store'}"]
        + ["--out", str(tmp_path / "run")],
        cwd=tmp_path,  # not the repository: the installed package, not the source folders
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (home / ".prefect" / "prefect.db").is_file()  # the database was made by this run
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labeling"]["labeled"] == 200 and report["students"][0]["agreement"] > 0.3
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "run" / "report.json")
    timing = result.stderr.strip().splitlines()[-1]
    assert timing.startswith("stillroom: ") and "Prefect server start" in timing
