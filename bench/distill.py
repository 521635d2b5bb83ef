"""How close each student gets to a fixed teacher, and at what cost, measured side by side.

The teacher is the test suite's OpenAI-compatible server (tests/openai_server.py) on 127.0.0.1,
answering from the gold labels with a 10% noise rate (`--teacher-accuracy 0.9`) and soft
logprobs: 0.7 on its answer, 0.15 / 0.1 / 0.05 on three other labels drawn per text. Records are
labeled through `OpenAITeacher`, as `stillroom label` does. A fixed 1,000 records are held out;
students train on the first N of the rest (`fit_soft`, the config's default) and are measured
against the teacher (agreement, KL) and gold on the held-out records.

python bench/distill.py --data banking77 [--sizes 250 500 1000 2000 5000] [--kinds logreg embedding bert]

Steps (each writes its results to bench/results/DATA.json as soon as it is done):
  curve   agreement vs N for each student kind
  kd      bert: soft-label KD (T=2, alpha=0.5) vs hard labels, same epochs, same records
  int8    the largest bert of the curve: int8 vs fp32 size, latency, agreement
  logreg  TF-IDF student: training seconds on 10,000 records, predictions per second on 1 core
  chain   teacher -> bert (N records) -> labels the rest of the pool -> logreg, against logreg
          on the teacher's N labels alone
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillroom.flows._training import student_columns  # noqa: E402
from stillroom.labelers import ClassifyTask, OpenAITeacher  # noqa: E402
from stillroom.students import (  # noqa: E402
    BertStudent,
    EmbeddingLogReg,
    TfidfLogReg,
    closeness,
    predict_ms_per_1k,
)
from tests.openai_server import FakeOpenAI, FakeTeacher  # noqa: E402

TEST_SIZE = 1000
KINDS = {"logreg": TfidfLogReg, "embedding": EmbeddingLogReg, "bert": BertStudent}


def label(rows: list[dict[str, str]], labels: list[str], accuracy: float) -> np.ndarray:
    """The fixed teacher's probabilities for `rows`, through the real OpenAI client."""
    server = FakeOpenAI(FakeTeacher({r["text"]: r["label"] for r in rows}, accuracy=accuracy))
    url = server.start()
    try:
        teacher = OpenAITeacher(
            ClassifyTask(tuple(labels)), model="fake", base_url=url, api_key="x", concurrency=16
        )
        answers = teacher.label([(r["id"], r["text"]) for r in rows])
    finally:
        server.stop()
    failed = [a for a in answers if not a.ok]
    if failed:
        raise SystemExit(f"{len(failed)} records failed to label: {failed[0].error}")
    return np.array([a.probs for a in answers], dtype=float)


def make(kind: str, cache: str, **extra: Any) -> Any:
    if kind == "embedding":
        return EmbeddingLogReg(cache_dir=cache)
    if kind == "bert":
        return BertStudent(progress=False, **extra)
    return TfidfLogReg()


