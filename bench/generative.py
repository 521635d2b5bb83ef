"""Generative students on this machine, two experiments side by side in one run.

1. recorded: SmolLM2-135M-Instruct fine-tuned on GPT-4's real completions (GPTeacher roleplay,
   replayed as recorded answers), full fine-tuning vs LoRA at equal steps: the NLL of GPT-4's
   held-out completions and ROUGE-L of greedy completions against them, before vs after.
2. local: the local SmolLM2 teacher writes completions with its top-5 logprobs; a half-depth
   student made of its own layers (every_other_layer) learns them by SFT alone vs SFT + top-k KD
   at equal steps; NLL and ROUGE-L against the teacher's held-out completions, and the size and
   latency of teacher vs student.

python bench/generative.py [--data ../shared/data/gpteacher/roleplay.jsonl] [--parts recorded,local]

The GPT-4 outputs stay out of the repository: only numbers are written (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "gpteacher" / "roleplay.jsonl"
BUNDLED = ROOT / "examples" / "data" / "gpteacher" / "roleplay.jsonl"

from stillroom import labelers  # noqa: E402
from stillroom.flows._generation import exact_match, rouge_l  # noqa: E402
from stillroom.students import Example, GenerativeStudent  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "stillroom-bench-models"


def prompt(row: dict[str, Any]) -> str:
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


def rows_of(path: Path, n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return rows[:n]


def student(**kwargs: Any) -> GenerativeStudent:
    params = {"cache_dir": str(CACHE), "progress": False, "seed": 0} | kwargs
    return GenerativeStudent(**params)


def quality(model: GenerativeStudent, test: list[Example], n_generate: int) -> dict[str, Any]:
    """NLL of the teacher's held-out completions, and greedy completions of the first prompts
    against the teacher's: ROUGE-L, exact match, seconds per record."""
    nll = model.nll(test)
    start = time.perf_counter()
    written = model.generate([e.prompt for e in test[:n_generate]])
    seconds = time.perf_counter() - start
    pairs = list(zip(written, [e.completion for e in test[:n_generate]], strict=True))
    return {
        "nll": round(nll, 4),
        "rougeL": rouge_l(pairs),
        "exact_match": exact_match(pairs),
        "s_per_record": round(seconds / max(n_generate, 1), 2),
    }


def fit(model: GenerativeStudent, train: list[Example]) -> dict[str, Any]:
    start = time.perf_counter()
    model.fit(train)
    wall = time.perf_counter() - start
    tokens = sum(h["completion_tokens"] for h in model.history_)
    return {
        "train_s": round(wall, 1),
        "completion_tokens_per_s": round(tokens / wall, 1),
        "kd_examples": model.kd_examples_,
        "history": model.history_,
    }


def recorded(args: argparse.Namespace) -> dict[str, Any]:
    """SmolLM2 on GPT-4's completions: full fine-tuning vs LoRA, at equal steps."""
    path = Path(args.data)
    rows = rows_of(path, args.train + args.test)
    task = labelers.GenerateTask()
    teacher = labelers.RecordedTeacher.from_file(
        task,
        path,
        model="gpt-4",
        recorded_at="2023",
        fields=labelers.RecordedFields(completion="output"),
    )
    answers = teacher.label([(r["id"], prompt(r)) for r in rows])
    examples = [
        Example(prompt(r), a.completion or "") for r, a in zip(rows, answers, strict=True) if a.ok
    ]
    train, test = examples[: args.train], examples[args.train :]
    common = {"max_length": args.max_length, "max_new_tokens": args.max_new_tokens}
    base = student(**common).init_base()
    result: dict[str, Any] = {
        "data": f"{path.name}: {len(train)} train, {len(test)} held-out GPT-4 completions",
        "before": quality(base, test, args.generate),
    }
    del base
    for name, extra in (("full", {}), ("lora_r8", {"lora": 8})):
        model = student(epochs=1, batch_size=4, learning_rate=5e-5, **common, **extra)
        result[name] = fit(model, train) | quality(model, test, args.generate)
    return result


def local(args: argparse.Namespace) -> dict[str, Any]:
    """The local SmolLM2 teacher's completions -> a half-depth student: SFT vs SFT + top-k KD."""
    rows = rows_of(Path(args.data), args.local_records)
    task = labelers.GenerateTask(max_tokens=args.max_new_tokens, top_logprobs=5)
    teacher = labelers.TransformersTeacher(task, batch_size=8)
    start = time.perf_counter()
    answers = teacher.label([(r["id"], prompt(r)) for r in rows])
    labeling_s = time.perf_counter() - start
    examples = [
        Example(prompt(r), a.completion or "", _steps(a), stopped=a.finish_reason == "stop")
        for r, a in zip(rows, answers, strict=True)
        if a.ok
    ]
    cut = round(0.8 * len(examples))
    train, test = examples[:cut], examples[cut:]
    common = {"max_length": args.max_length, "max_new_tokens": args.max_new_tokens}
    full_model = student(**common).init_base()
    result: dict[str, Any] = {
        "teacher": {
            "records": len(rows),
            "completed": len(examples),
            "labeling_s": round(labeling_s, 1),
            "output_tokens_per_s": round(
                sum(a.usage.output_tokens for a in answers) / labeling_s, 1
            ),
            "layers": full_model.model_.config.num_hidden_layers,
            "parameters_m": round(sum(p.numel() for p in full_model.model_.parameters()) / 1e6, 1),
            **quality(full_model, test, args.generate),
        },
        "data": f"{len(train)} train, {len(test)} held-out completions of the local teacher",
    }
    del full_model
    half = student(init="every_other_layer", **common).init_base()
    result["half_untrained"] = {
        "layers": half.model_.config.num_hidden_layers,
        "parameters_m": round(sum(p.numel() for p in half.model_.parameters()) / 1e6, 1),
        **quality(half, test, args.generate),
    }
    del half
    for name, distill in (("sft", "none"), ("sft_kd", "auto")):
        model = student(
            init="every_other_layer",
            epochs=args.local_epochs,
            batch_size=4,
            learning_rate=1e-4,
            distill=distill,
            alpha=0.5,
            temperature=1.0,
            **common,
        )
        result[name] = fit(model, train) | quality(model, test, args.generate)
    return result


def _steps(answer: labelers.Answer) -> list[tuple[str, float, list[tuple[str, float]]]] | None:
    if answer.tokens is None:
        return None
    return [(s.token, s.logprob, list(s.top)) for s in answer.tokens]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(SHARED if SHARED.is_file() else BUNDLED))
    parser.add_argument("--parts", default="recorded,local")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--generate", type=int, default=12)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--local-records", type=int, default=150)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "generative.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args) | {"data": Path(args.data).name},
    }
    for part in args.parts.split(","):
        start = time.perf_counter()
        results[part] = {"wall_s": None, **(recorded(args) if part == "recorded" else local(args))}
        results[part]["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps({part: results[part]}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
