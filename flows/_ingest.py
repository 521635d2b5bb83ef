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


Columns = dict[str, list[Any]]
"""A file's records as one Python list per column, whatever the values' types (a JSONL field
may mix strings and numbers: read_records names the record and the field, Arrow would not)."""


def _read_jsonl(path: Path) -> Columns:
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
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _read_table(path: Path) -> Columns:
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
            table: pa.Table = datasets.load_from_disk(str(path)).data.table
            return dict(table.to_pydict())
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if suffix == ".csv":
            if path.stat().st_size == 0:
                return {}
            options = pacsv.ConvertOptions(strings_can_be_null=False)
            return dict(pacsv.read_csv(path, convert_options=options).to_pydict())
        if suffix == ".parquet":
            return dict(pq.read_table(path).to_pydict())
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise InputError(
        f"unsupported data file type {suffix!r} for {path} (use .jsonl, .csv, .parquet or a datasets folder)"
    )


def _column(columns: Columns, field: str, key: str, path: Path) -> list[Any]:
    if field not in columns:
        names = ", ".join(columns)
        raise InputError(f"data.{key} {field!r} is not a column of {path} (columns: {names})")
    return columns[field]


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def read_records(
    data: DataConfig, labels: list[str] | None = None, *, multi_label: bool = False
) -> pa.Table:
    """The source records as a table of (id, text, gold), validated; a multi-label gold value
    is its labels joined by '|'."""
    path = Path(data.path)
    table = _read_table(path)
    if not table or not next(iter(table.values())):
        raise InputError(f"data file {path} has no records")
    texts = _column(table, data.text_field, "text_field", path)
    odd = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
    if odd is not None:
        raise InputError(
            f"{path}: record {odd + 1} has a {type(texts[odd]).__name__} in its "
            f"{data.text_field!r} field (data.text_field), not text: {texts[odd]!r}"
        )
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
