"""The store in object storage, against a real S3-compatible server (moto's server mode, started
here on 127.0.0.1 as a process of its own): the same API and checks as a local store, numbers
claimed by conditional writes so that two writing processes never share one, and credentials
taken from the environment and never written anywhere."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from stillroom.storage import Licence, Store, StoreError

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from tests.conftest import S3_SECRET as SECRET

LICENCE = Licence("CC-BY-4.0", "Attribution", "https://example.org/data")


def table(n=3, offset=0):
    return pa.table({"id": [f"r{i}" for i in range(offset, offset + n)], "text": ["t"] * n})


def objects(bucket_name):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    return {path: fs.cat_file(path) for path in fs.find(bucket_name)}


def test_an_object_store_commits_loads_and_verifies_as_a_local_one(bucket):
    store = Store(f"s3://{bucket}/team")
    first = store.commit("demo", table(), licence=LICENCE, message="first")
    again = store.commit("demo", table(), licence=LICENCE)
    second = store.commit("demo", table(5), licence=LICENCE, parent=first)
    assert (str(first), again, str(second)) == ("demo@v1", first, "demo@v2")
    assert store.load(second).equals(table(5))
    assert sum(b.num_rows for b in store.scan(second)) == 5
    result = store.verify(second)
    assert result.ok and not result.notes
    assert store.manifest(second)["previous"] == "demo@v1"
    assert [e["version"] for e in store.log("demo")] == ["demo@v2", "demo@v1"]
    assert [row["dataset"] for row in store.list()] == ["demo@v1", "demo@v2"]
    stored = objects(bucket)
    assert set(stored) >= {
        f"{bucket}/team/datasets/demo/v1/manifest.json",
        f"{bucket}/team/datasets/demo/v1/data.parquet",
        f"{bucket}/team/datasets/demo/v1/README.md",
        f"{bucket}/team/catalog/demo/v1.json",
    }
    assert not any(path.endswith(".claim") for path in stored)  # removed once whole
    # a store can travel to another process (a Prefect task, a worker); no credentials go along
    import pickle

    packed = pickle.dumps(store)
    assert SECRET.encode() not in packed
    copy = pickle.loads(packed)
    assert type(copy) is type(store) and copy.verify(second).ok
    # the credentials are the environment's: nothing written holds them
    assert not any(SECRET.encode() in body or b"test-key-id" in body for body in stored.values())


def test_damage_in_object_storage_is_found(bucket):
    import s3fs

    store = Store(f"s3://{bucket}")
    ref = store.commit("demo", table(), licence=LICENCE)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{bucket}/datasets/demo/v1/extra.txt", b"hi")
    manifest = json.loads(fs.cat_file(f"{bucket}/datasets/demo/v1/manifest.json"))
    manifest["licence"]["spdx"] = "MIT"  # an edited licence
    fs.pipe_file(f"{bucket}/datasets/demo/v1/manifest.json", json.dumps(manifest).encode())
    problems = store.verify(ref).problems
    assert "extra.txt: not in the manifest (added)" in problems
    assert any("recorded at commit (edited after commit)" in p for p in problems)
    with pytest.raises(StoreError, match="demo@v1 is damaged"):
        store.load(ref)


def test_a_claimed_number_without_a_manifest_is_not_a_version(bucket):
    import s3fs

    store = Store(f"s3://{bucket}")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    # a writer that claimed v1 and died before its manifest
    fs.pipe_file(f"{bucket}/datasets/demo/v1/.claim", b"{}")
    fs.pipe_file(f"{bucket}/datasets/demo/v1/data.parquet", b"half")
    assert store.versions("demo") == [] and store.list() == []
    ref = store.commit("demo", table(), licence=LICENCE)
    assert str(ref) == "demo@v2" and store.resolve("demo") == ref  # v1 is never reused
    assert store.gc(grace_s=3600) == []  # too recent to be sure the writer is gone
    removed = store.gc(grace_s=0)
    assert [path for path, _ in removed] == [f"s3://{bucket}/datasets/demo/v1"]
    assert not fs.exists(f"{bucket}/datasets/demo/v1/data.parquet")
    assert store.verify(ref).ok


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pyarrow as pa
    from stillroom.storage import Licence, Store

    root, go, who = sys.argv[1], sys.argv[2], sys.argv[3]
    while not os.path.exists(go):
        time.sleep(0.005)
    store = Store(root)
    for n in range(4):
        table = pa.table({"id": [f"{who}-{n}-{i}" for i in range(100)], "text": ["x"] * 100})
        print(store.commit("shared", table, licence=Licence("MIT"), message=f"{who} {n}"))
    """
)


@pytest.mark.timeout(240)
def test_two_processes_committing_to_one_object_store(bucket, tmp_path):
    root, go = f"s3://{bucket}/shared", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, root, str(go), who],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for who in ("a", "b")
    ]
    time.sleep(1.0)
    go.touch()
    outputs = [w.communicate(timeout=200) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in outputs]
    refs = [line for out, _ in outputs for line in out.split()]
    assert len(set(refs)) == 8
    store = Store(root)
    assert store.versions("shared") == [f"v{n}" for n in range(1, 9)]
    for version in store.versions("shared"):
        ref = store.resolve(f"shared@{version}")
        assert store.verify(ref).ok
        who, n = store.manifest(ref)["message"].split()
        assert store.load(ref).column("id")[0].as_py() == f"{who}-{n}-0"
