import multiprocessing

import pytest

from stillroom.storage import ResponseCache, request_key


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
