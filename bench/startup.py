"""Start-up cost of the command line: where the wall time of `stillroom run` on 200 records goes
(Prefect server start, the teacher's model load, labeling, training, evaluation), cold and warm,
against a running server, and how fast the commands that run no flow answer.

The baseline, measured in the same run: a bare Prefect flow (`@flow` returning 1) in Prefect's
own ephemeral mode, i.e. what any CLI pays before doing anything when it lets Prefect start
its temporary server.

With `--before DIR` (a checkout of an earlier commit, e.g. `git worktree add /tmp/before
07f9361`), the same `run` of that version, `python -m flows run` in DIR, is timed too.

python bench/startup.py [--records 200] [--repeats 3] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "banking77.yaml"
CLI = [sys.executable, "-m", "stillroom"]
BARE_FLOW = "from prefect import flow\n@flow\ndef f():\n    return 1\nf()\n"
TIMING = re.compile(
    r"([\d.]+) s in all: Prefect server start ([\d.]+) s with the teacher's model "
    r"load \(([\d.]+) s\) alongside, labeling ([\d.]+) s, training ([\d.]+) s, "
    r"evaluation ([\d.]+) s"
)


def env_with(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def timed(cmd: list[str], env: dict[str, str], expect: int | None = 0) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if expect is not None and done.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, done.stderr


def stillroom_run(env: dict[str, str], store: Path, records: int) -> dict[str, float]:
    wall, err = timed(
        [*CLI, "run", str(EXAMPLE), "--set", f"data.limit={records}", "--set", f"store={store}"],
        env,
    )
    match = TIMING.search(err)
    assert match, err[-2000:]
    total, engine, model, labeling, training, evaluation = map(float, match.groups())
    return {
        "wall": wall,
        "engine": engine,
        "model": model,
        "labeling": labeling,
        "training": training,
        "evaluation": evaluation,
    }


def running_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
        env=env_with(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    raise SystemExit("prefect server start did not answer within 300 s")


def row(name: str, t: dict[str, float], baseline: float) -> str:
    # the server and the model load run side by side: the longer of the two is what the run waited
    rest = (
        t["wall"] - max(t["engine"], t["model"]) - t["labeling"] - t["training"] - t["evaluation"]
    )
    return (
        f"| {name} | {t['wall']:.1f} | {t['engine']:.1f} | {t['model']:.1f} | {t['labeling']:.1f} | "
        f"{t['training']:.1f} | {t['evaluation']:.1f} | {rest:.1f} | {t['wall'] / baseline:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier version")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stillroom-bench-"))
    try:
        warm = work / "prefect-warm"
        timed([sys.executable, "-c", BARE_FLOW], env_with(warm))  # creates the database once
        baseline = min(
            timed([sys.executable, "-c", BARE_FLOW], env_with(warm))[0] for _ in range(args.repeats)
        )
        print(f"baseline: a bare Prefect flow, Prefect's own ephemeral server: {baseline:.1f} s\n")

        print(
            "| `stillroom run`, 200 records | wall s | Prefect server start | model load (alongside) "
            "| labeling | training | evaluation | the rest | wall / baseline |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        cold = stillroom_run(env_with(work / "prefect-cold"), work / "store-cold", args.records)
        print(row("first run: empty PREFECT_HOME", cold, baseline))
        runs = [
            stillroom_run(env_with(warm), work / f"store-{i}", args.records)
            for i in range(args.repeats)
        ]
        print(
            row(
                f"warm PREFECT_HOME (best of {args.repeats})",
                min(runs, key=lambda r: r["wall"]),
                baseline,
            )
        )
        if args.before:
            walls = []
            for i in range(args.repeats):
                cmd = [
                    sys.executable,
                    "-m",
                    "flows",
                    "run",
                    "examples/banking77.yaml",
                    "--set",
                    f"data.limit={args.records}",
                    "--set",
                    f"store={work / f'before-{i}'}",
                ]
                start = time.perf_counter()
                done = subprocess.run(
                    cmd, cwd=args.before, env=env_with(warm), capture_output=True, timeout=900
                )
                assert done.returncode == 0, done.stderr[-2000:]
                walls.append(time.perf_counter() - start)
            print(
                f"| before ({args.before}), warm PREFECT_HOME (best of {args.repeats}) | {min(walls):.1f} "
                f"| – | – | – | – | – | – | {min(walls) / baseline:.2f}x |"
            )
        server, url = running_server(work / "prefect-server")
        try:
            env = env_with(work / "prefect-client", PREFECT_API_URL=url)
            runs = [
                stillroom_run(env, work / f"store-s{i}", args.records) for i in range(args.repeats)
            ]
            print(
                row(
                    f"PREFECT_API_URL at `prefect server start` (best of {args.repeats})",
                    min(runs, key=lambda r: r["wall"]),
                    baseline,
                )
            )
        finally:
            server.terminate()
            server.wait(30)

        store = work / "store-0"
        print("\n| command (no flow) | wall s (best of 3) |\n|---|---|")
        for name, cmd, code in [
            ("stillroom --help", [*CLI, "--help"], 0),
            ("stillroom datasets list", [*CLI, "datasets", "list", "--store", str(store)], 0),
            (
                "stillroom datasets verify banking77",
                [*CLI, "datasets", "verify", "banking77", "--store", str(store)],
                0,
            ),
            ("stillroom spend", [*CLI, "spend", "--store", str(store)], 0),
            (
                "stillroom estimate (openai, 3,000 records)",
                [
                    *CLI,
                    "estimate",
                    str(EXAMPLE),
                    "--set",
                    "teacher.provider=openai",
                    "--set",
                    "teacher.model=gpt-4o-mini",
                    "--set",
                    "teacher.price=unknown",
                ],
                0,
            ),
            (
                "stillroom run on a config with a bad key",
                [*CLI, "run", str(EXAMPLE), "--set", "teacher.modle=x"],
                2,
            ),
        ]:
            best = min(timed(cmd, env_with(warm), expect=code)[0] for _ in range(3))
            print(f"| `{name}` | {best:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
