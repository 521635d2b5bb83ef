"""Labeling at scale: peak RSS and records/s of `stillroom label` (the CLI, the whole flow) for
growing inputs, against the local OpenAI-compatible test server.

The teacher is fixed: `tests/openai_server.py --asgi` answering every call at once (no added
latency) with one of two labels and its logprobs, at concurrency 64. Each size runs in a fresh
store and cache, against one `prefect server start` the bench keeps up, so the CLI process is
measured alone (its peak RSS is the largest it reached, from getrusage of a one-child wrapper).
The smallest size is the baseline: the other rows are ratios against it, measured in the same run.

python bench/scale.py [--sizes 50000 100000 200000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import CLI_CONFIG, start_server, stop_server, texts  # noqa: E402

# runs the CLI as its only child and reports that child's peak RSS
WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
sys.stderr.write(out.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall, out.returncode)
"""


def prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError("prefect server did not start")


def run(records: int, concurrency: int, api: str) -> dict:
    work = Path(tempfile.mkdtemp())
    server, url = start_server(0.0, work / "stats.json")
    data = work / "records.jsonl"
    with data.open("w") as f:
        for i, text in texts(records):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    config = work / "config.yaml"
    config.write_text(
        CLI_CONFIG.format(store=work / "store", data=data, url=url, concurrency=concurrency)
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", "PREFECT_API_URL": api}
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "stillroom", "label", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=7200,
    )
    stats = stop_server(server, work / "stats.json")
    maxrss_kb, wall, code = out.stdout.split()
    if int(code) != 0:
        raise RuntimeError(out.stderr[-2000:])
    labeling_s = float(out.stderr.rsplit(" in ", 1)[1].split(" s")[0])
    manifest = json.loads(
        next((work / "store" / "datasets" / "throughput").glob("v1/manifest.json")).read_text()
    )
    assert manifest["rows"] == records and manifest["labeling"]["labeled"] == records
    return {
        "records": records,
        "labeling_s": labeling_s,
        "records_per_s": round(records / labeling_s, 1),
        "process_wall_s": round(float(wall), 1),
        "peak_rss_mb": round(int(maxrss_kb) / 1024, 1),
        "requests": stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp())
    process, api = prefect_server(home)
    try:
        rows = [run(n, args.concurrency, api) for n in args.sizes]
    finally:
        process.terminate()
        process.wait(30)
    base = rows[0]
    for row in rows:
        row["rss_vs_smallest"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
        row["rate_vs_smallest"] = round(row["records_per_s"] / base["records_per_s"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
