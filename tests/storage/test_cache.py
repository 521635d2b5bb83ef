import multiprocessing
import os
import socket
from pathlib import Path

import pytest

from stillroom.storage import ResponseCache, StoreError, request_key


def test_key_is_canonical():
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})
    assert request_key({"a": 1}) != request_key({"a": 2})


def test_put_get_and_totals(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.get({"q": 1}) is None
    cache.put({"q": 1}, {"answer": "x"}, input_tokens=10, output_tokens=2, cost_usd=0.5)
    cache.put({"q": 2}, {"answer": "y"}, input_tokens=5, output_tokens=1, cost_usd=0.25)
    assert cache.get({"q": 1}) == {"answer": "x"}
    assert cache.totals() == {
        "entries": 2,
        "input_tokens": 15,
        "output_tokens": 3,
        "cost_usd": 0.75,
    }
    cache.close()


def _write_then_die(path: str) -> None:
    cache = ResponseCache(path)
    cache.put({"q": "paid"}, {"answer": "kept"}, cost_usd=1.0)
    import os

    os._exit(1)  # no close, no cleanup: like a kill right after the answer arrived


def test_an_answer_survives_a_crash_right_after_it_was_stored(tmp_path):
    path = str(tmp_path / "c.sqlite")
    process = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(path,))
    process.start()
    process.join(30)
    assert ResponseCache(path).get({"q": "paid"}) == {"answer": "kept"}


def test_paid_answers_are_in_the_spend_ledger_by_tag_and_model(tmp_path):
    a = ResponseCache(tmp_path / "c.sqlite", tag="intents")
    a.put(
        {"base_url": "u", "body": {"model": "m1", "q": 1}},
        {},
        input_tokens=100,
        output_tokens=5,
        cost_usd=0.01,
    )
    a.put(
        {"base_url": "u", "body": {"model": "m1", "q": 2}},
        {},
        input_tokens=50,
        output_tokens=5,
        cost_usd=0.02,
    )
    a.put(
        {"provider": "zero-shot", "model": "e"}, {"probs": [1.0]}
    )  # local and free: not a paid call
    b = ResponseCache(tmp_path / "c.sqlite", tag="spam")
    b.put({"body": {"model": "m2"}}, {}, input_tokens=1, output_tokens=1, cost_usd=0.5)
    rows = a.spend()
    assert [(r["tag"], r["model"], r["calls"], r["input_tokens"]) for r in rows] == [
        ("intents", "m1", 2, 150),
        ("spam", "m2", 1, 1),
    ]
    assert a.spent("intents") == pytest.approx(0.03) and a.spent("spam") == pytest.approx(0.5)
    assert a.spent("other") == 0.0


def test_a_damaged_cache_file_is_named_and_left_as_it_is(tmp_path):
    path = tmp_path / "cache.sqlite"
    junk = os.urandom(8192)
    path.write_bytes(junk)
    with pytest.raises(StoreError) as exc:
        ResponseCache(path)
    assert str(exc.value) == (
        f"cache {path} is damaged (file is not a database): move it aside, e.g. mv {path} "
        f"{path}.damaged, and run again; its answers would be paid again"
    )
    assert path.read_bytes() == junk and os.listdir(tmp_path) == ["cache.sqlite"]


