import json
import math
import time

import httpx
import pytest

from stillroom.labelers import ClassifyTask, LabelerError, OpenAITeacher, Price, match_label
from stillroom.storage import ResponseCache
from tests.conftest import SENTINEL_KEY
from tests.openai_server import FakeOpenAI, FakeTeacher

LABELS = ("card_arrival", "card_linking", "exchange_rate", "pin_blocked", "top_up_failed")
TASK = ClassifyTask(LABELS, "Classify the banking message.")
TEXTS = [(f"r{i}", f"message number {i} about my account") for i in range(40)]


def teacher(url: str, task_: ClassifyTask = TASK, **kwargs) -> OpenAITeacher:
    kwargs.setdefault("backoff_s", 0.01)
    kwargs.setdefault("timeout_s", 2.0)
    return OpenAITeacher(task_, model="fake", base_url=url, api_key=SENTINEL_KEY, **kwargs)


def test_distribution_matches_the_servers_and_records_usage():
    distinct = ClassifyTask(("arrival", "linking", "exchange", "pin", "topup"), "Classify.")
    server = FakeOpenAI(FakeTeacher(accuracy=1.0), outside_mass=0.1)
    with server as url:
        t = OpenAITeacher(
            distinct, model="fake", base_url=url, api_key=SENTINEL_KEY, price=Price(1.0, 2.0)
        )
        answers = t.label(TEXTS[:5])
        for record_id, text in TEXTS[:5]:
            truth = server.teacher.distribution(text, list(distinct.labels))
            answer = next(a for a in answers if a.id == record_id)
            assert answer.label == max(truth, key=truth.get)
            assert answer.coverage == pytest.approx(0.9)
            for label in distinct.labels:
                assert answer.probs[distinct.labels.index(label)] == pytest.approx(
                    truth.get(label, 0.0)
                )
            assert answer.usage.input_tokens > 0
            assert answer.usage.cost_usd == pytest.approx(
                (answer.usage.input_tokens + 2 * answer.usage.output_tokens) / 1e6
            )
    assert all(h == f"Bearer {SENTINEL_KEY}" for h in server.auth_headers)


def test_labels_sharing_a_first_token_keep_their_joint_mass():
    server = FakeOpenAI(FakeTeacher(accuracy=1.0))
    with server as url:
        answers = teacher(url).label(TEXTS[:10])
    for (_, text), answer in zip(TEXTS[:10], answers, strict=True):
        truth = server.teacher.distribution(text, list(LABELS))
        assert answer.probs[LABELS.index(answer.label)] == pytest.approx(truth[answer.label])
        card = sum(p for label, p in truth.items() if label.startswith("card"))
        assert answer.probs[0] + answer.probs[1] == pytest.approx(card)
        assert sum(answer.probs) == pytest.approx(1.0)


def test_leading_space_tokens_and_no_logprobs():
    with FakeOpenAI(leading_space=True) as url:
        spaced = teacher(url).label(TEXTS[:3])
    with FakeOpenAI(logprobs=False) as url:
        hard = teacher(url).label(TEXTS[:3])
    assert all(a.ok and a.coverage == pytest.approx(1.0) for a in spaced)
    for a in hard:
        assert a.ok and a.coverage is None
        assert sorted(a.probs) == [0.0] * (len(LABELS) - 1) + [1.0]


def test_every_fault_ends_labeled_or_failed_with_reason_and_nothing_is_paid_twice(tmp_path):
    faults = dict.fromkeys(("429", "500", "503", "timeout", "malformed", "drop", "off_label"), 0.2)
    server = FakeOpenAI(faults=faults, retry_after="0.05", hang_s=1.0, seed=3)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    with server as url:
        t = teacher(url, cache=cache, timeout_s=0.3, max_retries=12, concurrency=8)
        answers = t.label(TEXTS)
        assert len(answers) == len(TEXTS)
        for a in answers:
            assert a.ok or a.error
            if a.error == "off-label answer":
                assert a.raw and a.label is None
        assert {k for k, n in server.faults_sent.items() if n} >= {
            "429",
            "500",
            "503",
            "malformed",
            "drop",
        }
        assert max(server.billed.values()) == 1
        assert t.stats.teacher_calls == sum(server.billed.values())
        assert t.stats.retries > 0
        answered = [a for a in answers if a.ok or a.raw]
        again = teacher(url, cache=cache)
        rerun = again.label(TEXTS)
        # what was paid for comes from the cache: no prompt is billed twice, same answers
        assert max(server.billed.values()) == 1
        assert again.stats.cache_hits >= len(answered)
        by_id = {a.id: a for a in rerun}
        assert all(by_id[a.id].label == a.label and by_id[a.id].probs == a.probs for a in answered)
    cache.close()
    assert SENTINEL_KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_an_off_label_answer_is_asked_again_then_kept_raw():
    server = FakeOpenAI(faults={"off_label": 1.0})
    with server as url:
        (answer,) = teacher(url, answer_retries=2).label(TEXTS[:1])
    assert answer.error == "off-label answer" and "not sure" in answer.raw
    assert sum(server.billed.values()) == 3 and answer.attempts == 3
    assert answer.usage.input_tokens > 0  # all three asks are accounted for


