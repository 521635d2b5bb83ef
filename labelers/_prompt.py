"""The classification prompt: what the teacher is told, as chat messages.

One function renders a record; the prompt hash names the template so that a changed prompt
never reuses answers given to an old one.
"""

from __future__ import annotations

import hashlib

from ._types import ClassifyTask

PROMPT_VERSION = "classify-v1"


def system_prompt(task: ClassifyTask) -> str:
    lines = [task.system.strip(), ""] if task.system.strip() else []
    lines += [
        task.instructions.strip(),
        "",
        "Answer with exactly one of these labels and nothing else:",
    ]
    for label in task.labels:
        desc = task.descriptions.get(label)
        lines.append(f"- {label}: {desc}" if desc else f"- {label}")
    return "\n".join(lines)


def build_messages(task: ClassifyTask, text: str) -> list[dict[str, str]]:
    shots = []
    for example, label in task.examples:
        shots += [{"role": "user", "content": example}, {"role": "assistant", "content": label}]
    return [
        {"role": "system", "content": system_prompt(task)},
        *shots,
        {"role": "user", "content": text},
    ]


def prompt_hash(task: ClassifyTask) -> str:
    """A short hash of everything in the prompt except the record's text."""
    shots = "".join(f"\n{text}\t{label}" for text, label in task.examples)
    body = f"{PROMPT_VERSION}\n{system_prompt(task)}{shots}"
    return hashlib.sha256(body.encode()).hexdigest()[:16]
