"""A version as Hugging Face `datasets` see it: a `DatasetDict` in memory, or a folder that
`datasets.load_dataset(folder)` reads (a Parquet file per split and a dataset card).

Class labels become a `ClassLabel` feature and the probabilities a fixed-size list of floats, so
both name their labels without the manifest; the label order is also in each Parquet file's
schema metadata (``stillroom``) for readers that are not `datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._card import render_card

STILLROOM_KEY = b"stillroom"
"""The Parquet schema metadata key holding the version's name and label order."""


class HubError(Exception):
    """The version cannot be turned into a `datasets` dataset as asked."""


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise HubError("this needs the datasets package: pip install datasets") from None
    return datasets


def _class_labels(manifest: dict[str, Any]) -> list[str] | None:
    """The labels of a single-label classification version (a multi-label answer joins several
    labels, which one ClassLabel value cannot hold)."""
    task = manifest.get("task") or {}
    if task.get("kind") != "classify" or task.get("multi_label"):
        return None
    return list(task.get("labels") or []) or None


def _as_indices(column: pa.ChunkedArray, labels: list[str]) -> pa.Array:
    """Label names to their indices (null stays null); a name outside `labels` is an error."""
    index = pc.index_in(column, value_set=pa.array(labels))
    stray = pc.and_(pc.is_valid(column), pc.is_null(index))
    if pc.any(stray).as_py():
        value = column.filter(stray)[0].as_py()
        raise HubError(f"value {value!r} is not one of the version's labels")
    return index.cast(pa.int64())


def hub_table(table: pa.Table, manifest: dict[str, Any]) -> tuple[pa.Table, Any]:
    """(the table in `datasets`' types, its `datasets.Features`): `label` (and `gold` when every
    gold value is a label) as ClassLabel indices, `probs` as a list of one float per label."""
    datasets = _datasets()
    labels = _class_labels(manifest)
    if labels is not None:
        for name in ("label", "gold"):
            if name not in table.column_names:
                continue
            try:
                indices = _as_indices(table.column(name), labels)
            except HubError:
                if name == "label":
                    raise
                continue  # gold outside the label set stays text
            table = table.set_column(table.column_names.index(name), name, indices)
    features = datasets.Features.from_arrow_schema(table.schema)
    if labels is not None:
        for name in ("label", "gold"):
            if name in table.column_names and pa.types.is_integer(table.schema.field(name).type):
                features[name] = datasets.ClassLabel(names=labels)
        if "probs" in table.column_names:
            features["probs"] = datasets.List(datasets.Value("float64"), length=len(labels))
    table = table.cast(features.arrow_schema)
    extra = {"name": manifest.get("name"), "version": manifest.get("version"), "labels": labels}
    metadata = dict(table.schema.metadata or {})
    metadata[STILLROOM_KEY] = json.dumps(extra).encode()
    return table.replace_schema_metadata(metadata), features


def dataset_dict(
    table: pa.Table, manifest: dict[str, Any], held_out: Sequence[bool] | None = None
) -> Any:
    """A `datasets.DatasetDict`: ``train`` and, where `held_out` marks records, ``test``."""
    datasets = _datasets()
    converted, features = hub_table(table, manifest)
    info = datasets.DatasetInfo(
        description=f"{manifest.get('name')}@{manifest.get('version')} (stillroom)",
        license=str((manifest.get("licence") or {}).get("spdx", "")),
        features=features,
    )
    parts = {}
    for split, part in _splits(converted, held_out).items():
        parts[split] = datasets.Dataset(
            datasets.table.InMemoryTable(part), info=info, split=datasets.NamedSplit(split)
        )
    return datasets.DatasetDict(parts)


def _splits(table: pa.Table, held_out: Sequence[bool] | None) -> dict[str, pa.Table]:
    if held_out is None:
        return {"train": table}
    if len(held_out) != table.num_rows:
        raise HubError(f"held_out has {len(held_out)} values for {table.num_rows} records")
    mask = pa.array(held_out, pa.bool_())
    parts = {"train": table.filter(pc.invert(mask)), "test": table.filter(mask)}
    return {split: part for split, part in parts.items() if part.num_rows or split == "train"}


def export_folder(
    table: pa.Table,
    manifest: dict[str, Any],
    folder: str | Path,
    held_out: Sequence[bool] | None = None,
) -> Path:
    """Write `folder` so that `datasets.load_dataset(folder)` reads the version: one Parquet
    file per split under data/, a README.md dataset card whose YAML front matter holds the
    licence as a Hub id and the `configs` naming each split's files, and the manifest beside
    them (stillroom.json). `folder` must be new or empty."""
    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HubError(f"{out} exists and is not an empty folder: name a new one")
    converted, _ = hub_table(table, manifest)
    parts = _splits(converted, held_out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, part in parts.items():
        name = f"data/{split}-00000-of-00001.parquet"
        pq.write_table(part, out / name, compression="zstd")
        splits[split] = f"data/{split}-*.parquet"
    (out / "README.md").write_text(render_card(manifest, splits), encoding="utf-8")
    (out / "stillroom.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
