"""Reading the user's records: JSONL, CSV, Parquet or a `datasets` folder into an Arrow table.

Every problem (missing file, wrong column, empty file, duplicate id, unknown gold label) is a
one-line error that names it, raised before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from stillroom import storage
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


def _read_table(path: Path, split: str | None = None) -> Columns:
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            return _read_folder(path, split)
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if suffix == ".csv":
            if path.stat().st_size == 0:
                return {}
            return _read_csv(path)
        if suffix == ".parquet":
            return dict(pq.read_table(path).to_pydict())
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise InputError(
        f"unsupported data file type {suffix!r} for {path} (use .jsonl, .csv, .parquet or a datasets folder)"
    )


def _read_csv(path: Path) -> Columns:
    """Every column as written, as text: Arrow would infer types and read ids `000` and `001` as
    the numbers 0 and 1, or a text `true` as a boolean."""
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    options = pacsv.ConvertOptions(
        strings_can_be_null=False, column_types={name: pa.string() for name in header}
    )
    return dict(pacsv.read_csv(path, convert_options=options).to_pydict())


_SAVED = ("dataset_dict.json", "dataset_info.json", "state.json")
"""The files `save_to_disk` writes: a folder holding one is read with `load_from_disk`."""


def _read_folder(path: Path, split: str | None) -> Columns:
    """A Hugging Face dataset folder: one written by `save_to_disk` (a Dataset, or a DatasetDict
    with `data.split`), else data files `datasets.load_dataset` reads (Parquet, JSON, CSV, with
    or without a card's `configs`). A `ClassLabel` column becomes its label names."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{path} is a folder: reading a datasets folder needs `pip install datasets`"
        ) from None
    try:
        if any((path / name).is_file() for name in _SAVED):
            loaded = datasets.load_from_disk(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="stillroom-hf-") as cache:
                loaded = datasets.load_dataset(str(path), cache_dir=cache)
                loaded = _one_split(loaded, split, path)
                return _columns(loaded)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise InputError(f"cannot read {path} as a dataset: {_first_line(exc)}") from None
    return _columns(_one_split(loaded, split, path))


def _one_split(loaded: Any, split: str | None, path: Path) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None and loaded.split is not None and str(loaded.split) != split:
            raise InputError(f"data.split {split!r}: {path} holds only split {loaded.split}")
        return loaded
    if split is None:
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        raise InputError(f"{path} holds splits {', '.join(loaded)}: choose one with data.split")
    if split not in loaded:
        raise InputError(f"data.split {split!r} is not a split of {path} (has {', '.join(loaded)})")
    return loaded[split]


