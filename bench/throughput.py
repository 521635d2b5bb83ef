"""Teacher-client throughput against the local OpenAI-compatible server (200 ms per call).

Measures records/s against the theoretical min(concurrency / latency, rpm / 60), the server's
observed peak rpm under an rpm cap, and the client's CPU time per record, for:
- stillroom's client (`OpenAITeacher.label`, the library);
- the whole labeling flow through the CLI (`stillroom label`: Prefect tasks per shard, the
  response cache, the version committed), its labeling stage timed by the CLI itself;
- the baseline: a bare `openai.AsyncOpenAI` client with a semaphore at the same concurrency,
  sending the same request bodies (same logprobs);
optionally the same workload through distilabel (installed in its own virtualenv, see
bench/README.md).

python bench/throughput.py [--records 5000] [--concurrency 64] [--latency 0.2] [--rpm 0]
    [--peer /tmp/peer/bin/python]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillroom.labelers import ClassifyTask, OpenAITeacher, Price  # noqa: E402
from stillroom.storage import ResponseCache  # noqa: E402

LABELS = ("negative", "positive")


def start_server(latency: float, stats: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.openai_server",
            "--asgi",
            "--latency",
            str(latency),
            "--stats",
            str(stats),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def stop_server(process: subprocess.Popen, stats: Path) -> dict:
    process.terminate()
    process.wait(30)
    return json.loads(stats.read_text())


def peak_rpm(starts: list[float], window: float = 60.0) -> float:
    """Most request starts in any half-open `window` of seconds [t, t + window), per minute."""
    starts = sorted(starts)
    best, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best * 60.0 / window


def texts(n: int) -> list[tuple[str, str]]:
    return [
        (f"r{i}", f"review number {i}: the film was {'great' if i % 2 else 'dull'}")
        for i in range(n)
    ]


def run_stillroom(records: int, concurrency: int, latency: float, rpm: float | None) -> dict:
    work = Path(tempfile.mkdtemp())
    process, url = start_server(latency, work / "stats.json")
    task = ClassifyTask(LABELS, "Classify the sentiment of the review.")
    teacher = OpenAITeacher(
        task,
        model="fake",
        base_url=url,
        concurrency=concurrency,
        rpm=rpm,
        price=Price(0.15, 0.6),
        cache=ResponseCache(work / "cache.sqlite"),
    )
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    answers = teacher.label(texts(records))
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = stop_server(process, work / "stats.json")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert sum(a.ok for a in answers) == records
    ideal = min(concurrency / latency, rpm / 60 if rpm else float("inf"))
    return {
        "tool": "stillroom",
        "records": records,
        "concurrency": concurrency,
        "rpm_cap": rpm,
        "wall_s": round(wall, 2),
        "records_per_s": round(records / wall, 1),
        "ideal_per_s": round(ideal, 1),
        "of_ideal": round(records / wall / ideal, 3),
        "peak_rpm_60s": round(peak_rpm(stats["starts"])),
        "cpu_ms_per_record": round(1000 * cpu / records, 3),
        "requests": stats["requests"],
    }


def run_sdk(records: int, concurrency: int, latency: float) -> dict:
    """The baseline: the OpenAI SDK's async client, a semaphore, the same request bodies."""
    import asyncio

    import openai

    work = Path(tempfile.mkdtemp())
    process, url = start_server(latency, work / "stats.json")
    task = ClassifyTask(LABELS, "Classify the sentiment of the review.")
    bodies = [
        OpenAITeacher(task, model="fake", base_url=url).build_request(t) for _, t in texts(records)
    ]

    async def main() -> int:
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=6)
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> bool:
            async with gate:
                answer = await client.chat.completions.create(**body)
            return answer.choices[0].logprobs is not None

        try:
            return sum(await asyncio.gather(*(one(b) for b in bodies)))
        finally:
            await client.close()

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    answered = asyncio.run(main())
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = stop_server(process, work / "stats.json")
    assert answered == records
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ideal = concurrency / latency
    return {
        "tool": "openai SDK (AsyncOpenAI + semaphore)",
        "records": records,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "records_per_s": round(records / wall, 1),
        "ideal_per_s": round(ideal, 1),
        "of_ideal": round(records / wall / ideal, 3),
        "cpu_ms_per_record": round(1000 * cpu / records, 3),
        "requests": stats["requests"],
    }


