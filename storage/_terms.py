"""What a version may be used for: restrictions computed from the source data's licence (and
what its config says beyond the SPDX id) and from the terms of every teacher whose answers it
holds. Each restriction names where it comes from, so a card or an error can say why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

NO_TRAINING = "no-training"
NO_COMPETING_MODELS = "no-competing-models"
NON_COMMERCIAL = "non-commercial"
SHARE_ALIKE = "share-alike"
ATTRIBUTION = "attribution"
RESTRICTIONS = (NO_TRAINING, NO_COMPETING_MODELS, NON_COMMERCIAL, SHARE_ALIKE, ATTRIBUTION)
"""Every restriction a licence, a data config or a teacher's terms may carry."""

_WHAT = {
    NO_TRAINING: "may not be used to train models",
    NO_COMPETING_MODELS: "may not be used to develop models that compete with the teacher's provider",
    NON_COMMERCIAL: "non-commercial use only",
    SHARE_ALIKE: "what is made from it must be shared under the same licence",
    ATTRIBUTION: "attribution is owed",
}


def _licence_restrictions(spdx: str) -> list[str]:
    """What an SPDX licence id implies for the data and what is made from it."""
    key = spdx.strip().upper()
    found = []
    if re.match(r"^CC-BY(-|$)", key):
        found.append(ATTRIBUTION)
    if re.search(r"(^|-)NC(-|$)", key):
        found.append(NON_COMMERCIAL)
    if re.search(r"(^|-)SA(-|$)", key):
        found.append(SHARE_ALIKE)
    return found


def _entry(restriction: str, source: str, detail: str = "") -> dict[str, str]:
    return {"restriction": restriction, "from": source, "detail": detail or _WHAT[restriction]}


def restrictions_of(
    licence: Mapping[str, Any],
    terms: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None,
    data_restrictions: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Every restriction on a version, each as {restriction, from, detail}: from the source's
    SPDX licence (CC-BY: attribution; -NC: non-commercial; -SA: share-alike), from what the data
    config adds (e.g. no-training for an evaluation-only set), and from each teacher's terms."""
    spdx = str(licence.get("spdx") or "NOASSERTION")
    found: list[dict[str, str]] = []
    for restriction in _licence_restrictions(spdx):
        detail = ""
        if restriction == ATTRIBUTION:
            owed = licence.get("citation") or licence.get("source") or ""
            detail = f"credit the source{f': {owed}' if owed else ''}"
        found.append(_entry(restriction, f"source licence {spdx}", detail))
    for restriction in data_restrictions:
        found.append(_entry(restriction, "the source data's terms (data.restrictions)"))
    if terms is None:
        all_terms: list[Mapping[str, Any]] = []
    elif isinstance(terms, Mapping):
        all_terms = [terms]
    else:
        all_terms = list(terms)
    for t in all_terms:
        name = str(t.get("profile") or "custom")
        dated = f" (as of {t['as_of']})" if t.get("as_of") else ""
        source = f"teacher terms {name}{dated}"
        for restriction in t.get("restrictions") or []:
            detail = ""
            if restriction == ATTRIBUTION and t.get("attribution"):
                detail = str(t["attribution"])
            found.append(_entry(str(restriction), source, detail))
        if t.get("attribution") and ATTRIBUTION not in (t.get("restrictions") or []):
            found.append(_entry(ATTRIBUTION, source, str(t["attribution"])))
    unique: list[dict[str, str]] = []
    for entry in found:
        if entry not in unique:
            unique.append(entry)
    return unique


def manifest_restrictions(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    """A version's restrictions: those its manifest recorded at commit, else computed from its
    licence, its data config and its teacher's terms (a version committed before they were)."""
    recorded = manifest.get("restrictions")
    if isinstance(recorded, list):
        return [dict(r) for r in recorded if isinstance(r, Mapping)]
    data = manifest.get("data") or {}
    return restrictions_of(
        manifest.get("licence") or {}, manifest.get("terms"), data.get("restrictions") or ()
    )


def forbids_training(restrictions: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The restrictions that forbid training any model on the version."""
    return [r for r in restrictions if r.get("restriction") == NO_TRAINING]


def describe(restriction: Mapping[str, str]) -> str:
    """One line: ``non-commercial (source licence CC-BY-NC-4.0): non-commercial use only``."""
    return f"{restriction['restriction']} ({restriction['from']}): {restriction['detail']}"
