"""Generation (GenerateTask) throughput on both teachers, each against a baseline in the same run.

OpenAI-compatible: completions with 5 logprobs per token against the local server (200 ms per
call), versus the same client classifying the same records. Local: SmolLM2-135M-Instruct writing
completions in batches of 8, versus one at a time.

python bench/generation.py [--records 3000] [--concurrency 64] [--latency 0.2] [--local-records 16]

Prints one JSON line per row and writes them all to bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import start_server, stop_server  # noqa: E402
from stillroom.labelers import (  # noqa: E402
    Answer,
    ClassifyTask,
    GenerateTask,
    OpenAITeacher,
    TransformersTeacher,
)
from stillroom.storage import ResponseCache  # noqa: E402
from tests.openai_server import expected_generation  # noqa: E402

LABELS = ("question", "request")  # the baseline's two labels
TOP = 5  # alternatives per generated token
MAX_TOKENS = 64
ROLEPLAY = ROOT / "examples/data/gpteacher/roleplay.jsonl"

VERBS = (
    "Write a short poem about",
    "Explain in simple terms",
    "Give three tips for",
    "Summarise the main arguments about",
    "Describe",
    "List the pros and cons of",
    "Suggest a title for an essay on",
    "Compose a tweet about",
)
TOPICS = (
    "the water cycle",
    "learning a new language",
    "remote work",
    "photosynthesis",
    "saving money on groceries",
    "the history of the printing press",
    "training for a marathon",
    "renewable energy",
    "a rainy afternoon in the city",
    "how vaccines work",
    "keeping houseplants alive",
    "the rules of chess",
)


def instructions(n: int, prefix: str = "") -> list[tuple[str, str]]:
    """Alpaca-style instructions, all different: verb x topic x word limit."""
    per_limit = len(VERBS) * len(TOPICS)
    return [
        (
            f"{prefix}g{i}",
            f"{prefix}{VERBS[i % len(VERBS)]} {TOPICS[i // len(VERBS) % len(TOPICS)]}. "
            f"Use at most {20 + i // per_limit} words.",
        )
        for i in range(n)
    ]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """A child's user + system time so far, from /proc (the server's share of the two cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_openai(kind: str, records: int, concurrency: int, latency: float) -> dict:
    """One timed run on a fresh server and a fresh cache: what it took, and what it checked."""
    work = Path(tempfile.mkdtemp())
    process, url = start_server(latency, work / "stats.json")
    task = (
        GenerateTask(max_tokens=MAX_TOKENS, top_logprobs=TOP)
        if kind == "generate"
        else ClassifyTask(LABELS, "Classify the instruction.")
    )
    cache = ResponseCache(work / "cache.sqlite")
    teacher = OpenAITeacher(task, model="fake", base_url=url, concurrency=concurrency, cache=cache)
    warm = instructions(concurrency, prefix="warm-up ")
    teacher.label(warm)  # the first connections and calls are not the steady state
    rows = instructions(records)
    server0, cpu0, wall0 = process_cpu_s(process.pid), cpu_s(), time.perf_counter()
    waited0 = cpu_pressure_s()
    answers = teacher.label(rows)
    wall = time.perf_counter() - wall0
    cpu, server_cpu = cpu_s() - cpu0, process_cpu_s(process.pid) - server0
    waited = cpu_pressure_s() - waited0
    stats = stop_server(process, work / "stats.json")
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok][:3]
    assert stats["requests"] == records + len(warm), stats["requests"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "server_cpu_s": server_cpu,
        "waited_s": waited,
        "output_tokens": sum(a.usage.output_tokens for a in answers),
        "cache_mb": (work / "cache.sqlite").stat().st_size / 1e6,
        "stored_tokens_checked": check_generations(teacher, cache, rows, answers)
        if kind == "generate"
        else 0,
    }


def openai(records: int, concurrency: int, latency: float) -> list[dict]:
    """Generating against classifying the same records, in the order classify, generate,
    generate, classify, so that a drift in the machine's speed weighs on both alike."""
    order = ("classify", "generate", "generate", "classify")
    parts = [(kind, run_openai(kind, records, concurrency, latency)) for kind in order]
    classify, generate = (
        openai_row(kind, records, concurrency, latency, [p for k, p in parts if k == kind])
        for kind in ("classify", "generate")
    )
    generate["records_per_s_vs_classify"] = round(
        generate["records_per_s"] / classify["records_per_s"], 3
    )
    generate["cpu_per_record_vs_classify"] = round(
        generate["cpu_ms_per_record"] / classify["cpu_ms_per_record"], 2
    )
    return [classify, generate]


def openai_row(
    kind: str, records: int, concurrency: int, latency: float, parts: list[dict]
) -> dict:
    n = records * len(parts)
    keys = ("wall_s", "cpu_s", "server_cpu_s", "waited_s", "output_tokens", "stored_tokens_checked")
    wall, cpu, server_cpu, waited, tokens, checked = (sum(p[k] for p in parts) for k in keys)
    ideal = concurrency / latency
    return {
        "teacher": "openai",
        "task": kind,
        "records": n,
        "runs": len(parts),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "records_per_s": round(n / wall, 1),
        "per_run_records_per_s": [round(records / p["wall_s"], 1) for p in parts],
        "output_tokens_per_s": round(tokens / wall, 1),
        "output_tokens_per_record": round(tokens / n, 2),
        "ideal_per_s": round(ideal, 1),
        "of_ideal": round(n / wall / ideal, 3),
        "cpu_ms_per_record": round(1000 * cpu / n, 3),
        "server_cpu_ms_per_record": round(1000 * server_cpu / n, 3),
        # near 0 when client and server have the two cores to themselves
        "cpu_pressure": round(waited / wall, 2),
        "cache_mb_per_run": round(parts[0]["cache_mb"], 1),
        **({"stored_tokens_checked": checked} if kind == "generate" else {}),
    }


