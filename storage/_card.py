"""The dataset card: a README.md with Hugging Face-style YAML metadata, made from a manifest.

It says where the data came from, under which licence, which teacher labelled it and on what terms.
"""

from __future__ import annotations

from typing import Any

import yaml


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def _task_category(manifest: dict[str, Any]) -> str:
    task = manifest.get("task")
    generated = isinstance(task, dict) and task.get("kind") == "generate"
    return "text-generation" if generated else "text-classification"


def render_card(manifest: dict[str, Any]) -> str:
    licence = manifest.get("licence") or {}
    teacher = manifest.get("teacher") or {}
    terms = manifest.get("terms") or {}
    meta = {
        "pretty_name": f"{manifest['name']}@{manifest['version']}",
        "license": str(licence.get("spdx", "NOASSERTION")).lower(),
        "size_categories": [_size_category(int(manifest.get("rows", 0)))],
        "task_categories": [_task_category(manifest)],
        "tags": ["stillroom", "distillation"] + (["llm-labelled"] if teacher else []),
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {manifest['name']} @ {manifest['version']}",
        "",
        f"{manifest.get('rows', 0)} rows, created {manifest.get('created_at', '?')}"
        + (f", derived from `{manifest['parent']}`." if manifest.get("parent") else "."),
        "",
        "## Source licence",
        "",
        f"- SPDX: `{licence.get('spdx', 'NOASSERTION')}`",
    ]
    for key in ("statement", "source", "citation"):
        if licence.get(key):
            lines.append(f"- {key}: {licence[key]}")
    if teacher:
        lines += ["", "## Teacher", ""]
        lines += [f"- {k}: `{v}`" for k, v in teacher.items() if v is not None]
    if terms:
        lines += [
            "",
            "## Teacher terms",
            "",
            f"- profile: `{terms.get('profile', 'custom')}`",
            f"- {terms.get('statement', '')}",
        ]
        if terms.get("restrictions"):
            lines.append(f"- restrictions: {', '.join(terms['restrictions'])}")
    labeling = manifest.get("labeling")
    if labeling:
        lines += ["", "## Labelling", ""] + [f"- {k}: {v}" for k, v in labeling.items()]
    return "\n".join(lines) + "\n"
