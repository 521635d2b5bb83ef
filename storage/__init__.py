"""Versioned datasets with their licence and the teacher's terms, and the response cache.

Everything is plain files in a store folder: Parquet, JSON manifests, dataset cards, SQLite.
"""

from ._cache import ResponseCache, canonical_json, request_key
from ._card import render_card
from ._store import DatasetRef, Licence, Store, StoreError, VerifyResult, sha256_file

__all__ = [
    "DatasetRef",
    "Licence",
    "ResponseCache",
    "Store",
    "StoreError",
    "VerifyResult",
    "canonical_json",
    "render_card",
    "request_key",
    "sha256_file",
]