def test_budget_stops_before_it_is_exceeded(tmp_path):
    server = FakeOpenAI()
    price = Price(1000.0, 1000.0)  # about 0.1 USD a request here
    with server as url:
        t = teacher(
            url, price=price, budget=1.0, concurrency=4, cache=ResponseCache(tmp_path / "c")
        )
        answers = t.label(TEXTS)
    assert t.budget_exhausted and 0 < t.stats.teacher_calls < len(TEXTS)
    assert t.stats.cost_usd <= 1.0
    assert {a.error for a in answers if not a.ok} == {"budget exhausted"}
    assert sum(server.billed.values()) == t.stats.teacher_calls


def test_a_429_pauses_the_whole_client():
    server = FakeOpenAI(faults={"429": 0.5}, retry_after="1.0", seed=1)
    with server as url:
        t = teacher(url, concurrency=8)
        answers = t.label(TEXTS[:16])
    assert all(a.ok for a in answers) and t.limiter.pauses > 0
    # after the first 429, no request started within the pause it announced (the first 0.2 s
    # leave room for requests that were already on their way)
    first = server.first_429_at
    assert first is not None
    assert not [s for s in server.starts if first + 0.2 < s < first + 0.9]


def test_tpm_cap_limits_tokens_per_minute():
    server = FakeOpenAI()
    with server as url:
        t = teacher(url, tpm=60 * 400, concurrency=16)  # 400 tokens a second
        start = time.perf_counter()
        t.label(TEXTS[:8])
        elapsed = time.perf_counter() - start
    used = t.stats.input_tokens + t.stats.output_tokens
    assert elapsed >= (used - 400) / 400 * 0.8


def test_retry_after_is_honoured():
    server = FakeOpenAI(faults={"429": 1.0}, retry_after="0.3")
    with server as url:
        answers = teacher(url, max_retries=2).label(TEXTS[:1])
    assert answers[0].error == "HTTP 429" and answers[0].attempts == 3
    gaps = [b - a for a, b in zip(server.starts, server.starts[1:], strict=False)]
    assert len(gaps) == 2 and min(gaps) >= 0.28


def test_rpm_cap_spaces_requests():
    server = FakeOpenAI()
    with server as url:
        teacher(url, rpm=600, concurrency=16).label(TEXTS[:6])
    span = server.starts[-1] - server.starts[0]
    assert span >= 5 * 0.1 - 0.02  # 600 rpm = one start every 0.1 s