def test_a_cache_damaged_while_open_raises_a_store_error(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    cache.put({"q": 1}, {"answer": "x"}, cost_usd=0.5)
    cache.close()
    data = bytearray(path.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # the header survives, the pages do not
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"cache {path} is damaged .*mv {path} {path}.damaged"):
        ResponseCache(path).get({"q": 1})


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_cache_deleted_or_replaced_while_labeling_stops_the_run(tmp_path, how):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path, tag="t")
    cache.put({"q": 1}, {"answer": "x"}, input_tokens=3, output_tokens=1, cost_usd=0.5)
    path.unlink()
    if how == "replaced":
        path.write_bytes(b"")
    with pytest.raises(StoreError) as exc:
        cache.put({"q": 2}, {"answer": "y"}, input_tokens=3, output_tokens=1, cost_usd=0.5)
    message = str(exc.value)
    assert message.startswith(f"cache file {path} was deleted or replaced while labeling: ")
    copy = Path(message.split("copied to ")[1].split(":")[0])
    assert copy.parent == tmp_path and copy.name.startswith("cache.sqlite.rescued-")
    with pytest.raises(StoreError, match="was deleted or replaced"):  # and every put after it
        cache.put({"q": 3}, {"answer": "z"})
    rescued = ResponseCache(copy)
    assert rescued.get({"q": 1}) == {"answer": "x"} and rescued.get({"q": 2}) is None
    assert rescued.spent("t") == pytest.approx(0.5)
    if how == "replaced":
        assert path.read_bytes() == b""


def test_a_cache_whose_folder_is_a_file_is_named(tmp_path):
    (tmp_path / "store").write_text("x")
    with pytest.raises(StoreError, match=f"^cannot create {tmp_path / 'store'}: "):
        ResponseCache(tmp_path / "store" / "cache.sqlite")


def test_outputs_sums_one_request_shape_of_the_ledger(tmp_path):
    def body(model, max_tokens, q):
        return {"base_url": "u", "body": {"model": model, "max_tokens": max_tokens, "q": q}}

    gen = ResponseCache(tmp_path / "c.sqlite", tag="gen")
    gen.put(body("m1", 24, 1), {}, input_tokens=9, output_tokens=10, cost_usd=0.1)
    gen.put(body("m1", 24, 2), {}, input_tokens=9, output_tokens=4, cost_usd=0.1)
    gen.put(body("m1", 24, 3), {}, input_tokens=9, output_tokens=0, cost_usd=0.1)  # empty: paid
    gen.put(body("m1", 64, 4), {}, input_tokens=9, output_tokens=60, cost_usd=0.1)
    gen.put(body("m2", 24, 5), {}, input_tokens=9, output_tokens=20, cost_usd=0.1)
    gen.put({"model": "m1", "max_tokens": 24, "q": 6}, {}, input_tokens=1, output_tokens=7)
    gen.put(body("m1", 24, 7), {})  # free (a local teacher): not in the ledger
    other = ResponseCache(tmp_path / "c.sqlite", tag="other")
    other.put(body("m1", 24, 8), {}, input_tokens=9, output_tokens=50, cost_usd=0.1)

    assert gen.outputs("gen", "m1", 24) == (4, 21)
    assert gen.outputs("gen", "m1", 64) == (1, 60)
    assert gen.outputs("gen", "m1") == (5, 81)
    assert gen.outputs("gen", "m2", 24) == (1, 20)
    assert gen.outputs("other", "m1", 24) == (1, 50)
    assert gen.outputs("gen", "m3", 24) == gen.outputs("none", "m1") == (0, 0)
    gen.close()
    other.close()


def test_export_then_import_adds_answers_without_overwriting_or_paying(tmp_path):
    import gzip
    import json

    source = ResponseCache(tmp_path / "a.sqlite", tag="team")
    source.put({"q": 1}, {"answer": "x"}, input_tokens=10, output_tokens=2, cost_usd=0.5)
    source.put({"q": 2}, {"answer": "y"}, input_tokens=5, output_tokens=1, cost_usd=0.25)
    for name in ("answers.jsonl", "answers.jsonl.gz"):
        assert source.export(tmp_path / name) == 2
    with gzip.open(tmp_path / "answers.jsonl.gz", "rt") as f:
        lines = f.read().splitlines()
    assert lines == (tmp_path / "answers.jsonl").read_text().splitlines()

    target = ResponseCache(tmp_path / "b.sqlite")
    target.put({"q": 2}, {"answer": "mine"})  # already answered here: kept as it is
    tampered = json.loads(lines[0]) | {"response": {"answer": "forged"}}
    tampered["request"] = {"q": 3}  # the key no longer matches the request
    (tmp_path / "mixed.jsonl").write_text(
        "\n".join([*lines, json.dumps(tampered), "not json", '{"key": "k"}']) + "\n"
    )
    assert target.import_answers(tmp_path / "mixed.jsonl") == {
        "added": 1,
        "present": 1,
        "rejected": 3,
    }
    assert target.get({"q": 1}) == {"answer": "x"} and target.get({"q": 2}) == {"answer": "mine"}
    assert target.get({"q": 3}) is None
    assert target.spend() == []  # imported answers were paid elsewhere: no spend here
    assert target.totals()["entries"] == 2
    # importing twice changes nothing
    assert target.import_answers(tmp_path / "answers.jsonl.gz") == {
        "added": 0,
        "present": 2,
        "rejected": 0,
    }
    with pytest.raises(StoreError, match="no such file to import"):
        target.import_answers(tmp_path / "none.jsonl")


