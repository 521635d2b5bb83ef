import json
import threading

import pyarrow as pa
import pytest

from stillroom.storage import DatasetRef, Licence, Store, StoreError

LICENCE = Licence("CC-BY-4.0", "Attribution 4.0 International", "https://example.org/data")


def table(n: int = 3, offset: int = 0) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(offset, offset + n)], "text": ["t"] * n})


def test_commit_writes_data_manifest_and_card(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE, metadata={"teacher": {"model": "m"}})
    assert str(ref) == "demo@v1"
    manifest = store.manifest(ref)
    assert manifest["rows"] == 3 and manifest["licence"]["spdx"] == "CC-BY-4.0"
    assert set(manifest["files"]) == {"data.parquet", "README.md"}
    assert manifest["teacher"] == {"model": "m"}
    card = (store.path(ref) / "README.md").read_text()
    assert card.startswith("---\n") and "license: cc-by-4.0" in card
    assert store.load(ref).equals(table())


def test_versions_are_immutable_and_numbered(tmp_path):
    store = Store(tmp_path)
    first = store.commit("demo", table(), licence=LICENCE)
    again = store.commit("demo", table(), licence=LICENCE)
    second = store.commit("demo", table(4), licence=LICENCE, parent=first)
    assert (first, again, second.version) == (first, first, "v2")
    assert store.manifest(second)["parent"] == "demo@v1"
    assert store.resolve("demo") == second and store.resolve("demo@v1") == first
    assert not list((tmp_path / "datasets" / "demo").glob(".tmp-*"))


def test_concurrent_writers_never_share_a_version(tmp_path):
    store = Store(tmp_path)
    refs: list[DatasetRef] = []
    threads = [
        threading.Thread(
            target=lambda i=i: refs.append(
                store.commit("demo", table(2, offset=10 * i), licence=LICENCE)
            )
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(r.version[1:]) for r in refs) == list(range(1, 9))
    assert all(store.verify(r).ok for r in refs)


def test_verify_reports_tampering(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    assert store.verify(ref).ok
    data = store.path(ref) / "data.parquet"
    data.write_bytes(data.read_bytes()[:-3] + b"xyz")
    (store.path(ref) / "extra.txt").write_text("hi")
    problems = store.verify(ref).problems
    assert any("data.parquet" in p and "modified" in p for p in problems)
    assert any("extra.txt" in p for p in problems)


def test_errors_name_the_problem(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="no dataset named 'nope'"):
        store.resolve("nope")
    store.commit("demo", table(), licence=LICENCE)
    with pytest.raises(StoreError, match="has no version 'v9'"):
        store.resolve("demo@v9")
    with pytest.raises(StoreError, match="invalid dataset name"):
        store.commit("../evil", table(), licence=LICENCE)
    with pytest.raises(StoreError, match="only local folders"):
        Store("s3://bucket/prefix")


def test_list_summarises_versions(tmp_path):
    store = Store(tmp_path)
    store.commit("a", table(), licence=LICENCE)
    store.commit("a", table(5), licence=LICENCE)
    rows = store.list()
    assert [r["dataset"] for r in rows] == ["a@v1", "a@v2"]
    assert [r["rows"] for r in rows] == [3, 5]
    assert json.dumps(rows)