def check_generations(
    teacher: OpenAITeacher, cache: ResponseCache, rows: list[tuple[str, str]], answers: list[Answer]
) -> int:
    """Every answer is the server's exact completion, and every stored token lists TOP
    alternatives (read back from the cache, as a re-run would see it); returns the tokens checked.
    """
    checked = 0
    for (_, text), answer in zip(rows, answers, strict=True):
        body = teacher.build_request(text)
        sent = expected_generation(body)["choices"][0]
        assert answer.completion == sent["message"]["content"], text
        assert answer.tokens is not None and all(len(t.top) == TOP for t in answer.tokens), text
        stored = cache.get(teacher.cache_key(body))
        assert stored is not None, text
        steps = stored["choices"][0]["logprobs"]["content"]
        assert len(steps) == len(answer.tokens), text
        assert all(len(step["top_logprobs"]) == TOP for step in steps), text
        checked += len(steps)
    return checked


def cpu_pressure_s() -> float:
    """Seconds so far in which some task waited for a CPU (Linux PSI; 0 where there is none)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return 0.0
    return int(line.rsplit("total=", 1)[1]) / 1e6


def local(n: int, batch_size: int) -> list[dict]:
    """Batches of `batch_size` against one text at a time on the same records, chunk by chunk
    in alternating order, so that other work on the machine weighs on both alike."""
    import torch

    lines = ROLEPLAY.read_text().splitlines()[:n]
    records = [(row["id"], row["instruction"]) for row in map(json.loads, lines)]
    task = GenerateTask(max_tokens=MAX_TOKENS, top_logprobs=TOP, temperature=0)
    sizes = (1, batch_size)
    teachers = {b: TransformersTeacher(task, batch_size=b, cache=None) for b in sizes}
    for teacher in teachers.values():
        teacher.label(records[:1])  # loading the model (and the first call) is not generating
    spent = {b: [0.0, 0.0, 0.0] for b in sizes}  # wall, CPU, CPU pressure
    answers: dict[int, list[Answer]] = {b: [] for b in sizes}
    chunk_ratios = []
    for c, start in enumerate(range(0, len(records), batch_size)):
        chunk = records[start : start + batch_size]
        took = {}
        for b in sizes if c % 2 == 0 else sizes[::-1]:
            wall0, cpu0, waited0 = time.perf_counter(), cpu_s(), cpu_pressure_s()
            answers[b] += teachers[b].label(chunk)
            took[b] = time.perf_counter() - wall0
            for i, v in enumerate((took[b], cpu_s() - cpu0, cpu_pressure_s() - waited0)):
                spent[b][i] += v
        chunk_ratios.append(round(took[1] / took[batch_size], 2))
    rows = [local_row(b, records, answers[b], *spent[b]) for b in sizes]
    base, batched = rows
    batched["same_completions_as_batch_1"] = sum(
        a.completion == b.completion for a, b in zip(answers[batch_size], answers[1], strict=True)
    )
    batched["records_per_s_vs_batch_1"] = round(batched["records_per_s"] / base["records_per_s"], 2)
    batched["tokens_per_s_vs_batch_1"] = round(batched["tokens_per_s"] / base["tokens_per_s"], 2)
    batched["per_chunk_vs_batch_1"] = chunk_ratios
    for r in rows:
        r["torch_threads"] = torch.get_num_threads()
    return rows


def local_row(
    batch_size: int,
    records: list[tuple[str, str]],
    answers: list[Answer],
    wall: float,
    cpu: float,
    waited: float,
) -> dict:
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok][:3]
    assert all(a.tokens and all(len(t.top) == TOP for t in a.tokens) for a in answers)
    tokens = sum(a.usage.output_tokens for a in answers)
    return {
        "teacher": "transformers smollm2",
        "task": "generate",
        "records": len(records),
        "batch_size": batch_size,
        "wall_s": round(wall, 2),
        "records_per_s": round(len(records) / wall, 3),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "cut_at_max_tokens": sum(a.finish_reason == "length" for a in answers),
        "cpu_s": round(cpu, 1),
        # the share of the time some task waited for a CPU: near 0 when this ran alone
        "cpu_pressure": round(waited / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=3000, help="0: skip the API runs")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--local-records", type=int, default=16, help="roleplay instructions (0: skip local)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/generation.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = []
    if args.records:
        runs += openai(args.records, args.concurrency, args.latency)
        for r in runs:
            print(json.dumps(r), flush=True)
    if args.local_records:
        runs += local(args.local_records, args.batch_size)
        for r in runs[-2:]:
            print(json.dumps(r), flush=True)
    # other work on the two cores shows here and in each row's cpu_pressure: a run in which
    # cpu_pressure is well above 0 shared the machine, and its numbers (ratios too) are off
    load = {"load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    print(json.dumps(load))
    args.results.write_text(json.dumps({"runs": runs, **load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
