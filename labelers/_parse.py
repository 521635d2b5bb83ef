"""Turning a teacher's answer into a label and a probability per label.

The text decides the label (never coerced); token logprobs, where given, decide the distribution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_QUOTES = "\"'`*"
_TRAILING = ".!?,;:"


@dataclass(frozen=True)
class TokenStep:
    """One generated token with its logprob and the top alternatives at that position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def canonical(text: str) -> str:
    """Lower-case, trimmed, unquoted, without trailing punctuation: how answers are compared."""
    previous = None
    while text != previous:
        previous = text
        text = text.strip().strip(_QUOTES).rstrip(_TRAILING)
    return text.lower()


def match_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label the answer names, or None when it names none (or several) of them."""
    wanted = canonical(answer)
    if not wanted:
        return None
    hits = [label for label in labels if canonical(label) == wanted]
    if len(hits) == 1:
        return hits[0]
    # "positive\n\nThe review praises..." names a label on its first line
    first_line = canonical(answer.strip().splitlines()[0]) if answer.strip() else ""
    hits = [label for label in labels if canonical(label) == first_line]
    return hits[0] if len(hits) == 1 else None


def _prefix_form(text: str) -> str:
    return text.lstrip().lower()


def _consistent(candidate: str, labels: Sequence[str]) -> list[int]:
    """Indices of labels the partial answer `candidate` can still become (or has become)."""
    cand = _prefix_form(candidate)
    if not cand:
        return []
    hits = []
    for i, label in enumerate(labels):
        lab = label.lower()
        if lab.startswith(cand):
            hits.append(i)
        elif cand.startswith(lab) and not re.match(r"\w", cand[len(lab) :]):
            hits.append(i)  # the label followed by punctuation or a line break
    return hits


def label_distribution(
    steps: Sequence[TokenStep], labels: Sequence[str]
) -> tuple[list[float], float] | None:
    """Probability per label from the generated tokens' top logprobs.

    Walks the generated path; at each position every alternative token that spells the start of
    one or more labels adds P(path so far) * P(alternative) to them (split evenly when several
    labels share that start), and the path's own probability goes to the label it spells.
    Returns (probabilities renormalised over the label set, coverage), or None when no mass fell
    on any label.
    """
    mass = [0.0] * len(labels)
    path_logprob = 0.0
    prefix = ""
    final: list[int] = []
    for step in steps:
        for token, logprob in step.top:
            if token == step.token:
                continue
            hits = _consistent(prefix + token, labels)
            for i in hits:
                mass[i] += math.exp(path_logprob + logprob) / len(hits)
        path_logprob += step.logprob
        prefix += step.token
        final = _completed(prefix, labels)
        if final or not _consistent(prefix, labels):
            break
    else:
        final = [i for i, label in enumerate(labels) if canonical(label) == canonical(prefix)]
    for i in final:
        mass[i] += math.exp(path_logprob) / len(final)
    coverage = sum(mass)
    if coverage <= 0.0:
        return None
    return [m / coverage for m in mass], min(coverage, 1.0)


def _completed(prefix: str, labels: Sequence[str]) -> list[int]:
    """Labels the path has spelled out in full and then closed with punctuation or a break."""
    cand = _prefix_form(prefix)
    return [
        i
        for i, label in enumerate(labels)
        if cand.startswith(label.lower())
        and len(cand) > len(label)
        and not re.match(r"\w", cand[len(label) :])
    ]
