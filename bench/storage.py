"""The store at scale: commit, load and verify 1,000,000 labeled records with a probability per
label for 20 labels, streamed (a RecordBatchReader in, `Store.scan` out) against the in-memory
path (`commit` of a whole table, `load` of a whole table), each step in a process of its own so
that its peak RSS is its own. Memory must stay bounded when streamed: the same at 100,000 and at
1,000,000 records.

python bench/storage.py [--rows 1000000] [--small 100000] [--labels 20]

The records are synthetic and fixed (seeded), shaped like a labeled version: id, text (about 60
characters), gold, label, probs (one float per label), coverage, error (1% failed), raw.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 50_000
WORDS = [
    "the",
    "card",
    "payment",
    "arrived",
    "late",
    "and",
    "the",
    "app",
    "shows",
    "a",
    "pending",
    "transfer",
    "again",
    "today",
]


def batches(rows: int, labels: int, counts: dict[str, int] | None = None) -> Any:
    """The records as Arrow batches of BATCH rows, generated as they are asked for; `counts`
    gets the labeled and failed records as they go (the manifest's labeling counts, which
    verify recomputes from the data)."""
    import numpy as np
    import pyarrow as pa

    names = [f"label_{i:02d}" for i in range(labels)]
    # flows' LABELED_SCHEMA, spelled out: importing flows would add ~130 MB to every step's RSS
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("gold", pa.string()),
            ("label", pa.string()),
            ("probs", pa.list_(pa.float64())),
            ("coverage", pa.float64()),
            ("error", pa.string()),
            ("raw", pa.string()),
        ]
    )

    def generate() -> Any:
        rng = np.random.default_rng(0)
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            logits = rng.normal(size=(n, labels))
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            best = probs.argmax(axis=1)
            failed = rng.random(n) < 0.01
            words = rng.integers(0, len(WORDS), size=(n, 11))
            text = [" ".join(WORDS[w] for w in row) for row in words]
            label = [None if f else names[b] for f, b in zip(failed, best, strict=True)]
            if counts is not None:
                counts["failed"] = counts.get("failed", 0) + int(failed.sum())
                counts["labeled"] = counts.get("labeled", 0) + int(n - failed.sum())
            yield pa.record_batch(
                [
                    pa.array([f"r{start + i:07d}" for i in range(n)]),
                    pa.array(text),
                    pa.array([names[g] for g in rng.integers(0, labels, size=n)]),
                    pa.array(label),
                    pa.array([None if f else list(p) for f, p in zip(failed, probs, strict=True)]),
                    pa.array(np.where(failed, 0.0, 1.0)),
                    pa.array(["off-label answer" if f else None for f in failed]),
                    pa.array([f"I think it is {x}" if x is None else x for x in label]),
                ],
                schema=schema,
            )

    return pa.RecordBatchReader.from_batches(schema, generate())


def step(name: str, store: str, rows: int, labels: int) -> dict[str, Any]:
    """One measured step, run in this (child) process."""
    from stillroom.storage import Licence, Store

    s = Store(store)
    start = time.perf_counter()
    if name == "commit_streamed":
        counts: dict[str, int] = {}  # filled while the batches are written, read after
        reader = batches(rows, labels, counts)
        metadata = {"labeling": counts}
        ref = s.commit(f"d{rows}", reader, licence=Licence("MIT"), metadata=metadata)
        out = {"version": str(ref)}
    elif name == "commit_table":
        # generated whole, then committed: timed as the streamed commit is, generation included
        table = batches(rows, labels).read_all()
        ref = s.commit(f"t{rows}", table, licence=Licence("MIT"))
        out = {"version": str(ref)}
    elif name == "scan":
        ref = s.resolve(f"d{rows}")
        seen = failed = 0
        for batch in s.scan(ref):
            seen += batch.num_rows
            failed += batch.column("error").null_count
        out = {"rows": seen}
    elif name == "load":
        table = s.load(s.resolve(f"d{rows}"))
        out = {"rows": table.num_rows}
    elif name == "verify":
        result = s.verify(s.resolve(f"d{rows}"))
        out = {"ok": result.ok}
    else:
        raise SystemExit(f"unknown step {name}")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import pyarrow as pa

    # what Arrow itself held at most (RSS also counts what its allocator keeps after a free)
    arrow_mb = pa.default_memory_pool().max_memory() / 1e6
    return out | {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "arrow_peak_mb": round(arrow_mb, 1),
    }


def run(name: str, store: str, rows: int, labels: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--step", name, "--store", store]
    command += ["--rows", str(rows), "--labels", str(labels)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    """Peak RSS of a process that imports the store and does nothing: what every step pays."""
    code = (
        "import resource, stillroom.storage; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--step")
    parser.add_argument("--store")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "storage.json"))
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.store, args.rows, args.labels)))
        return
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d"),
        "labels": args.labels,
        "import_only_rss_mb": baseline_rss(),
    }
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-") as store:
        for rows in (args.small, args.rows):
            part: dict[str, Any] = {}
            for name in ("commit_streamed", "scan", "verify", "commit_table", "load"):
                part[name] = run(name, store, rows, args.labels)
                print(rows, name, part[name], flush=True)
            data = Path(store) / "datasets" / f"d{rows}" / "v1" / "data.parquet"
            part["parquet_mb"] = round(data.stat().st_size / 1e6, 1)
            results[str(rows)] = part
    big, small = results[str(args.rows)], results[str(args.small)]
    results["ratios"] = {
        "streamed_commit_rss_big_vs_small": round(
            big["commit_streamed"]["peak_rss_mb"] / small["commit_streamed"]["peak_rss_mb"], 2
        ),
        "scan_rss_big_vs_small": round(
            big["scan"]["peak_rss_mb"] / small["scan"]["peak_rss_mb"], 2
        ),
        "scan_arrow_peak_big_vs_small": round(
            big["scan"]["arrow_peak_mb"] / small["scan"]["arrow_peak_mb"], 2
        ),
        "streamed_commit_arrow_peak_big_vs_small": round(
            big["commit_streamed"]["arrow_peak_mb"] / small["commit_streamed"]["arrow_peak_mb"], 2
        ),
        "verify_rss_big_vs_small": round(
            big["verify"]["peak_rss_mb"] / small["verify"]["peak_rss_mb"], 2
        ),
        "streamed_vs_table_commit_rss": round(
            big["commit_streamed"]["peak_rss_mb"] / big["commit_table"]["peak_rss_mb"], 2
        ),
        "scan_vs_load_rss": round(big["scan"]["peak_rss_mb"] / big["load"]["peak_rss_mb"], 2),
        "streamed_vs_table_commit_seconds": round(
            big["commit_streamed"]["seconds"] / big["commit_table"]["seconds"], 2
        ),
    }
    print(json.dumps(results["ratios"], indent=1))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
