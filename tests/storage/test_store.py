import hashlib
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
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
    with pytest.raises(StoreError, match="store 'nosuch://bucket/prefix'"):
        Store("nosuch://bucket/prefix")


def test_list_summarises_versions(tmp_path):
    store = Store(tmp_path)
    store.commit("a", table(), licence=LICENCE)
    store.commit("a", table(5), licence=LICENCE)
    rows = store.list()
    assert [r["dataset"] for r in rows] == ["a@v1", "a@v2"]
    assert [r["rows"] for r in rows] == [3, 5]
    assert json.dumps(rows)


# --- integrity: every failure is a StoreError naming the problem; nothing stored changes ---


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256: what "nothing stored was changed" compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def labeled(n: int = 3, failed: int = 1) -> pa.Table:
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": [None if i < failed else "a" for i in range(n)],
            "probs": [[0.5, 0.5]] * n,
            "error": ["timeout" if i < failed else None for i in range(n)],
        }
    )


def edit_manifest(store: Store, ref: DatasetRef, **changes: object) -> None:
    path = store.path(ref) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_a_clean_version_verifies_and_is_in_the_catalog(tmp_path):
    store = Store(tmp_path)
    ref = store.commit(
        "demo", labeled(), licence=LICENCE, metadata={"labeling": {"labeled": 2, "failed": 1}}
    )
    result = store.verify(ref)
    assert (result.problems, result.notes) == ([], [])
    lines = (tmp_path / "catalog.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == ["v1"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"licence": {"spdx": "MIT"}}, []),
        ({"rows": 999}, ["rows is 999 but data.parquet has 3"]),
        (
            {"schema": {"id": "int64"}},
            ["schema does not match data.parquet", "'id' int64 vs string"],
        ),
        (
            {"labeling": {"labeled": 3, "failed": 0}},
            ["labeling.labeled is 3 but data.parquet has 2"],
        ),
        ({"version": "v7"}, ["describes demo@v7, not demo@v1"]),
    ],
)
def test_verify_catches_a_hand_edited_manifest(tmp_path, changes, expected):
    store = Store(tmp_path)
    ref = store.commit(
        "demo", labeled(), licence=LICENCE, metadata={"labeling": {"labeled": 2, "failed": 1}}
    )
    edit_manifest(store, ref, **changes)
    problems = store.verify(ref).problems
    assert any(
        "manifest.json: sha256 differs from the one catalog.jsonl recorded" in p for p in problems
    )
    for text in expected:
        assert any(text in p for p in problems), problems
    # a version older than the catalog is still checked against its data, with a note
    (tmp_path / "catalog.jsonl").unlink()
    result = store.verify(ref)
    assert result.notes and "before the catalog existed" in result.notes[0]
    assert [p for p in result.problems if "catalog" in p] == []
    assert all(any(text in p for p in result.problems) for text in expected)