def test_claims_let_one_asker_send_a_request_and_the_others_wait_for_its_answer(tmp_path):
    from stillroom.storage import ResponseCache

    request = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    a = ResponseCache(tmp_path / "cache.sqlite", claims=True)
    b = ResponseCache(tmp_path / "cache.sqlite", claims=True)
    assert a.claim(request) is True
    assert a.claim(request) is True  # its own claim again
    assert b.claim(request) is False  # held by a
    a.release(request)
    assert b.claim(request) is True  # released without an answer: b may send it
    b.put(request, {"answer": 1}, input_tokens=3, cost_usd=0.01)
    assert a.claim(request) is False and a.get(request) == {"answer": 1}  # answered: no sending
    other = {"model": "m", "messages": [{"role": "user", "content": "bye"}]}
    assert a.claim(other) is True
    assert b.claim(other, stale_s=0.0) is True  # a's claim is older than stale_s: a dead asker's
    a.close()
    b.close()


def test_a_claim_of_a_process_that_has_exited_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    from stillroom.storage import ResponseCache

    request = {"model": "m", "messages": [{"role": "user", "content": "orphan"}]}
    code = (
        "import sys; from stillroom.storage import ResponseCache; "
        "c = ResponseCache(sys.argv[1], claims=True); "
        "assert c.claim({'model': 'm', 'messages': [{'role': 'user', 'content': 'orphan'}]})"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.sqlite")], check=True, timeout=60)
    cache = ResponseCache(tmp_path / "c.sqlite", claims=True)
    assert cache.claim(request) is True  # its owner is gone: no waiting for stale_s
    cache.close()


def test_an_answer_with_a_lone_surrogate_is_stored_and_read_back_as_received(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    answer = {"choices": [{"message": {"content": "pin\ud800"}}], "usage": {"x": float("nan")}}
    cache.put({"q": "\udc00"}, answer, cost_usd=0.1)
    back = cache.get({"q": "\udc00"})
    assert back["choices"] == answer["choices"] and back["usage"]["x"] != back["usage"]["x"]
    assert cache.export(tmp_path / "out.jsonl") == 1
    other = ResponseCache(tmp_path / "d.sqlite")
    assert other.import_answers(tmp_path / "out.jsonl")["added"] == 1
    assert other.get({"q": "\udc00"})["choices"] == answer["choices"]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("input_tokens", 1e999, "input_tokens is inf"),
        ("output_tokens", -3, "output_tokens is -3"),
        ("input_tokens", 10**19, "input_tokens is 10000000000000000000"),
        ("cost_usd", float("nan"), "cost_usd is nan"),
    ],
)
def test_a_line_with_numbers_no_ledger_holds_stops_the_import_naming_it(
    tmp_path, field, value, problem
):
    import json

    source = ResponseCache(tmp_path / "a.sqlite")
    source.put({"q": 1}, {"answer": "x"})
    source.put({"q": 2}, {"answer": "y"})
    source.export(tmp_path / "a.jsonl")
    first, second = (tmp_path / "a.jsonl").read_text().splitlines()
    crafted = json.loads(second) | {field: value}
    (tmp_path / "b.jsonl").write_text(first + "\n" + json.dumps(crafted) + "\n")
    target = ResponseCache(tmp_path / "b.sqlite")
    with pytest.raises(StoreError, match=f"b.jsonl line 2: {problem}.*nothing was imported"):
        target.import_answers(tmp_path / "b.jsonl")
    assert len(target) == 0


