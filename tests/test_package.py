"""One distribution, one namespace: `stillroom` installs its four parts as `stillroom.*` (no
top-level `flows` or `storage` in site-packages), the leaves never import each other, and
importing the CLI changes nothing in the process."""

import ast
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import ROOT

LEAVES = ("labelers", "storage", "students")


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_namespace_is_installed_and_the_old_top_level_names_are_not(tmp_path):
    done = python("import stillroom; print(stillroom.__version__)", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == version("stillroom")
    for name in (*LEAVES, "flows"):
        done = python(f"import {name}", tmp_path)  # outside the repository: only what pip put
        assert "ModuleNotFoundError" in done.stderr, name
        done = python(f"import stillroom.{name}", tmp_path)
        assert done.returncode == 0, done.stderr


def test_the_command_is_installed(tmp_path):
    script = Path(sys.executable).parent / "stillroom"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Distil a teacher LLM" in done.stdout
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"stillroom {version('stillroom')}\n")


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_neither_each_other_nor_flows(leaf):
    others = {f"stillroom.{name}" for name in (*LEAVES, "flows") if name != leaf}
    for path in (ROOT / leaf).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not any(name == o or name.startswith(o + ".") for o in others), (path, name)
                assert name.split(".")[0] not in (*LEAVES, "flows"), (path, name)


def test_importing_the_cli_has_no_side_effects(tmp_path):
    code = (
        "import json, os; before = dict(os.environ); import stillroom.flows._cli; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    done = python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_runs_the_bundled_example_outside_the_clone(tmp_path):
    import sysconfig
    import zipfile

    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(wheels), str(ROOT)], check=True, timeout=300)
    (wheel,) = wheels.glob("stillroom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stillroom/examples/banking77.yaml" in names
    assert "stillroom/examples/data/banking77/SOURCE.md" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, command = venv / "bin" / "python", venv / "bin" / "stillroom"
    install = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, timeout=300)
    # the dependencies come from this environment (a path a .pth adds is not a site folder, so
    # the editable install's own .pth there is not read: `stillroom` is the wheel's)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "p")}
    done = subprocess.run(
        [str(command), "example", "banking77", str(elsewhere)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cd {elsewhere} && stillroom run examples/banking77.yaml"
    where = subprocess.run(
        [str(py), "-c", "import stillroom; print(stillroom.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    run = [str(command), "run", "examples/banking77.yaml", "--set", "data.limit=300"]
    done = subprocess.run(run, capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((elsewhere / done.stdout.strip().splitlines()[-1]).read_text())
    assert report["dataset"]["name"] == "banking77" and report["dataset"]["rows"] == 300
    assert (elsewhere / ".stillroom" / "datasets" / "banking77" / "v1" / "manifest.json").is_file()
