"""Labeling at scale: peak RSS and records/s of `stillroom label` (the CLI, the whole flow) for
growing inputs, against the local OpenAI-compatible test server.

The teacher is fixed: `tests/openai_server.py --asgi` answering every call after 1 ms with one
of two labels and its logprobs, at concurrency 64, so the client's own cost per record is what
is measured. Each size runs `stillroom label` as a user would (its own Prefect server, a fresh
store and cache); its peak RSS is the CLI process's own high-water mark (VmHWM in
/proc/PID/status, read every 0.2 s), not its Prefect server's. The smallest size is the
baseline: the other rows are ratios against it, measured in the same run.

python bench/scale.py [--sizes 50000 100000 200000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import CLI_CONFIG, start_server, stop_server, texts  # noqa: E402


def high_water_kb(pid: int) -> int:
    """A process's peak RSS so far (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(records: int, concurrency: int) -> dict:
    work = Path(tempfile.mkdtemp())
    server, url = start_server(0.001, work / "stats.json")
    data = work / "records.jsonl"
    with data.open("w") as f:
        for i, text in texts(records):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    config = work / "config.yaml"
    config.write_text(
        CLI_CONFIG.format(store=work / "store", data=data, url=url, concurrency=concurrency)
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", "PREFECT_HOME": str(work / "prefect")}
    env.pop("PREFECT_API_URL", None)
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "stillroom", "label", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    assert process.stderr is not None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(process.stderr), daemon=True)
    reader.start()
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, high_water_kb(process.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    reader.join(10)
    stats = stop_server(server, work / "stats.json")
    stderr = "".join(err)
    if process.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    labeling_s = float(stderr.rsplit(" in ", 1)[1].split(" s")[0])
    manifest = json.loads(
        (work / "store" / "datasets" / "throughput" / "v1" / "manifest.json").read_text()
    )
    assert manifest["rows"] == records and manifest["labeling"]["labeled"] == records
    return {
        "records": records,
        "labeling_s": labeling_s,
        "records_per_s": round(records / labeling_s, 1),
        "process_wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "requests": stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    rows = [run(n, args.concurrency) for n in args.sizes]
    base = rows[0]
    for row in rows:
        row["rss_vs_smallest"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
        row["rate_vs_smallest"] = round(row["records_per_s"] / base["records_per_s"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