def test_a_version_older_than_the_catalog_verifies_with_a_note(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    (tmp_path / "catalog.jsonl").unlink()
    result = store.verify(ref)
    assert result.ok and "committed before the catalog existed" in result.notes[0]
    assert store.load(ref).equals(table())


def resign(store: Store, ref: DatasetRef, data: pa.Table) -> None:
    """Replace the data with a valid, altered table and update the manifest to match: all a
    tamperer can do without the catalog."""
    path = store.path(ref) / "data.parquet"
    pq.write_table(data, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = json.loads((store.path(ref) / "manifest.json").read_text())
    manifest["files"]["data.parquet"] = {"sha256": digest, "bytes": path.stat().st_size}
    edit_manifest(store, ref, files=manifest["files"], content_sha256=digest)


def test_load_refuses_a_replaced_data_file(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    altered = pa.table({"id": ["r0", "r1", "r2"], "text": ["evil"] * 3})
    pq.write_table(altered, store.path(ref) / "data.parquet")
    with pytest.raises(
        StoreError, match=r"^demo@v1 is damaged: data.parquet: sha256 differs"
    ) as exc:
        store.load(ref)
    assert "run `stillroom datasets verify demo@v1` for details" in str(exc.value)
    resign(store, ref, altered)
    with pytest.raises(StoreError, match=r"demo@v1 is damaged: manifest.json: sha256 differs"):
        store.load(ref)
    assert any(
        "data.parquet: sha256 differs from the one catalog" in p for p in store.verify(ref).problems
    )
    assert store.load(ref, verify=False).equals(altered)  # the cheap path reads without checking


def test_load_refuses_a_truncated_or_missing_data_file(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    data = store.path(ref) / "data.parquet"
    data.write_bytes(data.read_bytes()[:20])
    with pytest.raises(StoreError, match="demo@v1 is damaged: data.parquet: sha256 differs"):
        store.load(ref)
    data.unlink()
    with pytest.raises(StoreError, match="demo@v1 is damaged: data.parquet: missing"):
        store.load(ref)


def test_commit_refuses_to_dedupe_against_a_damaged_latest_version(tmp_path):
    store = Store(tmp_path)
    first = store.commit("demo", table(), licence=LICENCE)
    data = store.path(first) / "data.parquet"
    data.write_bytes(data.read_bytes()[:-10])
    before = snapshot(tmp_path)
    for content in (table(), table(5)):
        with pytest.raises(StoreError) as exc:
            store.commit("demo", content, licence=LICENCE)
        message = str(exc.value)
        assert message.startswith("demo@v1, the latest version of 'demo', is damaged (data.parquet")
        assert f"mv {store.path(first)} {store.path(first)}.damaged" in message
        assert "\n" not in message
    assert snapshot(tmp_path) == before
    # recovering as told: the damaged folder is kept aside and its number is not given out again
    store.path(first).rename(f"{store.path(first)}.damaged")
    second = store.commit("demo", table(), licence=LICENCE)
    assert second.version == "v2" and store.verify(second).ok
    assert snapshot(tmp_path / "datasets/demo/v1.damaged") == {
        k.removeprefix("datasets/demo/v1/"): v for k, v in before.items() if "v1/" in k
    }


def test_a_store_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "store"
    path.write_text("not a folder")
    with pytest.raises(StoreError, match=f"^store {path} is a file, not a folder"):
        Store(path)
    assert path.read_text() == "not a folder"


def test_list_names_broken_versions_and_keeps_the_rest(tmp_path):
    store = Store(tmp_path)
    store.commit("a", table(), licence=LICENCE)
    store.commit("b", table(), licence=LICENCE)
    store.commit("b", table(4), licence=LICENCE)
    (store.path(DatasetRef("a", "v1")) / "manifest.json").unlink()
    (store.path(DatasetRef("b", "v1")) / "manifest.json").write_text("{not json")
    rows = store.list()
    assert [(r["dataset"], r["rows"], r["problem"]) for r in rows] == [
        ("a@v1", None, "manifest.json is missing"),
        ("b@v1", None, "unreadable manifest (JSONDecodeError)"),
        ("b@v2", 4, None),
    ]
    assert rows[2]["licence"] == "CC-BY-4.0" and json.dumps(rows)


def test_commit_works_past_a_latest_folder_without_manifest(tmp_path):
    store = Store(tmp_path)
    store.commit("demo", table(), licence=LICENCE)
    broken = tmp_path / "datasets/demo/v2"
    broken.mkdir()
    (broken / "data.parquet").write_bytes(b"half")
    before = snapshot(broken)
    assert store.resolve("demo") == DatasetRef("demo", "v2")
    with pytest.raises(StoreError, match="demo@v2 is damaged: manifest.json is missing"):
        store.load(store.resolve("demo"))
    assert store.commit("demo", table(), licence=LICENCE) == DatasetRef("demo", "v1")
    third = store.commit("demo", table(6), licence=LICENCE)
    assert third == DatasetRef("demo", "v3") and store.verify(third).ok
    assert snapshot(broken) == before


def test_commit_with_a_garbled_latest_manifest_says_so(tmp_path):
    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    (store.path(ref) / "manifest.json").write_text("[]")
    before = snapshot(tmp_path)
    with pytest.raises(
        StoreError, match=r"demo@v1, the latest version of 'demo', is damaged \(unreadable manifest"
    ):
        store.commit("demo", table(), licence=LICENCE)
    assert snapshot(tmp_path) == before
    with pytest.raises(StoreError, match=r"^demo@v1: unreadable manifest \(not a JSON object\)$"):
        store.manifest(ref)


def test_a_dataset_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "demo").write_text("x")
    with pytest.raises(StoreError, match="^cannot write in .*datasets/demo: "):
        Store(tmp_path).commit("demo", table(), licence=LICENCE)


def test_gc_removes_unfinished_commits_once_they_are_old(tmp_path):
    import os
    import time

    store = Store(tmp_path)
    ref = store.commit("demo", table(), licence=LICENCE)
    folder = tmp_path / "datasets" / "demo"
    stale_tmp = folder / ".tmp-dead"
    stale_tmp.mkdir()
    (stale_tmp / "data.parquet").write_bytes(b"x" * 1000)
    never = folder / "v7"  # a number taken by a crash before it became a version
    never.mkdir()
    (never / "data.parquet").write_bytes(b"y" * 10)
    fresh = folder / ".tmp-running"  # a commit in progress
    fresh.mkdir()
    (fresh / "data.parquet").write_bytes(b"z")
    old = time.time() - 2 * 3600
    for path in (stale_tmp, stale_tmp / "data.parquet", never, never / "data.parquet"):
        os.utime(path, (old, old))

    listed = store.gc(dry_run=True)
    assert [(Path(p).name, size) for p, size in listed] == [(".tmp-dead", 1000), ("v7", 10)]
    assert stale_tmp.exists() and never.exists()  # a dry run removes nothing
    assert store.gc() == listed
    assert not stale_tmp.exists() and not never.exists() and fresh.exists()
    assert store.verify(ref).ok and store.versions("demo") == ["v1"]
    # v7 never was a version (no manifest, no catalog line): the next one follows v1
    assert store.commit("demo", table(5), licence=LICENCE).version == "v2"


def test_gc_never_removes_a_live_writers_commit_however_slow(tmp_path):
    import os
    import time

    store = Store(tmp_path)
    schema = table().schema
    started, go_on = threading.Event(), threading.Event()

    def slow_batches():
        yield from table(2).to_batches()
        started.set()  # nothing more is written until gc has run: the folder looks stale
        go_on.wait(30)
        yield from table(2, offset=2).to_batches()

    result = {}
    writer = threading.Thread(
        target=lambda: result.update(
            ref=store.commit("demo", slow_batches(), licence=LICENCE, schema=schema)
        )
    )
    writer.start()
    assert started.wait(30)
    (staging,) = (tmp_path / "datasets" / "demo").glob(".tmp-*")
    old = time.time() - 2 * 3600
    for path in (staging, *staging.iterdir()):
        os.utime(path, (old, old))
    assert store.gc(grace_s=0) == [] and staging.exists()
    go_on.set()
    writer.join(30)
    assert str(result["ref"]) == "demo@v1" and store.load(result["ref"]).num_rows == 4
    # a dead writer holds nothing: its folder goes
    dead = tmp_path / "datasets" / "demo" / ".tmp-dead"
    dead.mkdir()
    assert [Path(p).name for p, _ in store.gc(grace_s=0)] == [".tmp-dead"]


def test_a_streamed_commit_and_scan_hold_a_batch_at_a_time(tmp_path):
    store = Store(tmp_path)
    schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("error", pa.string())])

    def batches():
        for start in range(0, 150_000, 50_000):
            ids = [f"r{i}" for i in range(start, start + 50_000)]
            errors = ["off-label answer" if i % 100 == 0 else None for i in range(50_000)]
            labels = [None if e else "pos" for e in errors]
            yield pa.record_batch([pa.array(ids), pa.array(labels), pa.array(errors)], schema)

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    ref = store.commit(
        "big", reader, licence=LICENCE, metadata={"labeling": {"labeled": 148_500, "failed": 1_500}}
    )
    manifest = store.manifest(ref)
    assert manifest["rows"] == 150_000 and manifest["schema"]["label"] == "string"
    data = pq.ParquetFile(store.path(ref) / "data.parquet")
    assert max(data.metadata.row_group(g).num_rows for g in range(data.num_row_groups)) <= 65_536
    assert store.verify(ref).ok
    seen = list(store.scan(ref, batch_size=10_000, columns=["id"]))
    assert sum(b.num_rows for b in seen) == 150_000 and max(b.num_rows for b in seen) <= 10_000
    assert seen[0].schema.names == ["id"] and seen[-1].column("id")[-1].as_py() == "r149999"
    # a count in the manifest that the data does not bear out is found, row group by row group
    lying = store.commit(
        "lying", store.load(ref), licence=LICENCE, metadata={"labeling": {"labeled": 150_000}}
    )
    assert store.verify(lying).problems == [
        "manifest: labeling.labeled is 150000 but data.parquet has 148500"
    ]
    # a damaged version yields nothing
    path = store.path(ref) / "data.parquet"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(StoreError, match="big@v1 is damaged"):
        next(store.scan(ref))


def test_the_same_data_under_other_terms_is_another_version(tmp_path):
    store = Store(tmp_path)
    free = store.commit("d", table(), licence=LICENCE, metadata={"restrictions": []})
    assert store.commit("d", table(), licence=LICENCE, metadata={"restrictions": []}) == free
    no_training = [{"restriction": "no-training", "from": "x", "detail": "y"}]
    bound = store.commit("d", table(), licence=LICENCE, metadata={"restrictions": no_training})
    assert str(bound) == "d@v2" and store.manifest(bound)["restrictions"] == no_training


def test_gc_never_removes_a_committed_version_that_lost_its_manifest(tmp_path):
    import os
    import time

    store = Store(tmp_path)
    ref = store.commit("d", table(), licence=LICENCE)
    (store.path(ref) / "manifest.json").unlink()  # damage, for verify to report
    old = time.time() - 2 * 3600
    for path in (store.path(ref), *store.path(ref).iterdir()):
        os.utime(path, (old, old))
    assert store.gc(grace_s=0) == []
    assert (store.path(ref) / "data.parquet").exists()


@pytest.mark.parametrize(
    ("probs", "coverage", "ok"),
    [
        ([0.25, 0.75], 0.9, True),
        ([1.0, 0.0], None, True),
        ([float("nan"), float("nan")], float("nan"), False),
        ([0.5, 0.5], float("nan"), False),
        ([1.5, -0.5], 1.0, False),
        ([0.6, 0.6], 1.0, False),
        ([float("inf"), 0.0], 1.0, False),
        (None, None, True),  # a failure has no probabilities
    ],
)
def test_verify_checks_that_probabilities_are_a_distribution(tmp_path, probs, coverage, ok):
    store = Store(tmp_path)
    labeled = (
        table(2)
        .append_column("probs", pa.array([[0.5, 0.5], probs], pa.list_(pa.float64())))
        .append_column("coverage", pa.array([1.0, coverage], pa.float64()))
    )
    ref = store.commit("demo", labeled, licence=LICENCE)
    result = store.verify(ref)
    assert result.ok == ok, result.problems
    if not ok:
        assert any("not a distribution" in p and "'r1'" in p for p in result.problems)


def test_verify_lets_multi_label_probabilities_sum_to_more_than_one(tmp_path):
    store = Store(tmp_path)
    labeled = table(1).append_column("probs", pa.array([[0.9, 0.8]], pa.list_(pa.float64())))
    meta = {"task": {"kind": "classify", "multi_label": True}}
    ref = store.commit("demo", labeled, licence=LICENCE, metadata=meta)
    assert store.verify(ref).ok
