"""The TF-IDF student's features: word n-grams alone (the baseline) against word + character
n-grams, on a fixed 80/20 split of a labeled text file, trained on its gold labels; with
`--version`, also on a teacher's soft labels (a labeled version folder, e.g. the demo's
`.stillroom/datasets/banking77/v1`), split as `stillroom run` splits it.

python bench/students.py [--data examples/data/banking77/train.jsonl] [--seeds 0 1 2] [--version DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from stillroom.students import EmbeddingLogReg, TfidfLogReg, closeness

ROOT = Path(__file__).resolve().parents[1]


def measure(variant: TfidfLogReg, train, test) -> dict[str, float]:
    start = time.perf_counter()
    variant.fit([t for t, _ in train], [y for _, y in train])
    train_s = time.perf_counter() - start
    texts = [t for t, _ in test]
    best = min(_timed(variant, texts) for _ in range(3))
    accuracy = float(np.mean(variant.predict(texts) == np.array([y for _, y in test])))
    with tempfile.TemporaryDirectory() as folder:
        size = variant.save(Path(folder) / "m.skops").stat().st_size
    return {"acc": accuracy, "train_s": train_s, "ms_1k": 1e6 * best / len(texts), "mb": size / 1e6}


def _timed(model: TfidfLogReg, texts: list[str]) -> float:
    start = time.perf_counter()
    model.predict_proba(texts)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "examples/data/banking77/train.jsonl"))
    parser.add_argument("--text", default="text")
    parser.add_argument("--label", default="label")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--version", type=Path, help="a labeled version folder (soft labels)")
    args = parser.parse_args()
    if args.version:
        soft(args.version)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    pairs = [(str(r[args.text]), str(r[args.label])) for r in rows]
    print(f"{args.data}: {len(pairs)} records, {len({y for _, y in pairs})} labels\n")
    print(
        "| features | seed | accuracy | train s | predict ms / 1k | model MB |\n|---|---|---|---|---|---|"
    )
    for seed in args.seeds:
        shuffled = pairs[:]
        random.Random(seed).shuffle(shuffled)
        cut = int(0.8 * len(shuffled))
        for name, char in (("word 1-2 (baseline)", None), ("word 1-2 + char_wb 2-5", (2, 5))):
            r = measure(TfidfLogReg(char_ngram_range=char), shuffled[:cut], shuffled[cut:])
            print(
                f"| {name} | {seed} | {r['acc']:.1%} | {r['train_s']:.1f} | {r['ms_1k']:.0f} | {r['mb']:.1f} |"
            )


def soft(folder: Path) -> None:
    import pyarrow.parquet as pq

    from stillroom.flows._training import split_dataset

    labels = json.loads((folder / "manifest.json").read_text())["task"]["labels"]
    split = split_dataset(pq.read_table(folder / "data.parquet"), labels, 0.2, 0)
    print(
        f"{folder}: fit_soft on the teacher's probabilities, {len(split.train_text)} train / "
        f"{len(split.test_text)} held-out\n"
    )
    print("| features | min_weight | agreement | KL | ECE | accuracy vs gold | train s |")
    print("|---|---|---|---|---|---|---|")
    cache = tempfile.mkdtemp(prefix="stillroom-embeddings-")
    for name, model in (
        ("word 1-2 (baseline)", TfidfLogReg(char_ngram_range=None, min_weight=1e-3)),
        ("word 1-2 + char_wb 2-5", TfidfLogReg(min_weight=1e-3)),
        ("word 1-2 + char_wb 2-5", TfidfLogReg(min_weight=1e-2)),
        ("embedding: all-MiniLM-L6-v2 + logistic head", EmbeddingLogReg(cache_dir=cache)),
    ):
        start = time.perf_counter()
        model.fit_soft(split.train_text, split.train_proba, labels)
        train_s = time.perf_counter() - start
        proba = model.predict_proba(split.test_text)
        m = closeness(split.test_proba, proba, labels, split.test_gold)
        print(
            f"| {name} | {model.min_weight:g} | {m['agreement']:.1%} | "
            f"{m['kl_teacher_student']:.3f} | {m['ece']:.3f} | {m['accuracy_vs_gold']:.1%} | "
            f"{train_s:.1f} |"
        )
    print()


if __name__ == "__main__":
    main()