def measure(student: Any, data: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    # a student fitted on hard labels has a column per class it saw, in sorted order
    proba = student_columns(student, labels, data["test_text"])
    scores = closeness(data["test_proba"], proba, labels, data["test_gold"])
    return {k: round(v, 4) for k, v in scores.items() if v is not None}


def fit(student: Any, texts: list[str], proba: np.ndarray, labels: list[str]) -> float:
    start = time.perf_counter()
    student.fit_soft(texts, proba, labels)
    return round(time.perf_counter() - start, 1)


def curve(args: argparse.Namespace, data: dict[str, Any], labels: list[str], out: dict) -> None:
    for n in args.sizes:
        texts, proba = data["pool_text"][:n], data["pool_proba"][:n]
        for kind in args.kinds:
            key = f"{kind}@{n}"
            if key in out["curve"]:
                continue
            student = make(kind, args.cache)
            train_s = fit(student, texts, proba, labels)
            out["curve"][key] = {"kind": kind, "n": n, "train_s": train_s}
            out["curve"][key].update(measure(student, data, labels))
            print(key, out["curve"][key], flush=True)
            if kind == "bert" and n == max(args.sizes):
                student.save(Path(args.cache) / f"bert-{n}")
            save(args, out)


def kd(args: argparse.Namespace, data: dict[str, Any], labels: list[str], out: dict) -> None:
    n = args.kd_size
    texts, proba = data["pool_text"][:n], data["pool_proba"][:n]
    for name in ("hard", "soft"):
        if name in out["kd"]:
            continue
        student = make("bert", args.cache)
        start = time.perf_counter()
        if name == "hard":
            student.fit(texts, np.asarray(labels)[proba.argmax(axis=1)])
        else:
            student.fit_soft(texts, proba, labels)
        out["kd"][name] = {"n": n, "train_s": round(time.perf_counter() - start, 1)}
        out["kd"][name].update(measure(student, data, labels))
        print("kd", name, out["kd"][name], flush=True)
        save(args, out)


def int8(args: argparse.Namespace, data: dict[str, Any], labels: list[str], out: dict) -> None:
    n = max(args.sizes)
    full = BertStudent.load(Path(args.cache) / f"bert-{n}")
    small = full.quantized()
    texts = data["test_text"]
    reference = full.predict(texts)
    for name, student in (("fp32", full), ("int8", small)):
        folder = student.save(Path(args.cache) / f"size-{name}")
        weights = folder / ("model-int8.pt" if name == "int8" else "model.safetensors")
        out["int8"][name] = {
            "n": n,
            "weights_bytes": weights.stat().st_size,
            "predict_ms_per_1k": round(predict_ms_per_1k(student, texts), 1),
            "agreement_with_fp32": float(np.mean(student.predict(texts) == reference)),
            **measure(student, data, labels),
        }
        print("int8", name, out["int8"][name], flush=True)
    save(args, out)


def logreg_speed(args: argparse.Namespace, rows: list[dict[str, str]], out: dict) -> None:
    from threadpoolctl import threadpool_limits

    texts = [r["text"] for r in rows][:10_000]
    gold = [r["label"] for r in rows][:10_000]
    with threadpool_limits(1):
        start = time.perf_counter()
        model = TfidfLogReg().fit(texts, gold)
        train_s = time.perf_counter() - start
        ms_1k = predict_ms_per_1k(model, texts)
    out["logreg"] = {
        "n": len(texts),
        "train_s": round(train_s, 1),
        "predict_per_s": round(1e6 / ms_1k),
    }
    print("logreg", out["logreg"], flush=True)
    save(args, out)


def chain(args: argparse.Namespace, data: dict[str, Any], labels: list[str], out: dict) -> None:
    n = args.chain_size
    pool_text = data["pool_text"]
    direct = TfidfLogReg()
    fit(direct, pool_text[:n], data["pool_proba"][:n], labels)
    bert = make("bert", args.cache)
    fit(bert, pool_text[:n], data["pool_proba"][:n], labels)
    start = time.perf_counter()
    relabeled = bert.predict_proba(pool_text)  # the teacher's n records and the unlabeled rest
    label_s = time.perf_counter() - start
    chained = TfidfLogReg()
    fit(chained, pool_text, relabeled, labels)
    out["chain"] = {
        "teacher_labels": n,
        "pool": len(pool_text),
        "bert_labeling_s": round(label_s, 1),
        "bert": measure(bert, data, labels),
        "logreg_on_teacher_labels": measure(direct, data, labels),
        "logreg_on_bert_labels": measure(chained, data, labels),
    }
    print("chain", out["chain"], flush=True)
    save(args, out)


def render(out: dict[str, Any]) -> str:
    """The results as the Markdown tables of bench/README.md."""
    setup = out["setup"]
    lines = [
        f"**{setup['data']}** ({setup['records']:,} records, {setup['labels']} labels; "
        f"{setup['test']:,} held out; teacher: {setup['teacher']}, "
        f"{setup['teacher_accuracy_vs_gold']:.1%} accurate vs gold on them)",
        "",
        "| records | " + " | ".join(f"{k} agreement / vs gold / train s" for k in KINDS) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    sizes = sorted({r["n"] for r in out["curve"].values()})
    for n in sizes:
        cells = []
        for kind in KINDS:
            r = out["curve"].get(f"{kind}@{n}")
            cells.append(
                "–"
                if r is None
                else f"{r['agreement']:.1%} / {r['accuracy_vs_gold']:.1%} / {r['train_s']:.0f}"
            )
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    if out.get("kd"):
        lines += ["", "| bert, same records and epochs | agreement | KL | ECE | vs gold |"]
        lines.append("|---|---|---|---|---|")
        for name, r in out["kd"].items():
            label = "hard labels" if name == "hard" else "soft labels, T = 2, α = 0.5"
            lines.append(
                f"| {label} ({r['n']:,} records) | {r['agreement']:.1%} | "
                f"{r['kl_teacher_student']:.3f} | {r['ece']:.3f} | {r['accuracy_vs_gold']:.1%} |"
            )
    if out.get("int8"):
        lines += ["", "| bert | weights | ms / 1k records | agreement with fp32 | agreement |"]
        lines.append("|---|---|---|---|---|")
        for name, r in out["int8"].items():
            lines.append(
                f"| {name} ({r['n']:,} records) | {r['weights_bytes'] / 1e6:.1f} MB | "
                f"{r['predict_ms_per_1k']:,.0f} | {r['agreement_with_fp32']:.1%} | "
                f"{r['agreement']:.1%} |"
            )
    if out.get("logreg"):
        r = out["logreg"]
        lines += [
            "",
            f"logreg on one core: trains on {r['n']:,} records in {r['train_s']:.1f} s and "
            f"predicts {r['predict_per_s']:,} records/s.",
        ]
    if out.get("chain"):
        c = out["chain"]
        lines += [
            "",
            f"| chain ({c['teacher_labels']:,} teacher labels; pool {c['pool']:,}) "
            "| agreement | vs gold |",
            "|---|---|---|",
        ]
        for key, name in (
            ("logreg_on_teacher_labels", "logreg on the teacher's labels"),
            ("bert", "bert on the teacher's labels"),
            ("logreg_on_bert_labels", "logreg on bert's labels of the whole pool"),
        ):
            lines.append(
                f"| {name} | {c[key]['agreement']:.1%} | {c[key]['accuracy_vs_gold']:.1%} |"
            )
        lines.append(f"\nbert labeled the pool in {c['bert_labeling_s']:.0f} s.")
    return "\n".join(lines)


def save(args: argparse.Namespace, out: dict) -> None:
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="banking77", help="a folder name under bench/data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 5000])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--steps", nargs="+", default=["curve", "kd", "int8", "logreg", "chain"])
    parser.add_argument("--kd-size", type=int, default=2000)
    parser.add_argument("--chain-size", type=int, default=1000)
    parser.add_argument("--teacher-accuracy", type=float, default=0.9)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "stillroom-bench"))
    parser.add_argument("--render", action="store_true", help="print the saved results only")
    args = parser.parse_args()
    args.results = ROOT / "bench" / "results" / f"{args.data}.json"
    if args.render:
        print(render(json.loads(args.results.read_text())))
        return
    folder = ROOT / "bench" / "data" / args.data
    labels = json.loads((folder / "labels.json").read_text())
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(rows)
    need = TEST_SIZE + max(args.sizes + [args.kd_size, args.chain_size])
    if len(rows) < need:
        raise SystemExit(f"{folder} has {len(rows)} records; these steps need {need}")
    proba = label(rows, labels, args.teacher_accuracy)
    data = {
        "test_text": [r["text"] for r in rows[:TEST_SIZE]],
        "test_gold": [r["label"] for r in rows[:TEST_SIZE]],
        "test_proba": proba[:TEST_SIZE],
        "pool_text": [r["text"] for r in rows[TEST_SIZE:]],
        "pool_proba": proba[TEST_SIZE:],
    }
    out: dict[str, Any] = {"curve": {}, "kd": {}, "int8": {}}
    if args.results.is_file():
        out.update(json.loads(args.results.read_text()))
    teacher_acc = float(
        np.mean(np.asarray(labels)[data["test_proba"].argmax(axis=1)] == data["test_gold"])
    )
    out["setup"] = {
        "data": args.data,
        "records": len(rows),
        "labels": len(labels),
        "test": TEST_SIZE,
        "teacher": f"test server, gold with {1 - args.teacher_accuracy:.0%} noise, soft logprobs",
        "teacher_accuracy_vs_gold": round(teacher_acc, 4),
        "cpu_threads": len(os.sched_getaffinity(0)),
    }
    print(out["setup"], flush=True)
    steps = {"curve": curve, "kd": kd, "int8": int8, "chain": chain}
    for step in args.steps:
        if step == "logreg":
            logreg_speed(args, rows, out)
        else:
            steps[step](args, data, labels, out)
    print(render(out))


if __name__ == "__main__":
    main()