def test_a_rejected_key_stops_the_run_without_leaking_it():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"bad key {SENTINEL_KEY}"}})

    t = OpenAITeacher(
        TASK,
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key=SENTINEL_KEY,
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(LabelerError) as info:
        t.label(TEXTS[:2])
    assert "401" in str(info.value) and SENTINEL_KEY not in str(info.value)


@pytest.mark.parametrize("url", ["not a url", "ftp://host/v1", "http://"])
def test_invalid_base_url(url):
    with pytest.raises(LabelerError, match="invalid teacher base_url"):
        OpenAITeacher(TASK, model="m", base_url=url)


def test_timeouts_become_failures_with_reason():
    server = FakeOpenAI(faults={"timeout": 1.0}, hang_s=1.0)
    with server as url:
        start = time.perf_counter()
        answers = teacher(url, timeout_s=0.2, max_retries=1).label(TEXTS[:2])
    assert [a.error for a in answers] == ["timeout", "timeout"]
    assert time.perf_counter() - start < 3


def test_structured_answers_give_the_same_distribution_as_text():
    server = FakeOpenAI(FakeTeacher(accuracy=1.0))
    with server as url:
        text = teacher(url).label(TEXTS[:6])
        structured = teacher(url, response_format="json_schema").label(TEXTS[:6])
    assert all(a.raw.startswith('{"label"') for a in structured)
    for a, b in zip(text, structured, strict=True):
        assert b.label == a.label
        assert b.probs == pytest.approx(a.probs) and b.coverage == pytest.approx(a.coverage)


def test_auto_falls_back_to_text_where_structured_outputs_are_refused():
    server = FakeOpenAI(structured=False)
    with server as url:
        t = teacher(url, response_format="auto")
        answers = t.label(TEXTS[:4])
        assert all(a.ok for a in answers) and not t._json
        with pytest.raises(LabelerError, match="does not support response_format"):
            teacher(url, response_format="json_schema").label(TEXTS[:1])


def test_multi_label_teacher_combines_yes_no_answers():
    from stillroom.labelers import MultiLabelTeacher, binary_task

    question = binary_task(TASK, "pin_blocked")
    assert question.labels == ("no", "yes") and '"pin_blocked"' in question.instructions
    server = FakeOpenAI(faults={"off_label": 0.2}, seed=2)
    with server as url:
        multi = MultiLabelTeacher(TASK, lambda task: teacher(url, task_=task, answer_retries=0))
        answers = multi.label(TEXTS[:10])
    assert multi.stats.teacher_calls == len(server.billed) == 10 * len(LABELS)
    for a in answers:
        if a.ok:
            assert len(a.probs) == len(LABELS)
            assert set(filter(None, a.label.split("|"))) == {
                lab for lab, p in zip(LABELS, a.probs, strict=True) if p >= 0.5
            }
        else:
            assert a.error.split(": ")[1] == "off-label answer" and a.raw
    assert any(not a.ok for a in answers) and any(a.ok for a in answers)


def test_timeouts_count_against_the_budget_at_their_worst_case():
    from stillroom.labelers import BUDGET_EXHAUSTED, Budget

    sent = []

    def hang(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadTimeout("no answer", request=request)

    price = Price(1000.0, 1000.0)  # about 0.1 USD of worst case per request here
    budget = Budget(0.5)
    t = teacher(
        "http://127.0.0.1:9/v1",
        price=price,
        budget=budget,
        max_retries=3,
        concurrency=1,
        transport=httpx.MockTransport(hang),
    )
    answers = t.label(TEXTS[:10])
    # each abandoned request may be billed: the budget counts it, so far fewer than
    # 10 records x 4 tries are sent, and what is counted never passes the limit by more than one
    per_request = price.cost(500, 0)
    assert len(sent) < 10
    assert budget.exhausted and t.budget_exhausted
    assert budget.spent_usd <= 0.5 + 2 * per_request + 0.05
    assert {a.error for a in answers} <= {"timeout", BUDGET_EXHAUSTED}
    assert sum(a.error == BUDGET_EXHAUSTED for a in answers) >= 5


def test_a_record_over_the_size_limit_fails_without_being_sent():
    server = FakeOpenAI(FakeTeacher(accuracy=1.0))
    with server as url:
        t = teacher(url, max_input_chars=1_000)
        answers = t.label([("small", "where is my card"), ("huge", "x" * 5_000)])
    assert answers[0].ok
    assert (
        answers[1].error == "too long: 5,000 characters (limit 1,000)" and answers[1].label is None
    )
    assert server.requests == 1


def test_query_and_extra_headers_are_sent_and_the_query_is_part_of_the_cache_key(tmp_path):
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {
            "choices": [{"message": {"content": "pin_blocked"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        }
        return httpx.Response(200, json=body)

    def make(query):
        return teacher(
            "https://gateway.example/openai/deployments/d",
            query=query,
            headers={"api-key": "from-env"},
            transport=httpx.MockTransport(answer),
            cache=ResponseCache(tmp_path / "c.sqlite"),
        )

    first = make({"api-version": "2024-06-01"})
    assert first.label(TEXTS[:1])[0].label == "pin_blocked"
    request = seen[0]
    assert request.url.params["api-version"] == "2024-06-01"
    assert request.url.path == "/openai/deployments/d/chat/completions"
    assert request.headers["api-key"] == "from-env"
    again = make({"api-version": "2024-06-01"}).label(TEXTS[:1])
    assert again[0].cached and len(seen) == 1  # same query: from the cache
    make({"api-version": "2025-01-01"}).label(TEXTS[:1])
    assert len(seen) == 2  # another API version may answer otherwise: asked again
    assert "from-env" not in (tmp_path / "c.sqlite").read_bytes().decode(errors="replace")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:SECRET@127.0.0.1:8000/v1", "must not hold credentials"),
        ("http://127.0.0.1:8000/v1?api-version=1&key=SECRET", "must not have a query string"),
        ("localhost:8000/v1", "expected http(s)://host[:port]/path"),
    ],
)
def test_base_urls_that_would_leak_or_break_are_refused(url, message):
    with pytest.raises(LabelerError, match=r"teacher base_url") as caught:
        OpenAITeacher(TASK, model="m", base_url=url)
    assert message in str(caught.value) and "SECRET" not in str(caught.value)


# --- the transport: secrets, deadlines, sizes, proxies, odd answers --------------------------

HEADER_SECRET = "hdr-SECRET-5e1b"


@pytest.mark.parametrize("bad", ["\xa0", "\r", "\n", " ", "é"])
def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(bad):
    with pytest.raises(LabelerError, match="printable ASCII") as caught:
        OpenAITeacher(TASK, model="m", api_key=SENTINEL_KEY + bad)
    assert "api_key" in str(caught.value) and SENTINEL_KEY not in str(caught.value)
    with pytest.raises(LabelerError, match="header 'api-key'") as caught:
        OpenAITeacher(TASK, model="m", headers={"api-key": HEADER_SECRET + bad})
    assert HEADER_SECRET not in str(caught.value)


@pytest.mark.parametrize("status", [400, 402, 422])
def test_an_error_body_that_echoes_the_secrets_is_kept_redacted(status):
    server = FakeOpenAI(faults={"echo": 1.0}, echo_status=status)
    with server as url:
        t = teacher(url, headers={"api-key": HEADER_SECRET}, max_retries=0)
        (answer,) = t.label(TEXTS[:1])
    assert server.auth_headers == [f"Bearer {SENTINEL_KEY}"]  # it was sent, and echoed
    assert answer.error.startswith(f"HTTP {status}: ") and "[redacted]" in answer.error
    assert SENTINEL_KEY not in answer.error and HEADER_SECRET not in answer.error


def test_a_200_error_object_keeps_the_providers_message_redacted():
    with FakeOpenAI(faults={"error_object": 1.0}) as url:
        (answer,) = teacher(url, max_retries=0).label(TEXTS[:1])
    assert "The model is overloaded" in answer.error and "server_error" in answer.error
    assert SENTINEL_KEY not in answer.error and answer.raw is None


def test_a_redirect_is_not_followed_and_says_so():
    server = FakeOpenAI(faults={"redirect": 1.0})
    with server as url, pytest.raises(LabelerError, match="redirect, not followed"):
        teacher(url).label(TEXTS[:1])
    assert server.requests == 1  # the key went nowhere else


def test_server_advertised_waits_are_capped_with_one_warning(caplog):
    with FakeOpenAI(faults={"exhausted": 1.0}, reset="1e9") as url:
        t = teacher(url, concurrency=1, max_wait_s=0.2)
        start = time.perf_counter()
        answers = t.label(TEXTS[:3])
    assert all(a.ok for a in answers) and t.limiter.pauses >= 1
    assert time.perf_counter() - start < 5
    warned = [r.getMessage() for r in caplog.records if "x-ratelimit-reset" in r.getMessage()]
    assert len(warned) == 1 and "0.2 s" in warned[0]
    caplog.clear()
    with FakeOpenAI(faults={"429": 1.0}, retry_after="1e9") as url:
        (answer,) = teacher(url, max_retries=1, max_wait_s=0.2).label(TEXTS[:1])
    assert answer.error == "HTTP 429"
    assert [r for r in caplog.records if "Retry-After" in r.getMessage()]


def test_the_timeout_is_a_deadline_for_the_whole_answer():
    with FakeOpenAI(faults={"trickle": 1.0}, trickle_s=0.02) as url:
        start = time.perf_counter()
        (answer,) = teacher(url, timeout_s=0.5, max_retries=0).label(TEXTS[:1])
    assert answer.error == "timeout" and time.perf_counter() - start < 2


@pytest.mark.parametrize("fault", ["huge", "gzip_bomb"])
def test_an_answer_over_the_size_cap_is_refused_and_not_cached(fault, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    server = FakeOpenAI(faults={fault: 1.0}, huge_bytes=20_000_000)
    with server as url:
        t = teacher(url, cache=cache, max_response_bytes=100_000, timeout_s=10)
        (answer,) = t.label(TEXTS[:1])
    assert answer.error == "response over max_response_bytes (100,000 bytes)"
    assert server.requests == 1  # the same request would bring the same answer: not asked again
    cache.close()
    assert (tmp_path / "cache.sqlite").stat().st_size < 1_000_000


def _proxy(mode: str = "forward"):
    """A CONNECT-less HTTP proxy on 127.0.0.1: it forwards absolute-form requests (or answers
    407 echoing the credentials it got) and records what it saw."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    seen: list[tuple[str, str]] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, self.headers.get("Proxy-Authorization", "")))
            if mode == "407":
                echo = json.dumps(dict(self.headers)).encode()
                self.send_response(407)
                self.send_header("Content-Length", str(len(echo)))
                self.end_headers()
                self.wfile.write(echo)
                return
            target = urlsplit(self.path)
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy")}
            upstream.request("POST", self.path, body, headers)
            reply = upstream.getresponse()
            payload = reply.read()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _clear_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
def test_proxy_variables_are_honoured_and_their_credentials_never_shown(monkeypatch, variable):
    import base64

    _clear_proxy_env(monkeypatch)
    proxy, seen = _proxy()
    credentials = f"user:{HEADER_SECRET}"
    monkeypatch.setenv(variable, f"http://{credentials}@127.0.0.1:{proxy.server_address[1]}")
    try:
        with FakeOpenAI() as url:
            answers = teacher(url).label(TEXTS[:3])
            assert all(a.ok for a in answers) and len(seen) == 3
            assert all(path == f"{url}/chat/completions" for path, _ in seen)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            assert all(a.ok for a in teacher(url).label(TEXTS[3:5])) and len(seen) == 3
    finally:
        proxy.shutdown()
    monkeypatch.delenv("NO_PROXY")
    refusing, seen = _proxy("407")
    monkeypatch.setenv(variable, f"http://{credentials}@127.0.0.1:{refusing.server_address[1]}")
    try:
        (answer,) = teacher("http://127.0.0.1:9/v1", max_retries=0).label(TEXTS[:1])
    finally:
        refusing.shutdown()
    encoded = base64.b64encode(credentials.encode()).decode()
    assert seen and encoded in seen[0][1]  # the proxy got them, and echoed them back
    assert answer.error.startswith("HTTP 407") and "[redacted]" in answer.error
    assert HEADER_SECRET not in answer.error and encoded not in answer.error


def test_a_proxy_url_that_cannot_work_is_refused_without_its_credentials(monkeypatch):
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"ftp://user:{HEADER_SECRET}@127.0.0.1:1")
    with pytest.raises(LabelerError, match="HTTP_PROXY") as caught:
        teacher("http://127.0.0.1:9/v1").label(TEXTS[:1])
    assert HEADER_SECRET not in str(caught.value)


# --- the budget is a hard cap under any answer; hostile answers are failures, never crashes ---

PRICED = Price(1000.0, 1000.0)  # about 0.1 USD a request here

BAD_USAGE = {
    "negative": {"completion_tokens": -6_000_000},
    "a string": {"prompt_tokens": "12"},
    "10^19": {"prompt_tokens": 10**19},
    "1e300": {"completion_tokens": 1e300},
    "infinite": {"prompt_tokens": float("inf")},
    "NaN": {"completion_tokens": float("nan")},
    "a list": {"prompt_tokens": [1]},
    "a fraction": {"completion_tokens": 2.5},
    "not an object": {"usage": "lots"},
    "above max_tokens": {"completion_tokens": 10_000},
    "above the prompt's bound": {"prompt_tokens": 10_000_000},
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_usage_that_cannot_be_true_is_a_failure_cached_and_booked_at_its_worst_case(case, tmp_path):
    server = FakeOpenAI(hostile=BAD_USAGE[case])
    cache = ResponseCache(tmp_path / "c.sqlite", tag="job")
    with server as url:
        t = teacher(url, cache=cache, price=PRICED)
        answers = t.label(TEXTS[:3])
        assert all(a.error.startswith("malformed answer: usage") for a in answers), answers
        assert all(match_label(a.raw, LABELS) for a in answers)  # what was said is kept
        worst = sum(t.worst_case(t.build_request(text)).cost_usd for _, text in TEXTS[:3])
        assert worst > 0 and cache.spent("job") == pytest.approx(worst)
        assert t.stats.cost_usd == pytest.approx(worst)
        # every paid answer was cached before it was looked at: a re-run pays nothing
        again = teacher(url, cache=cache, price=PRICED).label(TEXTS[:3])
    assert sum(server.billed.values()) == 3 and len(cache) == 3
    assert [a.error for a in again] == [a.error for a in answers] and all(a.cached for a in again)


def test_negative_usage_cannot_lift_the_budget():
    from stillroom.labelers import Budget

    budget = Budget(2.0)  # about 6 requests at their worst case
    with FakeOpenAI(hostile={"completion_tokens": -6_000_000}) as url:
        liar = teacher(url, price=PRICED, budget=budget)
        (lied,) = liar.label(TEXTS[:1])
    assert lied.usage.cost_usd > 0 and budget.spent_usd > 0
    with FakeOpenAI() as url:
        honest = teacher(url, price=PRICED, budget=budget, concurrency=4)
        answers = honest.label(TEXTS[1:])
    paid = sum(a.usage.cost_usd for a in answers)  # the fake server reports usage honestly
    assert honest.budget_exhausted and paid > 0 and lied.usage.cost_usd + paid <= 2.0


def test_the_budget_holds_for_an_unknown_model_billed_a_token_per_character():
    billed = []

    def per_character(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        characters = sum(len(m["content"]) for m in body["messages"])
        billed.append(PRICED.cost(characters, body["max_tokens"]))
        answer = {
            "choices": [{"message": {"content": "pin_blocked"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": characters, "completion_tokens": body["max_tokens"]},
        }
        return httpx.Response(200, json=answer)

    texts = [(f"r{i}", "我的卡还没有到，请问什么时候能收到？" * 20) for i in range(40)]
    t = teacher(
        "http://127.0.0.1:9/v1",
        price=PRICED,
        budget=10.0,  # about 15 such requests
        transport=httpx.MockTransport(per_character),
    )
    t.model = "a-model-tiktoken-does-not-know"
    answers = t.label(texts)
    assert t.budget_exhausted and billed and sum(billed) <= 10.0
    assert all(a.ok for a in answers if a.error != "budget exhausted")


TOOL_CALLS = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
HOSTILE_ANSWERS = {
    "logprob 1000": ({"logprob": 1000}, "logprob"),
    "logprob +5": ({"logprob": 5.0}, "logprob"),
    "logprob NaN": ({"logprob": float("nan")}, "logprob"),
    "logprob Infinity": ({"logprob": float("inf")}, "logprob"),
    "logprob -Infinity": ({"logprob": float("-inf")}, "logprob"),
    "alternative NaN": ({"top_logprob": float("nan")}, "logprob"),
    "logprob null": ({"logprob": None}, "logprob"),
    "logprob a string": ({"logprob": "-0.1"}, "logprob"),
    "token null": ({"token": None}, "token"),
    "logprobs a list": ({"logprobs": [1, 2]}, "logprobs"),
    "content a list": ({"content": ["card", "_arrival"]}, "content"),
    "content an int": ({"content": 7}, "content"),
    "content with a lone surrogate": ({"content": "pin_blocked\ud800"}, "content"),
    "usage a list": ({"usage": [1, 2]}, "usage"),
}


@pytest.mark.parametrize("kind", ["classify", "generate"])
@pytest.mark.parametrize("case", sorted(HOSTILE_ANSWERS))
def test_a_hostile_answer_is_a_failure_with_its_reason_and_never_poisons_the_cache(
    case, kind, tmp_path
):
    from stillroom.labelers import GenerateTask

    fields, named = HOSTILE_ANSWERS[case]
    server = FakeOpenAI(hostile=fields)
    cache = ResponseCache(tmp_path / "c.sqlite")
    task = TASK if kind == "classify" else GenerateTask(max_tokens=16, top_logprobs=3)
    with server as url:
        answers = teacher(url, task, cache=cache).label(TEXTS[:2])
        for a in answers:
            assert a.error.startswith("malformed answer: ") and named in a.error, a.error
            assert a.probs is None and a.label is None and a.raw is not None
            a.raw.encode()  # storable: no lone surrogate
        # parsing the cached answers never raises: a re-run fails the same way, unpaid
        again = teacher(url, task, cache=cache).label(TEXTS[:2])
    assert [a.error for a in again] == [a.error for a in answers]
    assert sum(server.billed.values()) == 2 and len(cache) == 2


def test_a_malformed_cached_answer_is_asked_again_only_when_asked(tmp_path):
    server = FakeOpenAI(FakeTeacher(accuracy=1.0), hostile={"logprob": 1000})
    cache = ResponseCache(tmp_path / "c.sqlite")
    with server as url:
        first = teacher(url, cache=cache).label(TEXTS[:4])
        assert all(a.error.startswith("malformed answer") for a in first)
        server.hostile = {}  # the endpoint is healthy again
        kept = teacher(url, cache=cache).label(TEXTS[:4])
        assert [a.error for a in kept] == [a.error for a in first]
        assert sum(server.billed.values()) == 4
        retried = teacher(url, cache=cache, retry_malformed=True).label(TEXTS[:4])
        assert all(a.ok and not a.cached for a in retried) and sum(server.billed.values()) == 8
        # the good answers replaced the bad ones: nothing more is asked
        after = teacher(url, cache=cache, retry_malformed=True).label(TEXTS[:4])
    assert all(a.ok and a.cached for a in after) and sum(server.billed.values()) == 8
    assert [a.probs for a in after] == [a.probs for a in retried] and len(cache) == 4


@pytest.mark.parametrize(
    ("fields", "reason", "raw"),
    [
        ({"content": None, "refusal": "I won't classify that."}, "refusal", "I won't"),
        ({"content": None, "tool_calls": TOOL_CALLS}, "tool calls", '"lookup"'),
    ],
)
def test_a_refusal_or_tool_calls_to_a_classify_request_keep_what_was_said(fields, reason, raw):
    with FakeOpenAI(hostile=fields) as url:
        (answer,) = teacher(url, answer_retries=0).label(TEXTS[:1])
    assert answer.error == reason and raw in answer.raw


def test_probabilities_are_finite_and_sum_to_one():
    with FakeOpenAI(outside_mass=0.3) as url:
        answers = teacher(url).label(TEXTS[:10])
    for a in answers:
        assert all(math.isfinite(p) and 0 <= p <= 1 for p in a.probs)
        assert abs(sum(a.probs) - 1) <= 1e-6 and 0 < a.coverage <= 1


def test_a_compressed_answer_is_inflated_a_bounded_piece_at_a_time():
    import gzip

    from stillroom.labelers._openai import _decoder, _Transient

    # a small "bomb" is an ordinary gzip answer: inflated and read
    with FakeOpenAI(faults={"gzip_bomb": 1.0}, huge_bytes=5_000) as url:
        (answer,) = teacher(url, answer_retries=0).label(TEXTS[:1])
    assert answer.error == "off-label answer" and answer.raw == "x" * 5_000
    # a 30 KB bomb: one piece of it never inflates past the room left under the cap
    bomb = gzip.compress(b"x" * 30_000_000)
    assert len(_decoder("gzip")(bomb, 1_000)) == 1_000
    with pytest.raises(_Transient, match="content-encoding 'br' was not asked for"):
        _decoder("br")


def test_a_crafted_line_of_cache_import_is_a_failure_never_a_crash(tmp_path):
    server = FakeOpenAI()
    with server as url:
        t = teacher(url, cache=ResponseCache(tmp_path / "a.sqlite"))
        t.label(TEXTS[:1])
        t.cache.export(tmp_path / "a.jsonl")
        line = json.loads((tmp_path / "a.jsonl").read_text())
        for step in line["response"]["choices"][0]["logprobs"]["content"]:
            step["logprob"] = 1000  # what the key does not cover: the answer
        (tmp_path / "b.jsonl").write_text(json.dumps(line) + "\n")
        cache = ResponseCache(tmp_path / "b.sqlite")
        assert cache.import_answers(tmp_path / "b.jsonl")["added"] == 1
        (answer,) = teacher(url, cache=cache).label(TEXTS[:1])
    assert answer.cached and answer.error.startswith("malformed answer: a logprob is 1000")
    assert server.requests == 1
