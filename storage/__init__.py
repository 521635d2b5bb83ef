"""Versioned datasets with their licence and the teacher's terms, and the response cache.

Everything is plain files in a store folder: Parquet, JSON manifests, dataset cards, SQLite.
"""

from ._cache import ResponseCache, canonical_json, request_key
from ._card import card_metadata, front_matter, hub_licence, render_card, spdx_of
from ._hub import HubError
from ._store import (
    DatasetRef,
    Licence,
    Store,
    StoreError,
    VerifyResult,
    is_remote,
    remove_stale,
    sha256_file,
)
from ._terms import RESTRICTIONS, forbids_training, manifest_restrictions, restrictions_of
from ._terms import describe as describe_restriction

__all__ = [
    "RESTRICTIONS",
    "DatasetRef",
    "Licence",
    "HubError",
    "ResponseCache",
    "Store",
    "StoreError",
    "VerifyResult",
    "canonical_json",
    "card_metadata",
    "describe_restriction",
    "forbids_training",
    "front_matter",
    "hub_licence",
    "is_remote",
    "manifest_restrictions",
    "render_card",
    "remove_stale",
    "request_key",
    "restrictions_of",
    "sha256_file",
    "spdx_of",
]