def test_forget_drops_an_answer_only_while_it_is_the_one_given(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite", tag="t")
    cache.put({"q": 1}, {"a": 1}, cost_usd=0.5)
    assert not cache.forget({"q": 1}, {"a": 2})
    assert cache.forget({"q": 1}, {"a": 1}) and cache.get({"q": 1}) is None
    assert cache.spent("t") == 0.5  # it was paid: the ledger keeps it


def test_holds_share_one_budget_across_cache_objects_and_end_with_their_process(tmp_path):
    one = ResponseCache(tmp_path / "c.sqlite", tag="t")
    two = ResponseCache(tmp_path / "c.sqlite", tag="t")
    other_tag = ResponseCache(tmp_path / "c.sqlite", tag="u")
    one.put({"q": 1}, {"a": 1}, cost_usd=0.25)
    held = one.hold(0.5, limit_usd=1.0)
    assert held is not None and two.committed() == pytest.approx(0.75)
    assert two.hold(0.5, limit_usd=1.0) is None  # 0.25 spent + 0.5 held + 0.5 > 1
    assert other_tag.hold(0.5, limit_usd=1.0) is not None  # another config's budget
    one.unhold(held)
    assert two.hold(0.5, limit_usd=1.0) is not None
    two.book({"q": 2}, 0.2)
    assert one.spent("t") == pytest.approx(0.45)
    # a hold whose process has exited is dropped
    with two._using() as db:
        dead = f"{socket.gethostname()}:1999999:0"
        db.execute("UPDATE holds SET owner = ? WHERE tag = 't'", (dead,))
    assert one.hold(0.5, limit_usd=1.0) is not None


def test_a_cost_booked_without_an_answer_is_spend_but_no_answer_length(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite", tag="t")
    request = {"body": {"model": "m", "max_tokens": 8}}
    cache.book(request, 0.5)  # a first try timed out
    cache.put(request, {"a": 1}, input_tokens=10, output_tokens=6, cost_usd=0.1)
    assert cache.spent("t") == pytest.approx(0.6)
    assert cache.outputs("t", "m") == (1, 6)


def test_a_hold_reads_the_tags_spend_at_once_however_long_the_ledger(tmp_path):
    import sqlite3
    import time
    from contextlib import closing

    path = tmp_path / "c.sqlite"
    ResponseCache(path, tag="t").close()
    # a cache from before the running totals: a long ledger, and no table or trigger keeping them
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE IF EXISTS spent")
        db.execute("DROP TRIGGER IF EXISTS ledger_spent")
        rows = ((0.0, "t" if i % 2 else None, "m", 1, 1, 1e-6, "k") for i in range(400_000))
        db.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    cache = ResponseCache(path, tag="t")
    assert cache.committed() == pytest.approx(0.2)  # what the ledger already held
    cache.put({"q": 1}, {"a": 1}, cost_usd=0.25)
    untagged = ResponseCache(path)
    untagged.put({"q": 2}, {"a": 2}, cost_usd=0.5)
    assert cache.committed() == pytest.approx(0.45) and untagged.committed() == pytest.approx(0.7)
    start = time.perf_counter()
    for _ in range(50):
        cache.unhold(cache.hold(0.01, limit_usd=1.0))
    assert time.perf_counter() - start < 0.5  # summing 400,000 rows each time took ~1.5 s
    assert cache.hold(0.6, limit_usd=1.0) is None and cache.hold(0.5, limit_usd=1.0) is not None
