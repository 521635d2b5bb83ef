"""A tiny OpenAI-compatible chat-completions server on 127.0.0.1, with injected faults.

It answers classification prompts (labels read from the system prompt) with token logprobs
built from a known label distribution, counts what it bills per prompt, and can answer 429
with Retry-After, 500, 503, time out, send malformed JSON, answer off-label or drop the line.
Used by the tests and by bench/.

Any other request (no system message carries stillroom's label list, see `is_generation`) is a
generation: the completion is a run of words from `WORDS`, one token per word (the first bare,
the others with a leading space), drawn from sha256 of the last user message, 1 to 48 tokens
long; `max_tokens` (or `max_completion_tokens`) cuts it with finish_reason ``length``, `stop`
sequences end it at the last token before them, and ``logprobs``/``top_logprobs`` bring exact
per-token logprobs (6 decimals; `top_logprobs` lists the chosen token first, then the
alternatives in descending order, all below it). `expected_generation(body)` returns exactly
what is sent. Words in the last user message trigger edge cases:

- ``REFUSE``: a refusal (``message.refusal`` set, content null);
- ``EMPTY``: an empty completion (content "", finish_reason ``stop``);
- ``FILTER``: half the completion, then finish_reason ``content_filter``.

The faults apply to generations too, except ``off_label``, which only means something for a label.

`hostile` sets fields of every answer to the values given (see `HOSTILE`): usage that lies
(``{"completion_tokens": -6_000_000}``, ``{"usage": "lots"}``), logprobs that cannot be
probabilities (``{"logprob": 1000}``, NaN and infinities are sent as JSON's NaN/Infinity), a
null token, content that is not text (a list, an int, a lone surrogate), a refusal or tool calls
in place of an answer (``{"refusal": "...", "content": None}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (
    "429",
    "500",
    "503",
    "timeout",
    "malformed",
    "drop",
    "off_label",
    # hostile or odd endpoints: an error body that echoes the request's headers (the key), an
    # answer trickled a byte at a time, one of `huge_bytes`, a gzip bomb that inflates to it,
    # a redirect, a 200 that is an error object, an answer saying the window resets in `reset`
    "echo",
    "trickle",
    "huge",
    "gzip_bomb",
    "redirect",
    "error_object",
    "exhausted",
)
CLASSIFY_MARKER = "Answer with exactly one of these labels"
RATIONALE_MARKER = "First give a short rationale"
_VOCABULARY = (
    "the a river stone light slowly bright under over and quiet house green runs falls of night "
    "small open door warm wind through still"
)
WORDS = tuple(_VOCABULARY.split())
"""What the fake model writes with: more words than the 20 alternatives a token may list."""
HOSTILE = (
    "prompt_tokens",  # usage.prompt_tokens
    "completion_tokens",  # usage.completion_tokens
    "usage",  # the whole usage object
    "logprob",  # every generated token's own logprob
    "top_logprob",  # every alternative's logprob
    "token",  # every generated token's text
    "logprobs",  # the whole choice.logprobs
    "content",  # message.content
    "refusal",  # message.refusal
    "tool_calls",  # message.tool_calls
)
"""The fields `FakeOpenAI(hostile=...)` may set in every answer."""
REFUSAL_TEXT = "I can't help with that."
MAX_WORDS = 48


def chunks(label: str, leading_space: bool) -> list[str]:
    """How the fake tokenizer splits a label: pieces of at most 4 characters."""
    pieces = [label[i : i + 4] for i in range(0, len(label), 4)]
    if leading_space:
        pieces[0] = " " + pieces[0]
    return pieces


def expected_rationale(text: str, answer: str) -> str:
    """The rationale the fake model gives before its label."""
    return f"The text starts with {' '.join(text.split()[:3])!r}, which reads as {answer}."


def labels_from_prompt(system: str) -> list[str]:
    """The labels listed in an stillroom system prompt; sentiment labels when it lists none."""
    labels = [line[2:].split(": ", 1)[0] for line in system.splitlines() if line.startswith("- ")]
    return labels or ["negative", "positive"]


def is_generation(body: dict[str, Any]) -> bool:
    """True unless a system message carries the label list of stillroom's classification prompt
    (so another tool's prompt, too, is answered as a generation)."""
    return not any(
        m.get("role") == "system" and CLASSIFY_MARKER in (m.get("content") or "")
        for m in body["messages"]
    )


def prompt_tokens(body: dict[str, Any]) -> int:
    """What the fake tokenizer counts for a request's messages."""
    return sum(len(m["content"]) // 4 + 4 for m in body["messages"])


def generation_steps(text: str) -> list[dict[str, Any]]:
    """The whole completion the fake model would write for `text`, before max_tokens and stop:
    per token its logprob and 20 alternatives, all fixed by sha256 of the text."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    steps = []
    for i in range(1 + rng.randrange(MAX_WORDS)):
        space = " " if i else ""
        word = rng.choice(WORDS)
        chosen = -rng.uniform(0.001, 0.69)  # above log(0.5): the rest sums to less than it
        alt = math.log(1.0 - math.exp(chosen))
        alternatives = []
        # each step down is at least 0.7 nats: the alternatives sum to under the rest's mass
        for other in rng.sample([w for w in WORDS if w != word], 20):
            alt -= rng.uniform(0.7, 1.5)
            alternatives.append((space + other, round(alt, 6)))
        steps.append(
            {"token": space + word, "logprob": round(chosen, 6), "alternatives": alternatives}
        )
    return steps


def _cut(tokens: list[str], max_tokens: int, stop: list[str]) -> tuple[int, str]:
    """(tokens kept, finish_reason): the first of max_tokens reached or a stop sequence written;
    a stop sequence ends the text at the last token that ends before it."""
    text, ends = "", []
    for i, token in enumerate(tokens):
        if i == max_tokens:
            return i, "length"
        text += token
        ends.append(len(text))
        hits = [text.find(seq) for seq in stop if seq in text]
        if hits:
            return sum(end <= min(hits) for end in ends), "stop"
    return len(tokens), "stop"


def expected_generation(body: dict[str, Any]) -> dict[str, Any]:
    """Exactly the response the server sends to the generation request `body`."""
    text = body["messages"][-1]["content"]
    if "REFUSE" in text:
        message = {"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        return _envelope(body, choice, len(REFUSAL_TEXT.split()))
    steps = [] if "EMPTY" in text else generation_steps(text)
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or len(steps)
    stop = body.get("stop") or []
    kept, finish = _cut(
        [s["token"] for s in steps], limit, [stop] if isinstance(stop, str) else stop
    )
    if "FILTER" in text:
        kept, finish = kept // 2, "content_filter"
    steps = steps[:kept]
    content = "".join(s["token"] for s in steps)
    choice = {
        "index": 0,
        "finish_reason": finish,
        "message": {"role": "assistant", "content": content},
    }
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [_token_logprobs(s, body) for s in steps]}
    return _envelope(body, choice, len(steps))


def _token_logprobs(step: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    k = int(body.get("top_logprobs") or 0)
    top = [(step["token"], step["logprob"]), *step["alternatives"]][:k]
    return {
        "token": step["token"],
        "logprob": step["logprob"],
        "bytes": None,
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
    }


def _envelope(
    body: dict[str, Any], choice: dict[str, Any], completion_tokens: int
) -> dict[str, Any]:
    prompt = prompt_tokens(body)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def key_of(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # read by listen() in the constructor: a class attribute, not later


class FakeTeacher:
    """Decides the answer to a text: the gold label (when known) with probability `accuracy`."""

    def __init__(self, gold: dict[str, str] | None = None, accuracy: float = 0.85) -> None:
        self.gold = gold or {}
        self.accuracy = accuracy

    def distribution(self, text: str, labels: list[str]) -> dict[str, float]:
        rng = random.Random(hashlib.sha256(text.encode()).digest())
        truth = self.gold.get(text) or rng.choice(labels)
        top = (
            truth if rng.random() < self.accuracy else rng.choice([x for x in labels if x != truth])
        )
        others = rng.sample([x for x in labels if x != top], k=min(3, len(labels) - 1))
        dist = {top: 0.7}
        for label, p in zip(others, (0.15, 0.1, 0.05), strict=False):
            dist[label] = p
        return dist  # sums to 1.0 when there are at least 4 labels; renormalised below otherwise


class FakeOpenAI:
    """The server. `faults` maps a fault name to its probability per request."""

    def __init__(
        self,
        teacher: FakeTeacher | None = None,
        *,
        latency_s: float = 0.0,
        faults: dict[str, float] | None = None,
        seed: int = 0,
        logprobs: bool = True,
        leading_space: bool = False,
        hang_s: float = 3.0,
        retry_after: str = "1",
        outside_mass: float = 0.0,
        structured: bool = True,
        on_request: Callable[[dict[str, Any]], None] | None = None,
        echo_status: int = 400,
        trickle_s: float = 0.5,
        huge_bytes: int = 50_000_000,
        reset: str = "1e9",
        hostile: dict[str, Any] | None = None,
    ) -> None:
        unknown = set(faults or {}) - set(FAULTS) | set(hostile or {}) - set(HOSTILE)
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        self.hostile = hostile or {}
        self.teacher = teacher or FakeTeacher()
        self.latency_s = latency_s
        self.faults = faults or {}
        self.logprobs = logprobs
        self.leading_space = leading_space
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.outside_mass = outside_mass
        self.structured = structured
        self.on_request = on_request
        self.echo_status = echo_status
        self.trickle_s = trickle_s
        self.huge_bytes = huge_bytes
        self.reset = reset
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.billed: Counter[str] = Counter()
        self.billed_at: dict[str, list[float]] = {}
        self.faults_sent: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.starts: list[float] = []
        self.first_429_at: float | None = None
        self._httpd: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        handler = _handler_for(self)
        self._httpd = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour -------------------------------------------------------------------------
    def pick_fault(self, body: dict[str, Any]) -> str | None:
        with self._lock:
            for name in FAULTS:
                if name == "off_label":
                    continue  # decided per prompt below, so the same prompt gets the same answer
                if self._rng.random() < self.faults.get(name, 0.0):
                    return name
        p = self.faults.get("off_label", 0.0)
        if p and not is_generation(body) and random.Random(key_of(body)).random() < p:
            return "off_label"
        return None

    def completion(self, body: dict[str, Any], off_label: bool) -> dict[str, Any]:
        if is_generation(body):
            return self._hostile(expected_generation(body))
        system, text = body["messages"][0]["content"], body["messages"][-1]["content"]
        labels = labels_from_prompt(system)
        # a yes/no question is about one label of many: decided per question, not per text
        about = text if labels != ["no", "yes"] else f"{system}\n{text}"
        dist = self.teacher.distribution(about, labels)
        total = sum(dist.values()) / (1.0 - self.outside_mass)
        dist = {k: v / total for k, v in dist.items()}
        answer = max(dist, key=dist.__getitem__)
        as_json = (body.get("response_format") or {}).get("type") == "json_schema"
        if off_label:
            content, logprobs = "I am not sure, maybe something about cards?", None
        elif RATIONALE_MARKER in system:
            content, logprobs = self._rationale(answer, dist, text, bool(body.get("logprobs")))
        elif as_json:
            content = json.dumps({"label": answer})
            logprobs = None
            if self.logprobs and body.get("logprobs"):
                framing = [
                    {
                        "token": t,
                        "logprob": 0.0,
                        "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": 0.0, "bytes": None}],
                    }
                    for t in ('{"', "label", '":', ' "')
                ]
                close = {
                    "token": '"}',
                    "logprob": 0.0,
                    "bytes": None,
                    "top_logprobs": [{"token": '"}', "logprob": 0.0, "bytes": None}],
                }
                logprobs = [*framing, *self._logprobs(answer, dist, leading_space=False), close]
        else:
            content = (" " if self.leading_space else "") + answer
            logprobs = (
                self._logprobs(answer, dist) if self.logprobs and body.get("logprobs") else None
            )
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content},
        }
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
        return self._hostile(_envelope(body, choice, len(chunks(answer, False))))

    def _hostile(self, answer: dict[str, Any]) -> dict[str, Any]:
        """`answer` with the fields `hostile` names set to its values."""
        choice = answer["choices"][0]
        steps = (choice.get("logprobs") or {}).get("content") or []
        for name, value in self.hostile.items():
            if name in ("prompt_tokens", "completion_tokens"):
                answer["usage"][name] = value
            elif name == "usage":
                answer["usage"] = value
            elif name == "logprobs":
                choice["logprobs"] = value
            elif name in ("logprob", "token"):
                for step in steps:
                    step[name] = value
            elif name == "top_logprob":
                for alternative in (alt for step in steps for alt in step["top_logprobs"]):
                    alternative["logprob"] = value
            else:
                choice["message"][name] = value
        return answer

    def _rationale(
        self, answer: str, dist: dict[str, float], text: str, logprobs: bool
    ) -> tuple[str, list[dict[str, Any]] | None]:
        """A rationale, then a last line "Label: <answer>"; the rationale's tokens are certain,
        the label's carry the exact distribution."""
        why = expected_rationale(text, answer)
        head = [*(f" {w}" if i else w for i, w in enumerate(why.split(" "))), "\n", "Label", ":"]
        content = why + "\nLabel: " + answer
        if not (self.logprobs and logprobs):
            return content, None
        certain = [
            {
                "token": t,
                "logprob": 0.0,
                "bytes": None,
                "top_logprobs": [{"token": t, "logprob": 0.0, "bytes": None}],
            }
            for t in head
        ]
        return content, [*certain, *self._logprobs(answer, dist, leading_space=True)]

    def _logprobs(
        self, answer: str, dist: dict[str, float], leading_space: bool | None = None
    ) -> list[dict[str, Any]]:
        """Exact next-token distributions along the answer's path in the label-token trie."""
        space = self.leading_space if leading_space is None else leading_space
        paths = {label: chunks(label, space) for label in dist}
        chosen = paths[answer]
        out = []
        for k, token in enumerate(chosen):
            live = {
                lab: p
                for lab, p in dist.items()
                if paths[lab][:k] == chosen[:k] and len(paths[lab]) > k
            }
            # the mass outside the label set sits on the first position only
            outside = self.outside_mass if k == 0 else 0.0
            scale = (1.0 - outside) / sum(live.values()) if k == 0 else 1.0 / sum(live.values())
            nxt: Counter[str] = Counter()
            for lab, p in live.items():
                nxt[paths[lab][k]] += p * scale
            if outside:
                nxt["Sorry"] += outside
            top = [
                {"token": t, "logprob": math.log(p), "bytes": None} for t, p in nxt.most_common(20)
            ]
            out.append(
                {
                    "token": token,
                    "logprob": math.log(nxt[token]),
                    "bytes": None,
                    "top_logprobs": top,
                }
            )
        return out


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _client_gone(self) -> bool:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            with server._lock:
                server.requests += 1
                server.starts.append(time.monotonic())
                server.auth_headers.append(self.headers.get("Authorization", ""))
            if server.on_request:
                server.on_request(body)
            if body.get("response_format") and not server.structured:
                self._send(400, b'{"error": {"message": "response_format is not supported"}}')
                return
            if not self.path.endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            if server.latency_s:
                time.sleep(server.latency_s)
            fault = server.pick_fault(body)
            if fault and fault != "off_label":
                with server._lock:
                    server.faults_sent[fault] += 1
            if fault == "429":
                with server._lock:
                    if server.first_429_at is None:
                        server.first_429_at = time.monotonic()
                self._send(
                    429,
                    b'{"error": {"message": "rate limited"}}',
                    {"Retry-After": server.retry_after},
                )
            elif fault in ("500", "503"):
                self._send(int(fault), b'{"error": {"message": "server error"}}')
            elif fault == "timeout":
                time.sleep(server.hang_s)
                self.close_connection = True
            elif fault == "drop":
                self.close_connection = True
            elif fault == "malformed":
                self._send(200, b'{"id": "chatcmpl-fake", "choices": [{"mess')
            elif fault in _HOSTILE:
                _HOSTILE[fault](self, server, body)
            elif self._client_gone():
                # the client died while the answer was being "generated": not delivered, not billed
                self.close_connection = True
            else:
                payload = json.dumps(
                    server.completion(body, off_label=fault == "off_label")
                ).encode()
                started, key = time.monotonic(), key_of(body)
                # billed before the answer is written, so that a client which has read it can
                # never see the server's count lag behind; taken back if it was not delivered
                with server._lock:
                    server.billed[key] += 1
                    server.billed_at.setdefault(key, []).append(started)
                    if fault == "off_label":
                        server.faults_sent["off_label"] += 1
                try:
                    self._send(200, payload)
                    self.wfile.flush()
                except OSError:  # the client is gone: not delivered, not billed
                    with server._lock:
                        server.billed[key] -= 1
                        server.billed_at[key].remove(started)
                        if not server.billed[key]:
                            del server.billed[key], server.billed_at[key]
                        if fault == "off_label":
                            server.faults_sent["off_label"] -= 1

    return Handler


def _echo(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    # the secret headers first: a client that cuts the text short must still not show them
    first = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "api-key")}
    message = {
        "error": {"message": f"invalid request with headers {first} {dict(handler.headers)}"}
    }
    handler._send(server.echo_status, json.dumps(message).encode())


def _trickle(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    payload = json.dumps(server.completion(body, off_label=False)).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    for i in range(len(payload)):
        try:
            handler.wfile.write(payload[i : i + 1])
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(server.trickle_s)


def _huge_payload(server: FakeOpenAI, body: dict[str, Any]) -> bytes:
    answer = server.completion(body, off_label=False)
    answer["choices"][0]["message"]["content"] = "x" * server.huge_bytes
    return json.dumps(answer).encode()


def _huge(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        handler._send(200, _huge_payload(server, body))


def _gzip_bomb(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    import gzip

    payload = gzip.compress(_huge_payload(server, body), compresslevel=9)
    with contextlib.suppress(OSError):
        handler._send(200, payload, {"Content-Encoding": "gzip"})


def _redirect(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    host, port = handler.server.server_address[:2]
    handler._send(302, b"", {"Location": f"http://{host}:{port}/elsewhere{handler.path}"})


def _error_object(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    key = handler.headers.get("Authorization", "")
    message = f"The model is overloaded (request sent with {key})"
    handler._send(200, json.dumps({"error": {"message": message, "type": "server_error"}}).encode())


def _exhausted(handler: Any, server: FakeOpenAI, body: dict[str, Any]) -> None:
    payload = json.dumps(server.completion(body, off_label=False)).encode()
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": server.reset}
    handler._send(200, payload, headers)


_HOSTILE: dict[str, Callable[[Any, FakeOpenAI, dict[str, Any]], None]] = {
    "echo": _echo,
    "trickle": _trickle,
    "huge": _huge,
    "gzip_bomb": _gzip_bomb,
    "redirect": _redirect,
    "error_object": _error_object,
    "exhausted": _exhausted,
}


def asgi_app(server: FakeOpenAI) -> Any:
    """The same answers as an asyncio (ASGI) app, for load: no per-connection threads. Faults are
    not injected here; the threaded server above is the one the tests use for those."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks_in = []
        while True:
            message = await receive()
            chunks_in.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.loads(b"".join(chunks_in))
        server.requests += 1
        server.starts.append(time.monotonic())
        if server.latency_s:
            await asyncio.sleep(server.latency_s)
        payload = json.dumps(server.completion(body, off_label=False)).encode()
        server.billed[key_of(body)] += 1
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    """Run the server in the foreground: python -m tests.openai_server [--latency 0.2]."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--stats", help="write request start times here (JSON) on SIGTERM")
    parser.add_argument(
        "--asgi", action="store_true", help="serve with uvicorn (asyncio) instead of threads"
    )
    args = parser.parse_args()
    server = FakeOpenAI(latency_s=args.latency)
    if args.asgi:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(
            asgi_app(server), host="127.0.0.1", port=port, log_level="error", backlog=2048
        )
        print(f"http://127.0.0.1:{port}/v1", flush=True)
    else:
        print(server.start(), flush=True)

    def dump(*_: object) -> None:
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump(
                    {
                        "starts": server.starts,
                        "requests": server.requests,
                        "billed": sum(server.billed.values()),
                    },
                    f,
                )
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, dump)
    if args.asgi:
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run()
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
