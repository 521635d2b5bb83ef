"""Reading the user's records: values as written, and text that cannot be stored refused."""

import pytest

from stillroom.flows._config import DataConfig
from stillroom.flows._ingest import InputError, read_records


def test_csv_ids_and_texts_are_read_as_written(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("id,text,gold\n000,12,yes\n001,true,no\n01,3.50,yes\n1,null,no\n")
    table = read_records(DataConfig(path=str(path), gold_field="gold"), ["yes", "no"])
    assert table.column("id").to_pylist() == ["000", "001", "01", "1"]
    assert table.column("text").to_pylist() == ["12", "true", "3.50", "null"]
    assert table.column("gold").to_pylist() == ["yes", "no", "yes", "no"]


def test_a_csv_of_quoted_headers_keeps_its_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('"id","the text"\n007,"a, b"\n')
    table = read_records(DataConfig(path=str(path), text_field="the text"))
    assert table.to_pydict() == {"id": ["007"], "text": ["a, b"], "gold": [None]}


@pytest.mark.parametrize("field", ["id", "text", "gold"])
def test_a_lone_surrogate_is_refused_naming_the_record(tmp_path, field):
    path = tmp_path / "r.jsonl"
    rows = [{"id": "a", "text": "fine", "gold": "yes"}, {"id": "b", "text": "ok", "gold": "no"}]
    rows[1][field] = "bad \\ud800 value"
    path.write_text(
        "".join("{" + ", ".join(f'"{k}": "{v}"' for k, v in row.items()) + "}\n" for row in rows)
    )
    with pytest.raises(InputError) as info:
        read_records(DataConfig(path=str(path), gold_field="gold"))
    assert str(info.value) == (
        f"{path}: record 2 has a lone surrogate (\\ud800) in its {field!r} field: not valid Unicode"
    )
