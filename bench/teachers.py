"""How good and how fast the local teachers are on bundled/shared data: accuracy vs gold, records/s.

python bench/teachers.py --data examples/data/banking77/train.jsonl --config examples/banking77.yaml --n 200
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml

from stillroom.labelers import ClassifyTask, TransformersTeacher, ZeroShotTeacher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="examples/banking77.yaml")
    parser.add_argument("--data", default="examples/data/banking77/train.jsonl")
    parser.add_argument("--labels", default=None, help="labels.json (default: the config's labels)")
    parser.add_argument("--instructions", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--teachers", default="zero-shot,transformers")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    labels = json.loads(Path(args.labels).read_text()) if args.labels else config["task"]["labels"]
    task = ClassifyTask(tuple(labels), args.instructions or config["task"]["instructions"])
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    random.Random(0).shuffle(rows)
    rows = rows[: args.n]
    print(f"{args.data}: {len(rows)} records, {len(labels)} labels, chance {1 / len(labels):.1%}")
    for name in args.teachers.split(","):
        teacher = ZeroShotTeacher(task) if name == "zero-shot" else TransformersTeacher(task)
        teacher.label([("warm-up", rows[0]["text"])])  # loading the model is not labeling
        start = time.perf_counter()
        answers = teacher.label([(r["id"], r["text"]) for r in rows])
        wall = time.perf_counter() - start
        accuracy = sum(a.label == r["label"] for a, r in zip(answers, rows, strict=True)) / len(
            rows
        )
        print(f"{name:>13}: accuracy vs gold {accuracy:.1%}, {len(rows) / wall:.1f} records/s")


if __name__ == "__main__":
    main()
