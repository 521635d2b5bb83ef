"""Reading the user's records: JSONL, CSV, Parquet or a `datasets` folder into an Arrow table.

Every problem (missing file, wrong column, empty file, duplicate id, unknown gold label) is a
one-line error that names it, raised before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from stillroom.labelers import MULTI_LABEL_SEPARATOR

from ._config import DataConfig

SOURCE_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("gold", pa.string())])


class InputError(Exception):
    """The data file is missing or not what the config says."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {number} is not valid JSON") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            try:
                import datasets
            except ImportError:
                raise InputError(
                    f"{path} is a folder: reading a datasets folder needs `pip install datasets`"
                ) from None
            return datasets.load_from_disk(str(path)).data.table
        if suffix in (".jsonl", ".ndjson"):
            rows = _read_jsonl(path)
            return pa.Table.from_pylist(rows) if rows else pa.table({})
        if suffix == ".csv":
            if path.stat().st_size == 0:
                return pa.table({})
            return pacsv.read_csv(
                path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False)
            )
        if suffix == ".parquet":
            return pq.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise InputError(
        f"unsupported data file type {suffix!r} for {path} (use .jsonl, .csv, .parquet or a datasets folder)"
    )


def _column(table: pa.Table, field: str, key: str, path: Path) -> list[Any]:
    if field not in table.column_names:
        columns = ", ".join(table.column_names)
        raise InputError(f"data.{key} {field!r} is not a column of {path} (columns: {columns})")
    return list(table.column(field).to_pylist())


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def read_records(
    data: DataConfig, labels: list[str] | None = None, *, multi_label: bool = False
) -> pa.Table:
    """The source records as a table of (id, text, gold), validated; a multi-label gold value
    is its labels joined by '|'."""
    path = Path(data.path)
    table = _read_table(path)
    if table.num_rows == 0:
        raise InputError(f"data file {path} has no records")
    texts = _column(table, data.text_field, "text_field", path)
    if data.id_field is None:
        # no ids given: a record is named by its content, so the same text keeps the same id
        ids = [hashlib.sha256(str(t).encode()).hexdigest()[:16] for t in texts]
    else:
        raw_ids = _column(table, data.id_field, "id_field", path)
        if None in raw_ids:
            raise InputError(f"{path}: record {raw_ids.index(None) + 1} has no {data.id_field!r}")
        ids = [str(v) for v in raw_ids]
    gold: list[str | None] = [None] * len(texts)
    if data.gold_field is not None:
        gold = [_optional_str(v) for v in _column(table, data.gold_field, "gold_field", path)]
    if data.limit is not None:
        ids, texts, gold = ids[: data.limit], texts[: data.limit], gold[: data.limit]
    empty = [i for i, t in zip(ids, texts, strict=True) if t is None or not str(t).strip()]
    if empty:
        raise InputError(
            f"{path}: {len(empty)} record(s) have an empty {data.text_field!r}, first id {empty[0]!r}"
        )
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        more = f" and {len(dupes) - 1} more" if len(dupes) > 1 else ""
        raise InputError(
            f"{path}: duplicate id {dupes[0]!r}{more} in {data.id_field or 'content hash'}"
        )
    if labels is not None:
        given = {g for g in gold if g is not None}
        if multi_label:
            given = {part for g in given for part in g.split(MULTI_LABEL_SEPARATOR) if part}
        unknown = sorted(given.difference(labels))
        if unknown:
            raise InputError(
                f"{path}: gold label {unknown[0]!r} ({data.gold_field}) is not in task.labels"
                + (f" ({len(unknown)} unknown in all)" if len(unknown) > 1 else "")
            )
    return pa.table(
        {"id": ids, "text": [str(t) for t in texts], "gold": gold}, schema=SOURCE_SCHEMA
    )