def _columns(dataset: Any) -> Columns:
    import datasets

    columns: Columns = dict(dataset.data.table.to_pydict())
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            columns[name] = [
                None if v is None or v < 0 else feature.int2str(v) for v in columns[name]
            ]
    return columns


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def source_card(data: DataConfig) -> dict[str, Any]:
    """What the source's own dataset card says, for `data.path` a folder: the front matter of
    its README.md, else the `license` save_to_disk kept in dataset_info.json; {} for a file."""
    path = Path(data.path)
    if not path.is_dir():
        return {}
    readme = path / "README.md"
    if readme.is_file():
        meta = storage.front_matter(readme.read_text(encoding="utf-8", errors="replace"))
        if meta:
            return meta
    infos = [path / "dataset_info.json"]
    if data.split is not None:
        infos.append(path / data.split / "dataset_info.json")
    infos += sorted(path.glob("*/dataset_info.json"))
    for info in infos:
        if info.is_file():
            try:
                found = json.loads(info.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(found, dict) and found.get("license"):
                return {"license": found["license"]}
    return {}


def source_licence(data: DataConfig) -> storage.Licence:
    """The source's licence: the config's `data.licence` when it gives one, else what the source's
    card states (a Hub id read back as SPDX), else NOASSERTION."""
    source = data.source or data.path
    if data.licence is not None:
        return storage.Licence(data.licence, data.licence_statement, source, data.citation)
    card = source_card(data)
    spdx = storage.spdx_of(card) if card else None
    if spdx is None:
        return storage.Licence("NOASSERTION", data.licence_statement, source, data.citation)
    statement = (
        data.licence_statement
        or f"as the source's dataset card states (license: {card['license']})"
    )
    return storage.Licence(spdx, statement, source, data.citation)


def _column(columns: Columns, field: str, key: str, path: Path) -> list[Any]:
    if field not in columns:
        names = ", ".join(columns)
        raise InputError(f"data.{key} {field!r} is not a column of {path} (columns: {names})")
    return columns[field]


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _texts(columns: Columns, field: str, key: str, path: Path) -> list[str | None]:
    """A column of text (None where a record has none); any other value is an error naming it."""
    values = _column(columns, field, key, path)
    odd = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
    if odd is not None:
        raise InputError(
            f"{path}: record {odd + 1} has a {type(values[odd]).__name__} in its {field!r} field "
            f"(data.{key}), not text: {values[odd]!r}"
        )
    _check_encodable(values, field, path)
    return values


def _check_encodable(values: list[Any], field: str, path: Path) -> None:
    """Refuse a value that is not valid Unicode (a lone surrogate, as a JSON escape `\\ud800`
    can write): it can be neither stored nor sent."""
    for i, value in enumerate(values):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(
                    f"{path}: record {i + 1} has a lone surrogate (\\u{ord(value[exc.start]):04x}) "
                    f"in its {field!r} field: not valid Unicode"
                ) from None


def compose_prompt(data: DataConfig, text: str, extra: str | None = None) -> str:
    """A record's prompt: its text, or its instruction then a blank line and its input when it
    has one; through `data.prompt_template` when the config gives one."""
    if data.prompt_template is not None:
        if data.instruction_field is not None:
            return data.prompt_template.format(instruction=text, input=extra or "")
        return data.prompt_template.format(text=text)
    return f"{text}\n\n{extra}" if extra and extra.strip() else text


def _prompts(
    columns: Columns, data: DataConfig, path: Path
) -> tuple[str, list[str | None], list[str | None]]:
    """(the field prompts are made of, its values, the prompts): the text field, or the
    instruction field with the input field after it; None where a record has no text."""
    key = "instruction_field" if data.instruction_field is not None else "text_field"
    field = data.instruction_field or data.text_field
    texts = _texts(columns, field, key, path)
    extras = (
        _texts(columns, data.input_field, "input_field", path)
        if data.input_field is not None
        else [None] * len(texts)
    )
    prompts = [
        None if t is None else compose_prompt(data, t, e)
        for t, e in zip(texts, extras, strict=True)
    ]
    return field, texts, prompts


def _check_gold(
    gold: list[str | None], labels: list[str], data: DataConfig, path: Path, multi_label: bool
) -> None:
    given = {g for g in gold if g is not None}
    if multi_label:
        given = {part for g in given for part in g.split(MULTI_LABEL_SEPARATOR) if part}
    unknown = sorted(given.difference(labels))
    if unknown:
        raise InputError(
            f"{path}: gold label {unknown[0]!r} ({data.gold_field}) is not in task.labels"
            + (f" ({len(unknown)} unknown in all)" if len(unknown) > 1 else "")
        )


def read_records(
    data: DataConfig, labels: list[str] | None = None, *, multi_label: bool = False
) -> pa.Table:
    """The source records as a table of (id, text, gold), validated: `text` is what the teacher
    is sent (for a generation, the prompt `compose_prompt` makes); a multi-label gold value is
    its labels joined by '|'. With `labels` None, gold values are not checked against them (a
    generation's gold is a reference completion)."""
    path = Path(data.path)
    table = _read_table(path, data.split)
    if not table or not next(iter(table.values())):
        raise InputError(f"data file {path} has no records")
    field, texts, prompts = _prompts(table, data, path)
    if data.id_field is None:
        # no ids given: a record is named by its content, so the same prompt keeps the same id
        ids = [hashlib.sha256(str(p).encode()).hexdigest()[:16] for p in prompts]
    else:
        raw_ids = _column(table, data.id_field, "id_field", path)
        if None in raw_ids:
            raise InputError(f"{path}: record {raw_ids.index(None) + 1} has no {data.id_field!r}")
        ids = [str(v) for v in raw_ids]
        _check_encodable(ids, data.id_field, path)
    gold: list[str | None] = [None] * len(texts)
    if data.gold_field is not None:
        gold = [_optional_str(v) for v in _column(table, data.gold_field, "gold_field", path)]
        _check_encodable(gold, data.gold_field, path)
    if data.limit is not None:
        ids, texts, gold = ids[: data.limit], texts[: data.limit], gold[: data.limit]
        prompts = prompts[: data.limit]
    empty = [i for i, t in zip(ids, texts, strict=True) if t is None or not t.strip()]
    if empty:
        raise InputError(
            f"{path}: {len(empty)} record(s) have an empty {field!r}, first id {empty[0]!r}"
        )
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        more = f" and {len(dupes) - 1} more" if len(dupes) > 1 else ""
        raise InputError(
            f"{path}: duplicate id {dupes[0]!r}{more} in {data.id_field or 'content hash'}"
        )
    if labels is not None:
        _check_gold(gold, labels, data, path, multi_label)
    return pa.table({"id": ids, "text": prompts, "gold": gold}, schema=SOURCE_SCHEMA)
