import json
import threading

import pyarrow as pa

from stillroom.storage import Licence, Store

LICENCE = Licence("CC0-1.0")


def table(n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)]})


def test_a_torn_last_line_spoils_only_itself(tmp_path):
    store = Store(tmp_path)
    first = store.commit("demo", table(1), licence=LICENCE)
    with (tmp_path / "catalog.jsonl").open("a") as f:
        f.write('{"name": "demo", "vers')  # a crash in the middle of a line
    second = store.commit("demo", table(2), licence=LICENCE)
    assert store.verify(first).ok and store.verify(second).ok
    assert not store.verify(second).notes
    lines = (tmp_path / "catalog.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["version"] == "v2" and len(lines) == 3


def test_concurrent_commits_each_get_one_whole_line(tmp_path):
    store = Store(tmp_path)
    threads = [
        threading.Thread(
            target=store.commit, args=("demo", table(i + 1)), kwargs={"licence": LICENCE}
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [json.loads(line) for line in (tmp_path / "catalog.jsonl").read_text().splitlines()]
    assert sorted(r["version"] for r in rows) == sorted(f"v{i}" for i in range(1, 9))
    assert all(store.verify(store.resolve(f"demo@{r['version']}")).ok for r in rows)


def test_a_catalogued_number_is_not_given_out_again(tmp_path):
    store = Store(tmp_path)
    store.commit("demo", table(1), licence=LICENCE)
    (tmp_path / "elsewhere").mkdir()
    store.path(store.resolve("demo@v1")).rename(tmp_path / "elsewhere" / "v1")
    assert store.commit("demo", table(2), licence=LICENCE).version == "v2"