CLI_CONFIG = """
name: throughput
store: {store}
data: {{path: {data}, licence: NOASSERTION}}
task: {{kind: classify, labels: [negative, positive],
        instructions: Classify the sentiment of the review.}}
teacher: {{provider: openai, model: fake, base_url: "{url}", api_key_env: BENCH_KEY,
          concurrency: {concurrency}, price: {{input_per_1m: 0.15, output_per_1m: 0.6}}}}
students: []
"""


def run_cli(records: int, concurrency: int, latency: float, extra: list[str] | None = None) -> dict:
    """`stillroom label` in its own process (its own Prefect server, a fresh store and cache);
    records/s is over the labeling stage as the CLI reports it."""
    work = Path(tempfile.mkdtemp())
    process, url = start_server(latency, work / "stats.json")
    data = work / "records.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts(records)))
    config = work / "config.yaml"
    config.write_text(
        CLI_CONFIG.format(store=work / "store", data=data, url=url, concurrency=concurrency)
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", "PREFECT_HOME": str(work / "prefect")}
    env.pop("PREFECT_API_URL", None)
    wall0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "stillroom", "label", str(config), *(extra or [])],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=7200,
    )
    wall = time.perf_counter() - wall0
    stats = stop_server(process, work / "stats.json")
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    labeling_s = float(out.stderr.rsplit(" in ", 1)[1].split(" s")[0])
    ideal = concurrency / latency
    return {
        "tool": "stillroom label (CLI)" + (f" {' '.join(extra)}" if extra else ""),
        "records": records,
        "concurrency": concurrency,
        "labeling_s": labeling_s,
        "process_wall_s": round(wall, 2),
        "records_per_s": round(records / labeling_s, 1),
        "ideal_per_s": round(ideal, 1),
        "of_ideal": round(records / labeling_s / ideal, 3),
        "requests": stats["requests"],
    }


PEER = """
import sys, time, json
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration
from distilabel.models import OpenAILLM
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [{"instruction": f"review number {i}: the film was {'great' if i % 2 else 'dull'}"} for i in range(n)]
with Pipeline(name="bench", cache_dir=sys.argv[4]) as pipeline:
    load = LoadDataFromDicts(data=rows, batch_size=n)
    gen = TextGeneration(llm=OpenAILLM(model="fake", base_url=url, api_key="sk-bench",
                         generation_kwargs={"max_new_tokens": 8}), input_batch_size=conc)
    load >> gen
start = time.perf_counter()
distiset = pipeline.run(use_cache=False)
print(json.dumps({"wall_s": time.perf_counter() - start, "rows": len(distiset["default"]["train"])}))
"""


def run_peer(python: str, records: int, concurrency: int, latency: float) -> dict:
    work = Path(tempfile.mkdtemp())
    process, url = start_server(latency, work / "stats.json")
    out = subprocess.run(
        [python, "-c", PEER, url, str(records), str(concurrency), str(work / "cache")],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "OPENAI_API_KEY": "x"},
    )
    stats = stop_server(process, work / "stats.json")
    if out.returncode != 0:
        return {"tool": "distilabel", "error": out.stderr[-800:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ideal = concurrency / latency
    return {
        "tool": "distilabel",
        "records": result["rows"],
        "concurrency": concurrency,
        "wall_s": round(result["wall_s"], 2),
        "records_per_s": round(result["rows"] / result["wall_s"], 1),
        "ideal_per_s": ideal,
        "of_ideal": round(result["rows"] / result["wall_s"] / ideal, 3),
        "peak_rpm_60s": round(peak_rpm(stats["starts"])),
        "requests": stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--rpm",
        type=float,
        default=6000.0,
        help="the cap for the capped run, which lasts 75 s (0: skip it)",
    )
    parser.add_argument("--peer", help="a python with distilabel installed")
    parser.add_argument("--shard-size", type=int, help="also run the CLI with this shard size")
    args = parser.parse_args()
    results = [
        run_sdk(args.records, args.concurrency, args.latency),
        run_cli(args.records, args.concurrency, args.latency),
        *(
            [
                run_cli(
                    args.records,
                    args.concurrency,
                    args.latency,
                    ["--set", f"teacher.shard_size={args.shard_size}"],
                )
            ]
            if args.shard_size
            else []
        ),
        run_stillroom(args.records, args.concurrency, args.latency, None),
        *(
            [run_stillroom(int(args.rpm * 1.25), args.concurrency, args.latency, args.rpm)]
            if args.rpm
            else []
        ),
    ]
    if args.peer:
        results.append(run_peer(args.peer, args.records, args.concurrency, args.latency))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
