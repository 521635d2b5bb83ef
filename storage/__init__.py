"""Versioned datasets with their licence and the teacher's terms, and the response cache.

Everything is plain files in a store folder: Parquet, JSON manifests, dataset cards, SQLite.
"""

from ._cache import ResponseCache, canonical_json, request_key
from ._card import card_metadata, front_matter, hub_licence, render_card, spdx_of
from ._hub import HubError
from ._store import DatasetRef, Licence, Store, StoreError, VerifyResult, sha256_file

__all__ = [
    "DatasetRef",
    "Licence",
    "HubError",
    "ResponseCache",
    "Store",
    "StoreError",
    "VerifyResult",
    "canonical_json",
    "card_metadata",
    "front_matter",
    "hub_licence",
    "render_card",
    "request_key",
    "sha256_file",
    "spdx_of",
]
