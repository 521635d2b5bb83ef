"""The dataset card: a README.md with Hugging Face-style YAML metadata, made from a manifest.

It says where the data came from, under which licence, which teacher labelled it and on what terms.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ._terms import describe, manifest_restrictions

# Licence ids the Hugging Face Hub accepts that are SPDX ids too (lower-cased), and the SPDX ids
# the Hub spells differently. Any other licence is "other" with its name; none stated, "unknown".
# fmt: off
_HUB_LICENCES = frozenset({
    "afl-3.0", "agpl-3.0", "apache-2.0", "artistic-2.0", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "bsl-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc0-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "cdla-sharing-1.0",
    "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "gpl-2.0", "gpl-3.0",
    "isc", "lgpl-2.1", "lgpl-3.0", "lppl-1.3c", "mit", "mpl-2.0", "ms-pl", "ncsa", "ofl-1.1",
    "osl-3.0", "postgresql", "unlicense", "wtfpl", "zlib",
})
# fmt: on
_HUB_SPELLING = {"odc-by-1.0": "odc-by", "odbl-1.0": "odbl", "pddl-1.0": "pddl"}
_NO_LICENCE = {"", "noassertion", "none"}


def hub_licence(spdx: str | None) -> dict[str, str]:
    """The Hub's `license` for an SPDX licence: its id, "unknown" when none is stated, or
    "other" with a `license_name` (a LicenseRef-*, an expression, an id the Hub lacks)."""
    value = (spdx or "").strip()
    key = re.sub(r"-(only|or-later)$", "", value.lower())
    if key in _NO_LICENCE:
        return {"license": "unknown"}
    if key in _HUB_LICENCES or key in _HUB_SPELLING:
        return {"license": _HUB_SPELLING.get(key, key)}
    name = re.sub(r"^licenseref-", "", value.lower())
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9.]+", "-", name).strip("-")}


# SPDX's own spelling of Hub ids that are not simply upper-cased (reading a source's card)
_SPDX_SPELLING = {
    "mit": "MIT",
    "apache-2.0": "Apache-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-3-clause-clear": "BSD-3-Clause-Clear",
    "isc": "ISC",
    "unlicense": "Unlicense",
    "wtfpl": "WTFPL",
    "zlib": "Zlib",
    "postgresql": "PostgreSQL",
    "artistic-2.0": "Artistic-2.0",
    "lppl-1.3c": "LPPL-1.3c",
    "odc-by": "ODC-By-1.0",
    "odbl": "ODbL-1.0",
    "pddl": "PDDL-1.0",
    "etalab-2.0": "etalab-2.0",
}


def spdx_of(meta: dict[str, Any]) -> str | None:
    """The SPDX id of a dataset card's `license` (its YAML front matter): None when the card
    states none, NOASSERTION for "unknown", LicenseRef-<license_name> for "other"."""
    value = meta.get("license")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else " AND ".join(map(str, value)) or None
    if not value:
        return None
    key = str(value).strip().lower()
    if key == "unknown":
        return "NOASSERTION"
    if key == "other":
        name = str(meta.get("license_name") or "other")
        return f"LicenseRef-{re.sub(r'[^A-Za-z0-9.-]+', '-', name).strip('-')}"
    return _SPDX_SPELLING.get(key, str(value).upper() if key in _HUB_LICENCES else str(value))


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (README.md); {} when it has none or it is not YAML."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def _task_category(manifest: dict[str, Any]) -> str:
    task = manifest.get("task")
    generated = isinstance(task, dict) and task.get("kind") == "generate"
    return "text-generation" if generated else "text-classification"


def card_metadata(manifest: dict[str, Any], splits: dict[str, str] | None = None) -> dict[str, Any]:
    """A version's card metadata, in keys the Hub accepts: its licence as a Hub id, size and
    task categories, languages where known, and with `splits` (split -> file pattern) the
    `configs` that tell `datasets.load_dataset` which files hold which split; what stillroom
    knows beyond the Hub's keys (source, teacher, prompt hash, terms) under `stillroom`."""
    licence = manifest.get("licence") or {}
    teacher = manifest.get("teacher") or {}
    terms = manifest.get("terms") or {}
    meta: dict[str, Any] = {
        "pretty_name": f"{manifest['name']}@{manifest['version']}",
        **hub_licence(licence.get("spdx")),
    }
    if licence.get("source", "").startswith(("http://", "https://")) and meta["license"] == "other":
        meta["license_link"] = licence["source"]
    if manifest.get("language"):
        meta["language"] = list(manifest["language"])
    meta |= {
        "size_categories": [_size_category(int(manifest.get("rows", 0)))],
        "task_categories": [_task_category(manifest)],
        "tags": ["stillroom", "distillation"] + (["llm-labelled"] if teacher else []),
    }
    if splits:
        files = [{"split": split, "path": path} for split, path in splits.items()]
        meta["configs"] = [{"config_name": "default", "data_files": files}]
    known = {
        "dataset": f"{manifest['name']}@{manifest['version']}",
        "parent": manifest.get("parent"),
        "licence": licence.get("spdx", "NOASSERTION"),
        "source": licence.get("source") or None,
        "teacher": {k: teacher[k] for k in ("provider", "model") if teacher.get(k)} or None,
        "prompt_hash": teacher.get("prompt_hash"),
        "terms": {k: terms[k] for k in ("profile", "statement", "restrictions") if terms.get(k)}
        or None,
    }
    restrictions = manifest_restrictions(manifest)
    if restrictions:
        known["restrictions"] = [r["restriction"] for r in restrictions]
    meta["stillroom"] = {k: v for k, v in known.items() if v is not None}
    return meta


def render_card(manifest: dict[str, Any], splits: dict[str, str] | None = None) -> str:
    """The card of a version: metadata (`card_metadata`) as YAML front matter, then where the
    data came from, its licence, the teacher and its terms, and how labelling went."""
    licence = manifest.get("licence") or {}
    teacher = manifest.get("teacher") or {}
    terms = manifest.get("terms") or {}
    meta = card_metadata(manifest, splits)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
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
    restrictions = manifest_restrictions(manifest)
    if restrictions:
        lines += ["", "## Usage restrictions", ""]
        lines += [f"- {describe(r)}" for r in restrictions]
    labeling = manifest.get("labeling")
    if labeling:
        lines += ["", "## Labelling", ""] + [f"- {k}: {v}" for k, v in labeling.items()]
    return "\n".join(lines) + "\n"
