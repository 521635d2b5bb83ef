"""A generate version in numbers: completions and failures, finish reasons, lengths, cost, and
how close the completions come to the data's reference outputs where it has them.

The same statistics go into report.json's `generation` block and `stillroom datasets show`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import fmean
from typing import Any

import numpy as np
import pyarrow as pa


def generation_stats(table: pa.Table) -> dict[str, Any]:
    """report.json's `generation` block for a generate version's table.

    Lengths are over completed records; finish reasons over every record the endpoint answered
    (a filtered completion is a failure with a finish reason); the reference metrics over
    completed records that have a reference (`gold`).
    """
    rows = table.select(
        ["completion", "finish_reason", "error", "gold", "output_tokens", "cost_usd"]
    ).to_pylist()
    done = [r for r in rows if r["error"] is None]
    failures = Counter(r["error"] for r in rows if r["error"] is not None)
    pairs = [(r["completion"] or "", r["gold"]) for r in done if r["gold"] is not None]
    return {
        "records": len(rows),
        "completed": len(done),
        "failed": len(rows) - len(done),
        "failures": dict(failures.most_common()),
        "finish_reasons": dict(
            Counter(r["finish_reason"] for r in rows if r["finish_reason"]).most_common()
        ),
        # a recorded completion may not say its tokens (0): it is left out, not counted as 0
        "output_tokens": spread([r["output_tokens"] for r in done if r["output_tokens"]]),
        "completion_chars": spread([len(r["completion"] or "") for r in done]),
        "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
        "references": len(pairs),
        "rougeL_vs_reference": rouge_l(pairs),
        "exact_match_vs_reference": exact_match(pairs),
    }


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, median and 95th percentile (numpy's linear interpolation); None without values."""
    if not values:
        return {"mean": None, "median": None, "p95": None}
    return {
        "mean": round(fmean(values), 4),
        "median": round(float(np.median(values)), 4),
        "p95": round(float(np.percentile(values, 95)), 4),
    }


def rouge_l(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Mean ROUGE-L F1 of (completion, reference) pairs, by the `rouge-score` package with its
    Porter stemmer (its tokenizer keeps only ASCII letters and digits); None without pairs."""
    if not pairs:
        return None
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(reference, completion)["rougeL"].fmeasure for completion, reference in pairs
    ]
    return round(fmean(scores), 4)


def exact_match(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Share of completions equal to their reference, white space around them aside."""
    if not pairs:
        return None
    return round(fmean(c.strip() == r.strip() for c, r in pairs), 4)


def generation_lines(stats: dict[str, Any]) -> list[str]:
    """The statistics as sentences (report.md and `stillroom datasets show`)."""
    failures = ", ".join(f"{n} {reason}" for reason, n in stats["failures"].items())
    finish = ", ".join(f"{reason} {n}" for reason, n in stats["finish_reasons"].items())
    tokens, chars = stats["output_tokens"], stats["completion_chars"]
    lines = [
        f"{stats['completed']} of {stats['records']} records completed, {stats['failed']} failed"
        + (f" ({failures})." if failures else "."),
        f"Finish reasons: {finish or 'not recorded'}.",
    ]
    if tokens["mean"] is not None:
        lines.append(
            f"Completion length: {_spread_text(tokens)} output tokens; "
            f"{_spread_text(chars)} characters."
        )
    elif chars["mean"] is not None:
        lines.append(
            f"Completion length: {_spread_text(chars)} characters (output tokens not recorded)."
        )
    if stats["references"]:
        lines.append(
            f"Against the reference outputs ({stats['references']} completed records): ROUGE-L F1 "
            f"{stats['rougeL_vs_reference']:.4f}, exact match "
            f"{100 * stats['exact_match_vs_reference']:.1f}%."
        )
    lines.append(f"The completions cost ${stats['cost_usd']:.4f}.")
    return lines


def _spread_text(values: dict[str, float | None]) -> str:
    return f"mean {values['mean']:.1f}, median {values['median']:g}, p95 {values['p95']:.1f}"
