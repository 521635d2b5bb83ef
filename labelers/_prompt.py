"""The prompts: what the teacher is told, as chat messages, for a classification or a generation.

One function renders a record; the prompt hash names the template so that a changed prompt
never reuses answers given to an old one.
"""

from __future__ import annotations

import hashlib
import json

from ._types import GenerateTask, Task

PROMPT_VERSION = "classify-v1"
RATIONALE_LABEL = "Label:"
"""What starts the last line of an answer that gives a rationale first."""
GENERATE_PROMPT_VERSION = "generate-v1"


def system_prompt(task: Task) -> str:
    """The system message's text; "" for a generation task without system or instructions."""
    if isinstance(task, GenerateTask):
        return "\n\n".join(
            part.strip() for part in (task.system, task.instructions) if part.strip()
        )
    lines = [task.system.strip(), ""] if task.system.strip() else []
    lines += [task.instructions.strip(), ""]
    if task.rationale:
        lines += [
            "First give a short rationale (one or two sentences), then a last line "
            f'"{RATIONALE_LABEL} <label>". Answer with exactly one of these labels on that line:'
        ]
    else:
        lines += ["Answer with exactly one of these labels and nothing else:"]
    for label in task.labels:
        desc = task.descriptions.get(label)
        lines.append(f"- {label}: {desc}" if desc else f"- {label}")
    return "\n".join(lines)


def build_messages(task: Task, text: str) -> list[dict[str, str]]:
    """The system message (when there is one), the few-shot turns, then `text` as the user turn."""
    system = system_prompt(task)
    head = [{"role": "system", "content": system}] if system else []
    shots = []
    for example, answer in task.examples:
        shots += [{"role": "user", "content": example}, {"role": "assistant", "content": answer}]
    return [*head, *shots, {"role": "user", "content": text}]


def prompt_hash(task: Task) -> str:
    """A short hash of everything in the prompt except the record's text; for a generation task
    also of the settings that shape its answer (max_tokens, temperature, stop, top_logprobs)."""
    if isinstance(task, GenerateTask):
        # JSON, not tab-joined text: a few-shot completion may hold tabs and line breaks
        settings = [task.max_tokens, task.temperature, task.stop, task.top_logprobs]
        body = json.dumps([GENERATE_PROMPT_VERSION, system_prompt(task), task.examples, settings])
    else:
        shots = "".join(f"\n{text}\t{label}" for text, label in task.examples)
        body = f"{PROMPT_VERSION}\n{system_prompt(task)}{shots}"
    return hashlib.sha256(body.encode()).hexdigest()[:16]
