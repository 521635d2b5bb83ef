"""The teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, ...),
for classification (a label and its distribution) and generation (a completion and its tokens).

Async over httpx with a concurrency cap, timeouts and retries; every paid answer goes into the
response cache before it is used, so a re-run or a crash never pays for the same request twice.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import json
import logging
import math
import random
import re
import socket
import ssl
import time
import urllib.request
import zlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar, get_args
from urllib.parse import quote, urlparse

import httpx

from ._limits import MAX_SERVER_WAIT_S, RateLimiter, exhausted_for
from ._parse import TokenStep, label_distribution, match_label
from ._prompt import RATIONALE_LABEL, build_messages
from ._tokens import count_message_tokens, message_token_bound
from ._types import (
    BUDGET_EXHAUSTED,
    EMPTY_COMPLETION,
    MALFORMED_ANSWER,
    REFUSAL,
    TOOL_CALLS,
    Answer,
    Budget,
    ClassifyTask,
    GenerateTask,
    LabelerError,
    LabelStats,
    OnAnswer,
    Price,
    Reservation,
    ResponseCache,
    SharedCache,
    Usage,
)

_UNSUPPORTED = "response_format not supported"
_JSON_LABEL = re.compile(r'"label"\s*:\s*"')
# the last line of an answer that gives a rationale first: "Label:" and the space after it
_RATIONALE = re.compile(r"^[ \t*_#]*label[ \t*_]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
RATIONALE_TOKENS = 200
"""The room a rationale gets in max_tokens, before the label."""
_POOL_SIZE = 8
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_FATAL_STATUS = {
    401: "rejected the API key",
    403: "refused access",
    404: "has no such model or path",
}
_REDACTED = "[redacted]"
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")

log = logging.getLogger(__name__)


T = TypeVar("T")
# bound, not constrained: a task typed as the union (read from a config) is accepted too
TaskT = TypeVar("TaskT", bound=ClassifyTask | GenerateTask)
ResponseFormat = Literal["text", "json_schema", "auto"]


@dataclass(frozen=True)
class OpenAIOptions:
    """The client's defaults, written once: `OpenAITeacher` and the config file both use them."""

    base_url: str = "https://api.openai.com/v1"
    concurrency: int = 32
    answer_retries: int = 1
    response_format: ResponseFormat = "text"
    timeout_s: float = 60.0
    max_retries: int = 6
    temperature: float = 0.0
    top_logprobs: int = 20
    max_input_chars: int | None = 100_000
    # room for a generation of about 5,000 tokens with 20 logprobs each (~1.5 KB a token); an
    # answer is held in memory several times over while it is parsed, once per request in flight
    max_response_bytes: int = 8_000_000


_D = OpenAIOptions()


class _Transient(Exception):
    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        maybe_billed: bool = False,
        final: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        # the request may have reached the model (a timeout, a dropped connection, an answer
        # that arrived broken): the provider may bill it though no usable answer came back
        self.maybe_billed = maybe_billed
        # asking again would bring the same answer (one over the size cap): not retried
        self.final = final


class _Malformed(ValueError):
    """A field of an answer that cannot be true (its message says which and why)."""


# a logprob a hair above 0 is float rounding at the server; more is not a probability
_LOGPROB_SLACK = 1e-5


class OpenAITeacher(Generic[TaskT]):
    """Label texts with a chat model behind an OpenAI-compatible API, or have it write completions.

    Parameters
    ----------
    task : the classification task (labels, instructions) or the generation task; a generation
        task brings its own temperature, max_tokens, stop and top_logprobs (the arguments of the
        same names here are for classification) and is never asked again (answer_retries).
    model : the model name the endpoint knows.
    base_url : the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
    api_key : the key, read by the caller from the environment; sent only as a bearer header.
    concurrency : requests in flight at most.
    rpm : requests started per minute at most (evenly spaced), or None for no cap.
    tpm : tokens per minute at most (estimated before each call, corrected by the usage returned).
    budget : a hard cap in dollars (or a `Budget` shared with other teachers); a request whose
        worst-case cost would pass it is not sent and its record fails with ``budget exhausted``.
    response_format : ``text`` (the label as plain text), ``json_schema`` (a JSON object whose
        ``label`` is an enum of the labels, for endpoints with structured outputs) or ``auto``
        (json_schema, falling back to text for the rest of the run if the endpoint refuses it).
    answer_retries : how many times an off-label or empty answer is asked again (a follow-up
        turn that repeats the label list); each ask is its own cached, paid request.
    timeout_s : the deadline for each request: sending it and reading the whole answer (a
        server that trickles its answer fails with reason ``timeout`` once it passes).
    max_retries : retries after the first try for 429, 5xx, timeouts and dropped connections.
    price : dollars per million tokens, for the cost of each call.
    top_logprobs : alternatives per token to ask for (0 turns logprobs off).
    max_input_chars : a record longer than this is not sent: it fails with reason ``too long``
        (one huge record can cost more than the rest of a run); None for no limit.
    query : query parameters sent with every request (e.g. ``{"api-version": "2024-06-01"}``);
        part of the cache key, since they can change the answer.
    headers : extra request headers (e.g. a gateway's key header, read by the caller from the
        environment); sent, never recorded: the key and these values are redacted from any text
        the server sends back before it becomes a failure reason.
    max_response_bytes : an answer larger than this, decompressed, is not read further: the
        record fails (once, not retried) with reason ``response over max_response_bytes``.
    max_wait_s : the longest pause a server may impose (Retry-After, exhausted x-ratelimit
        headers); a longer one is cut to it, with a warning.
    cache : where paid answers are stored before use (see ``storage.ResponseCache``).
    retry_malformed : ask again a request whose cached answer is malformed (usage that cannot be
        true, logprobs that are not probabilities, content that is not text), replacing it; off,
        such an answer stays a failure with reason ``malformed answer: ...`` and is not paid again.
    transport : an httpx transport, for tests (``httpx.MockTransport``) or custom networking;
        without one, HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY apply as in httpx.
    """

    def __init__(
        self,
        task: TaskT,
        *,
        model: str,
        base_url: str = _D.base_url,
        api_key: str | None = None,
        concurrency: int = _D.concurrency,
        rpm: float | None = None,
        tpm: float | None = None,
        budget: Budget | float | None = None,
        answer_retries: int = _D.answer_retries,
        response_format: ResponseFormat = _D.response_format,
        timeout_s: float = _D.timeout_s,
        max_retries: int = _D.max_retries,
        price: Price | None = None,
        temperature: float = _D.temperature,
        top_logprobs: int = _D.top_logprobs,
        max_input_chars: int | None = _D.max_input_chars,
        max_response_bytes: int = _D.max_response_bytes,
        max_wait_s: float = MAX_SERVER_WAIT_S,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        cache: ResponseCache | None = None,
        retry_malformed: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        check_base_url(base_url)
        _check_header_values(api_key, headers or {})
        if concurrency < 1:
            raise LabelerError("teacher concurrency must be at least 1")
        self.task = task
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.max_wait_s = max_wait_s
        self.limiter = RateLimiter(rpm, tpm, max_pause_s=max_wait_s)
        self.budget = Budget(budget) if isinstance(budget, float | int) else budget
        self.answer_retries = answer_retries
        if response_format not in get_args(ResponseFormat):
            raise LabelerError(
                f"unknown response_format {response_format!r}: text, json_schema or auto"
            )
        rationale = isinstance(task, ClassifyTask) and task.rationale
        if rationale and response_format == "json_schema":
            raise LabelerError(
                "a rationale comes before the label as text: use response_format text (or auto)"
            )
        self.response_format = response_format
        self._json = response_format != "text" and not rationale
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.price = price or Price()
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self.cache = cache
        self.retry_malformed = retry_malformed
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stats = LabelStats()
        self._api_key = api_key
        self.max_input_chars = max_input_chars
        self.query = dict(query or {})
        self._headers = dict(headers or {})
        self._transport = transport
        self.max_response_bytes = max_response_bytes
        self._proxy = None if transport else _env_proxy(self.base_url)
        self._secrets = _redactions(api_key, self._headers.values(), self._proxy)
        self._warned: set[str] = set()

    @property
    def endpoint_host(self) -> str:
        return urlparse(self.base_url).netloc

    @property
    def budget_exhausted(self) -> bool:
        return self.budget is not None and self.budget.exhausted

    def prepare(self) -> None:
        """Nothing to load: the model runs behind the endpoint."""

    def describe(self) -> dict[str, Any]:
        """Provenance for manifests: never includes the key."""
        return {
            "provider": "openai",
            "model": self.model,
            "endpoint_host": self.endpoint_host,
            "parameters": self._parameters(),
        }

    def _parameters(self) -> dict[str, Any]:
        if isinstance(self.task, GenerateTask):
            return self.task.parameters()
        return {"temperature": self.temperature, "top_logprobs": self.top_logprobs}

    def build_request(self, text: str) -> dict[str, Any]:
        """The chat-completions body for one text (also the cache key's content)."""
        messages = build_messages(self.task, text)
        if isinstance(self.task, GenerateTask):
            return _generate_body(self.model, messages, self.task)
        return self._classify_body(messages)

    def _classify_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        longest = max(len(label) for label in self._labels())
        # room for the longest label even at one character per token, plus a closing token (and
        # a rationale of a few sentences before it, when one is asked for)
        room = min(longest + 4, 256) + (RATIONALE_TOKENS if self._rationale else 0)
        body = _chat_body(self.model, messages, self.temperature, room)
        _ask_logprobs(body, self.top_logprobs)
        if self._json:
            body["max_tokens"] += 16  # the JSON around the label
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "label",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"label": {"type": "string", "enum": list(self._labels())}},
                        "required": ["label"],
                        "additionalProperties": False,
                    },
                },
            }
        return body

    def label(
        self,
        records: Sequence[tuple[str, str]],
        on_answer: OnAnswer | None = None,
    ) -> list[Answer]:
        """Label (id, text) pairs, or write a completion for each for a generation task; answers
        come back in the same order."""
        return _run_sync(self.alabel(records, on_answer))

    async def alabel(
        self,
        records: Sequence[tuple[str, str]],
        on_answer: OnAnswer | None = None,
    ) -> list[Answer]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        headers["Accept-Encoding"] = "gzip, deflate"  # what _decoder inflates a piece at a time
        headers.update(self._headers)
        # httpcore's pool scans every connection for every queued request, so one pool of 64+
        # connections spends more CPU than the requests; small pools keep that cost flat
        pools = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                params=self.query,
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(
                    max_connections=_POOL_SIZE, max_keepalive_connections=_POOL_SIZE
                ),
                transport=self._transport or _nodelay_transport(self._proxy),
            )
            for _ in range(-(-self.concurrency // _POOL_SIZE))
        ]
        answers: list[Answer | None] = [None] * len(records)
        todo = iter(enumerate(records))

        async def worker(client: httpx.AsyncClient) -> None:
            for i, (record_id, text) in todo:  # one event loop: the shared iterator is safe
                answer = answers[i] = await self._label_one(client, record_id, text)
                if on_answer is not None:
                    on_answer(answer)

        try:
            workers = min(self.concurrency, len(records))
            await asyncio.gather(*(worker(pools[w % len(pools)]) for w in range(workers)))
        finally:
            for pool in pools:
                await pool.aclose()
        return [a for a in answers if a is not None]

    async def _label_one(self, client: httpx.AsyncClient, record_id: str, text: str) -> Answer:
        if self.max_input_chars is not None and len(text) > self.max_input_chars:
            reason = f"too long: {len(text):,} characters (limit {self.max_input_chars:,})"
            return Answer(record_id, None, error=reason, attempts=0)
        body = self.build_request(text)
        spent = Usage()
        attempts = 0
        # a completion is not wrong the way an off-label answer is: it is never asked again
        asks = self.answer_retries + 1 if isinstance(self.task, ClassifyTask) else 1
        for round_ in range(asks):
            response, tries, cached, error = await self._fetch(client, body)
            attempts += tries
            if error == _UNSUPPORTED and self.response_format == "json_schema":
                raise LabelerError(
                    f"teacher endpoint {self.endpoint_host} does not support response_format "
                    "json_schema: set teacher.response_format to text or auto"
                )
            if error == _UNSUPPORTED and self.response_format == "auto":
                self._json = (
                    False  # this endpoint has no structured outputs: plain text from now on
                )
                body = self.build_request(text)
                response, tries, cached, error = await self._fetch(client, body)
                attempts += tries
            if response is None:
                return Answer(record_id, None, error=error, usage=spent, attempts=attempts)
            answer = self.parse_response(record_id, response, cached=cached, request=body)
            spent += answer.usage
            # a malformed answer is not an off-label one a reminder could fix
            if answer.ok or round_ == asks - 1 or (answer.error or "").startswith(MALFORMED_ANSWER):
                return replace(answer, usage=spent, attempts=attempts)
            body = self.follow_up(body, answer.raw or "")
        raise AssertionError("unreachable")

    def cache_key(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the response cache files a request under: the endpoint and the full body."""
        if self.query:
            return {"base_url": self.base_url, "query": self.query, "body": body}
        return {"base_url": self.base_url, "body": body}

    def follow_up(self, body: dict[str, Any], raw: str) -> dict[str, Any]:
        """The request that asks again after an answer that named no label."""
        reminder = "That is not one of the labels. Answer with exactly one of: " + ", ".join(
            self._labels()
        )
        if self._rationale:
            reminder += f' (on a last line "{RATIONALE_LABEL} <label>")'

        messages = [
            *body["messages"],
            {"role": "assistant", "content": raw},
            {"role": "user", "content": reminder},
        ]
        return {**body, "messages": messages}

    async def _fetch(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, int, bool, str | None]:
        """(response, tries, from cache, failure reason): the cache first, then the endpoint."""
        key = self.cache_key(body)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None and self.retry_malformed and self._malformed(cached, body):
            cached = None if self._forget(key, cached) else cached
        shared = self._shared()
        if cached is None and shared is not None:
            # another asker's claim outlives every try it may make (then it is taken as dead)
            stale_s = (self.timeout_s + self.backoff_max_s) * (self.max_retries + 1) + 60
            cached = await self._claim(shared, key, stale_s)  # None: ours to send
        if cached is not None:
            self.stats.cache_hits += 1
            return cached, 0, True, None
        try:
            return await self._send(client, body, key)
        finally:
            if shared is not None:
                shared.release(key)  # a no-op once the answer is stored

    def _malformed(self, response: dict[str, Any], body: dict[str, Any]) -> bool:
        error = self.parse_response("", response, request=body).error or ""
        return error.startswith(MALFORMED_ANSWER)

    def _forget(self, key: dict[str, Any], response: dict[str, Any]) -> bool:
        """Drop a cached answer that cannot be used, to ask again; False when the cache cannot."""
        if not isinstance(self.cache, SharedCache):
            return False
        return self.cache.forget(key, response)

    def _shared(self) -> Any:
        """The cache, when several processes label into it at once (a cluster's workers): it
        then claims each request before it is sent (storage.ResponseCache(claims=True))."""
        return self.cache if getattr(self.cache, "claims", False) else None

    @staticmethod
    async def _claim(cache: Any, key: dict[str, Any], stale_s: float) -> dict[str, Any] | None:
        """Wait while another process is sending the same request, and return its answer; None
        once the request is ours to send."""
        while not cache.claim(key, stale_s=stale_s):
            await asyncio.sleep(0.05)
            answer: dict[str, Any] | None = cache.get(key)
            if answer is not None:
                return answer
        return None

    async def _send(
        self, client: httpx.AsyncClient, body: dict[str, Any], key: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, int, bool, str | None]:
        worst = self.worst_case(body)
        tokens = count_message_tokens(body["messages"], self.model) + worst.output_tokens
        reservation = self._reserve(worst)
        if reservation is None:
            return None, 0, False, BUDGET_EXHAUSTED
        try:
            response, attempt, error = await self._post_retrying(client, body, key, tokens, worst)
            if response is None:
                return None, attempt, False, error
            usage = self._booked(response, body)
            reported = usage.input_tokens + usage.output_tokens
            self.limiter.settle(tokens, reported or tokens)
            if self.budget is not None:
                self.budget.spend(usage.cost_usd)
            self.stats.paid(usage)
            # stored as received before anything looks into it: a crash or a field that cannot
            # be read never pays for it again; booked at its worst case when its usage lies
            if self.cache is not None:
                self.cache.put(
                    key,
                    response,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_usd=usage.cost_usd,
                )
            return response, attempt, False, None
        finally:
            # released after the answer is booked: another process never sees the money free
            if self.budget is not None:
                self.budget.release(reservation)

    def _reserve(self, worst: Usage) -> Reservation | None:
        """The budget's hold on a call's worst case (an empty one without a budget)."""
        if self.budget is None:
            return Reservation(0.0)
        return self.budget.reserve(worst.cost_usd)

    async def _post_retrying(
        self,
        client: httpx.AsyncClient,
        body: dict[str, Any],
        key: dict[str, Any],
        tokens: int,
        worst: Usage,
    ) -> tuple[dict[str, Any] | None, int, str | None]:
        """(answer, tries, failure reason): `_post` with retries and backoff."""
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire(tokens)
            try:
                return await self._post(client, body), attempt, None
            except _Transient as exc:
                self.limiter.settle(tokens, 0)  # nothing was used
                if exc.maybe_billed and self.budget is not None:
                    # counted at its worst case: the budget must hold even if it was billed
                    self.budget.book(key, worst.cost_usd)
                    if self.budget.over():
                        self.budget.exhausted = True
                        return None, attempt, BUDGET_EXHAUSTED
                if exc.reason == _UNSUPPORTED or exc.final:
                    return None, attempt, exc.reason
                if exc.retry_after is not None and exc.reason == "HTTP 429":
                    self.limiter.pause(min(exc.retry_after, self.backoff_max_s * 4))
                if attempt > self.max_retries:
                    return None, attempt, exc.reason
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))

    def worst_case(self, body: dict[str, Any]) -> Usage:
        """The most a request can cost: the prompt's token bound (its response_format too, which
        providers bill as prompt) and all of max_tokens; what a budget reserves before sending,
        and above which a reported usage cannot be true."""
        prompt = message_token_bound(body["messages"], self.model)
        if "response_format" in body:
            prompt += len(json.dumps(body["response_format"]).encode())
        return self.price.usage(prompt, int(body.get("max_tokens") or 0))

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        try:
            # one deadline for sending and reading it all: httpx's timeouts are per read, so a
            # server that trickles its answer would never trip them
            async with asyncio.timeout(self.timeout_s):
                response, content = await self._exchange(client, body)
        except (TimeoutError, httpx.TimeoutException):
            raise _Transient("timeout", maybe_billed=True) from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection error: {type(exc).__name__}", maybe_billed=True) from None
        except zlib.error:
            raise _Transient("malformed response: broken compression", maybe_billed=True) from None
        status = response.status_code
        exhausted = exhausted_for(response.headers)
        if exhausted:
            self.limiter.pause(self._capped_wait(*exhausted))
        if status in _FATAL_STATUS:
            raise LabelerError(
                f"teacher endpoint {self.endpoint_host} {_FATAL_STATUS[status]} (HTTP {status})"
            )
        if 300 <= status < 400:
            raise LabelerError(
                f"teacher endpoint {self.endpoint_host} answered HTTP {status}, a redirect, not "
                "followed (the key goes to teacher.base_url only): set teacher.base_url to the "
                "API root it points to"
            )
        if status in _RETRYABLE_STATUS:
            wait = _retry_after(response.headers)
            retry_after = None if wait is None else self._capped_wait(wait, "Retry-After")
            raise _Transient(f"HTTP {status}", retry_after=retry_after)
        text = self.redact(content.decode("utf-8", errors="replace"))
        if status == 400 and "response_format" in body and "response_format" in text:
            raise _Transient(_UNSUPPORTED)
        if status >= 400:
            raise _Transient(f"HTTP {status}: {text[:200]}")
        return _chat_completion(text)

    async def _exchange(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """Send one request and read its answer, decompressed, up to max_response_bytes."""
        content = bytearray()
        async with client.stream("POST", "/chat/completions", json=body) as response:
            if response.is_stream_consumed:  # read and decoded already (httpx.MockTransport)
                content += response.content
            else:
                decode = _decoder(response.headers.get("content-encoding", ""))
                async for chunk in response.aiter_raw():
                    content += decode(chunk, self.max_response_bytes + 1 - len(content))
                    if len(content) > self.max_response_bytes:
                        break
        if len(content) > self.max_response_bytes:
            raise _Transient(
                f"response over max_response_bytes ({self.max_response_bytes:,} bytes)",
                maybe_billed=True,
                final=True,
            )
        return response, bytes(content)

    def redact(self, text: str) -> str:
        """`text` from the server without the key, the header values or the proxy's credentials
        (some gateways echo the request's headers in an error)."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _capped_wait(self, seconds: float, header: str) -> float:
        """A wait the server asked for, cut to max_wait_s (with a warning, once per header)."""
        if seconds <= self.max_wait_s:
            return seconds
        if header not in self._warned:
            self._warned.add(header)
            log.warning(
                "teacher endpoint %s asked for a wait of %s s in %s: waiting %s s at most",
                self.endpoint_host,
                f"{seconds:,.0f}",
                header,
                f"{self.max_wait_s:g}",
            )
        return self.max_wait_s

    def _booked(self, response: dict[str, Any], body: dict[str, Any]) -> Usage:
        """What an answer cost: its reported usage; its worst case when that cannot be true; the
        worst case's dollars (tokens unknown) when it reports none."""
        if response.get("usage") is None:
            return Usage(0, 0, self.worst_case(body).cost_usd)
        try:
            return self._usage(response, body)
        except _Malformed:
            return self.worst_case(body)

    def _usage(self, response: dict[str, Any], body: dict[str, Any] | None = None) -> Usage:
        """The usage an answer reports, priced; `_Malformed` when it cannot be true: counts that
        are not whole numbers from 0, or (given the request) more than the request can use."""
        usage = response.get("usage")
        if usage is None:
            return Usage()
        if not isinstance(usage, dict):
            raise _Malformed(f"usage is {_kind(usage)}, not an object")
        counts = [_token_count(usage, name) for name in ("prompt_tokens", "completion_tokens")]
        if body is not None:
            worst = self.worst_case(body)
            bound = worst.input_tokens + worst.output_tokens
            if sum(counts) > bound:
                raise _Malformed(
                    f"usage of {sum(counts):,} tokens is more than the request can use ({bound:,})"
                )
        return self.price.usage(*counts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s * 4)
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter spreads retries from many clients

    def _labels(self) -> tuple[str, ...]:
        if not isinstance(self.task, ClassifyTask):
            raise LabelerError(
                "a GenerateTask has no labels: labels and follow-up asks are for a ClassifyTask"
            )
        return self.task.labels

    def parse_response(
        self,
        record_id: str,
        response: dict[str, Any],
        *,
        cached: bool = False,
        request: dict[str, Any] | None = None,
    ) -> Answer:
        """The Answer in a chat-completions response: a label and its distribution (never coerced
        from an off-label answer), or for a generation task the completion (`parse_completion`).

        Never raises: a field that cannot be true (usage that is not a count, or more than
        `request` can use; logprobs that are not probabilities; content that is not text) makes
        the answer a failure whose reason starts ``malformed answer``, what it said in `raw`.
        """
        try:
            spent = self._usage(response, request)
        except _Malformed as exc:
            worst = self.worst_case(request) if request is not None else Usage()
            return _malformed(record_id, response, exc, worst, cached)
        try:
            choice = _first_choice(response)
            if isinstance(self.task, GenerateTask):
                return _completion(record_id, choice, spent, cached=cached)
            return self._classification(record_id, choice, spent, cached)
        except _Malformed as exc:
            return _malformed(record_id, response, exc, spent, cached)

    def _classification(
        self, record_id: str, choice: dict[str, Any], spent: Usage, cached: bool
    ) -> Answer:
        labels = self._labels()
        message = choice["message"]
        raw = _content(message)
        steps = _token_steps(choice.get("logprobs"))
        if raw is None:
            return _not_answered(record_id, message, spent, cached)
        said, why = raw, None
        if self._rationale:
            why, said, steps = _after_rationale(raw, steps)
        elif raw.lstrip().startswith("{"):
            said, steps = _from_json(raw, steps)
        label = match_label(said, labels)
        if label is None:
            reason = "empty answer" if not raw.strip() else "off-label answer"
            return Answer(record_id, None, raw=raw, error=reason, usage=spent, cached=cached)
        dist = label_distribution(steps, labels) if steps else None
        probs, coverage = (
            (tuple(1.0 if lab == label else 0.0 for lab in labels), None)
            if dist is None
            else (tuple(dist[0]), dist[1])
        )
        _check_probabilities(probs, coverage)
        return Answer(
            record_id, label, probs, coverage, raw=raw, usage=spent, cached=cached, rationale=why
        )

    @property
    def _rationale(self) -> bool:
        return isinstance(self.task, ClassifyTask) and self.task.rationale


def parse_completion(
    record_id: str, choice: dict[str, Any], usage: Usage, *, cached: bool = False
) -> Answer:
    """A generation's Answer from one response choice; nothing said is dropped.

    The text is kept exactly as sent; a refusal (``message.refusal`` or ``finish_reason
    content_filter``) and a text with nothing but white space are kept as failures with their
    reason; content that is not text, or logprobs that are not probabilities, fail with a reason
    starting ``malformed answer``. Never raises.
    """
    try:
        return _completion(record_id, choice, usage, cached=cached)
    except _Malformed as exc:
        return _malformed(record_id, {"choices": [choice]}, exc, usage, cached)


def _completion(record_id: str, choice: dict[str, Any], usage: Usage, *, cached: bool) -> Answer:
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Malformed(f"message is {_kind(message)}, not an object")
    text = _content(message)
    finish = choice.get("finish_reason")
    logprobs = choice.get("logprobs")
    answered = isinstance(logprobs, dict) and logprobs.get("content") is not None
    steps = _token_steps(logprobs)
    answer = Answer(
        record_id,
        None,
        raw=text,
        usage=usage,
        cached=cached,
        completion=text,
        finish_reason=finish if isinstance(finish, str) else None,
        tokens=tuple(steps) if answered else None,
    )
    refusal = message.get("refusal")
    if refusal:
        return replace(answer, raw=_printable(refusal), error=REFUSAL)
    if finish == "content_filter":
        return replace(answer, error=f"{REFUSAL}: content_filter")
    if not (text or "").strip():
        return replace(answer, raw=text or "", completion=text or "", error=EMPTY_COMPLETION)
    return answer


def _first_choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("choices is not a list of objects")
    choice: dict[str, Any] = choices[0]
    if not isinstance(choice.get("message"), dict):
        raise _Malformed(f"message is {_kind(choice.get('message'))}, not an object")
    return choice


def _content(message: dict[str, Any]) -> str | None:
    """The message's text, None when it has none; `_Malformed` when it is not text."""
    content = message.get("content")
    if content is None or _is_text(content):
        return content
    if isinstance(content, str):
        raise _Malformed("content is not valid text (a lone surrogate)")
    raise _Malformed(f"content is {_kind(content)}, not a string")


def _not_answered(record_id: str, message: dict[str, Any], spent: Usage, cached: bool) -> Answer:
    """A classification answered with no text: a refusal or tool calls, kept in `raw`."""
    refusal, calls = message.get("refusal"), message.get("tool_calls")
    if refusal:
        return Answer(
            record_id, None, raw=_printable(refusal), error=REFUSAL, usage=spent, cached=cached
        )
    if calls:
        return Answer(
            record_id, None, raw=_printable(calls), error=TOOL_CALLS, usage=spent, cached=cached
        )
    return Answer(record_id, None, raw="", error="empty answer", usage=spent, cached=cached)


def _malformed(
    record_id: str, response: dict[str, Any], exc: _Malformed, usage: Usage, cached: bool
) -> Answer:
    """The failure for an answer with a field that cannot be true; what it said is in `raw`."""
    return Answer(
        record_id,
        None,
        raw=_said(response),
        error=f"{MALFORMED_ANSWER}: {exc}",
        usage=usage,
        cached=cached,
    )


def _said(response: dict[str, Any]) -> str:
    """What an answer said, as storable text: its content, else its message, else all of it."""
    choices = response.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if isinstance(message, dict) and message.get("content") is not None:
        return _printable(message["content"])
    return _printable(message if message is not None else response)[:2000]


def _printable(value: Any) -> str:
    """`value` as text that can be stored: a string as it is (lone surrogates escaped), anything
    else as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_text(value: Any) -> bool:
    """A string that UTF-8 can hold (JSON's \\ud800 escapes make lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    names = {list: "a list", dict: "an object", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _token_count(usage: dict[str, Any], name: str) -> int:
    """A usage count: a whole number from 0 (missing counts as 0); `_Malformed` otherwise."""
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"usage {name} is {_kind(value)}, not a count")
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise _Malformed(f"usage {name} is {value!r}, not a count from 0")
    return int(value)


def _logprob(item: dict[str, Any]) -> float:
    """A token's logprob: a finite number at most 0 (a hair above is rounding, read as 0)."""
    value = item.get("logprob")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"a logprob is {_kind(value)}, not a number")
    if not math.isfinite(value) or value > _LOGPROB_SLACK:
        raise _Malformed(f"a logprob is {value!r}, not the log of a probability")
    return min(float(value), 0.0)


def _token(item: Any) -> str:
    if not isinstance(item, dict):
        raise _Malformed(f"a logprobs entry is {_kind(item)}, not an object")
    token = item.get("token")
    if not _is_text(token):
        raise _Malformed(f"a logprobs token is {_kind(token)}, not text")
    return str(token)


def _check_probabilities(probs: tuple[float, ...], coverage: float | None) -> None:
    """Probabilities are finite, in [0, 1] and sum to 1 (within 1e-6), or the answer fails."""
    finite = all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs)
    if not finite or abs(sum(probs) - 1.0) > 1e-6:
        raise _Malformed("the logprobs give no probability distribution over the labels")
    if coverage is not None and not (math.isfinite(coverage) and 0.0 <= coverage <= 1.0):
        raise _Malformed(f"the logprobs give a coverage of {coverage!r}")


def _decoder(encoding: str) -> Callable[[bytes, int], bytes]:
    """A function that decodes the next chunk of a body sent with `encoding`, inflating at most
    `limit` bytes of it: a gzip bomb's 64 KB chunk would otherwise inflate to 64 MB at once."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda chunk, limit: chunk
    if encoding not in ("gzip", "deflate"):
        raise _Transient(
            f"malformed response: content-encoding {encoding[:40]!r} was not asked for",
            maybe_billed=True,
        )
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or zlib header, detected
    return lambda chunk, limit: inflater.decompress(chunk, max(limit, 1))


def _chat_completion(text: str) -> dict[str, Any]:
    """The chat-completion object in a 200 answer's (redacted) text; an error object in its place
    keeps the provider's message."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            raise _Transient(f"error from the endpoint: {_error_text(data['error'])}"[:240])
        if not isinstance(data, dict) or not isinstance(data["choices"][0]["message"], dict):
            raise TypeError
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Transient("malformed response", maybe_billed=True) from None
    return data


def _error_text(error: Any) -> str:
    """An error object's message, with its type or code when it has one."""
    if not isinstance(error, dict):
        return str(error)
    kind = error.get("type") or error.get("code")
    message = str(error.get("message") or "no message")
    return f"{message} ({kind})" if kind else message


def header_safe(value: str, *, spaces: bool = False) -> bool:
    """True for a value that can go in an HTTP header as it is: printable ASCII, without spaces
    (a key) or, with `spaces`, with none at either end (another header)."""
    if spaces:
        return value == value.strip() and all(" " <= c <= "~" for c in value)
    return all("!" <= c <= "~" for c in value)


def _check_header_values(api_key: str | None, headers: Mapping[str, str]) -> None:
    """Refuse a key or header value httpx could not send: the message names it, never its value
    (httpx's own error would carry it, and a retried one be reserved as possibly billed)."""
    pasted = "(a copy-paste may have added a space, newline or non-breaking space)"
    if api_key is not None and not header_safe(api_key):
        raise LabelerError(f"teacher api_key must be printable ASCII without spaces {pasted}")
    for name, value in headers.items():
        if not header_safe(value, spaces=True):
            raise LabelerError(
                f"teacher header {name!r} must be printable ASCII with no space at either end "
                f"{pasted}"
            )


def _env_proxy(url: str) -> httpx.Proxy | None:
    """The proxy that HTTP_PROXY / HTTPS_PROXY / ALL_PROXY name for `url` unless NO_PROXY exempts
    its host, read as httpx reads them (trust_env); a message never shows its credentials."""
    proxies = urllib.request.getproxies_environment()
    parsed = urlparse(url)
    # NO_PROXY as urllib (and so httpx) reads it; typeshed does not list the function
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parsed.hostname or "", proxies):
        return None
    value = proxies.get(parsed.scheme) or proxies.get("all")
    if not value:
        return None
    value = value if "://" in value else f"http://{value}"
    scheme = urlparse(value).scheme
    if scheme not in _PROXY_SCHEMES:
        shown = re.sub(r"//[^/@]*@", "//***@", value)
        raise LabelerError(
            f"the proxy for {parsed.scheme}:// ({parsed.scheme.upper()}_PROXY or ALL_PROXY) is "
            f"{shown}: expected http://, https:// or socks5://[user:password@]host:port"
        )
    return httpx.Proxy(value)


def _redactions(api_key: str | None, headers: Any, proxy: httpx.Proxy | None) -> tuple[str, ...]:
    """Every form in which a secret of this client could come back: the key and header values
    (also JSON-escaped), the proxy's password (also as its Proxy-Authorization); longest first.
    Values under 4 characters are no secrets worth the name, and would mangle any text."""
    found = [api_key or "", *headers]
    if proxy is not None and proxy.auth is not None:
        user, password = proxy.auth
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        found += [password, quote(password, safe=""), credentials]
    forms = {form for s in found if len(s) >= 4 for form in (s, json.dumps(s)[1:-1])}
    return tuple(sorted(forms, key=len, reverse=True))


def check_base_url(url: str) -> None:
    """Refuse an API root that cannot work or would leak: a message never repeats the URL, which
    may hold a secret."""
    parsed = urlparse(url)
    if "@" in url:
        raise LabelerError(
            "teacher base_url must not hold credentials (user:password@host): put the key in an "
            "environment variable and name it in teacher.api_key_env (or teacher.header_env)"
        )
    if parsed.query or parsed.fragment or url.rstrip().endswith("?"):
        raise LabelerError(
            "teacher base_url must not have a query string or fragment: give query parameters "
            "as teacher.query, e.g. {api-version: 2024-06-01}"
        )
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise LabelerError(f"invalid teacher base_url {url!r}: expected http(s)://host[:port]/path")


def _from_json(raw: str, steps: list[TokenStep]) -> tuple[str, list[TokenStep]]:
    """The label inside a structured answer {"label": "..."} and the token steps from where it
    starts (the first one trimmed of the JSON before it)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw, steps
    if not isinstance(value, dict) or not isinstance(value.get("label"), str):
        return raw, steps
    text = ""
    for i, step in enumerate(steps):
        match = _JSON_LABEL.search(text + step.token)
        if match:
            cut = match.end() - len(text)
            head = step.token[:cut]
            first = TokenStep(
                step.token[cut:],
                step.logprob,
                tuple((t[cut:], lp) for t, lp in step.top if t[:cut] == head),
            )
            return value["label"], ([first] if first.token else []) + list(steps[i + 1 :])
        text += step.token
    return value["label"], []


def _after_rationale(raw: str, steps: list[TokenStep]) -> tuple[str | None, str, list[TokenStep]]:
    """(rationale, the label's text, the token steps from where the label starts) of an answer
    whose last line is ``Label: <label>``; no rationale when it has no such line."""
    found = list(_RATIONALE.finditer(raw))
    if not found:
        return None, raw, steps
    cut = found[-1]
    # the steps are cut where their own text has the line (byte tokens of a character before
    # it would shift an offset into `raw`); none when it is not there: one-hot then
    spelled = list(_RATIONALE.finditer("".join(step.token for step in steps)))
    rest = _steps_from(steps, spelled[-1].end()) if spelled else []
    return raw[: cut.start()].strip() or None, raw[cut.end() :], rest


def _steps_from(steps: list[TokenStep], offset: int) -> list[TokenStep]:
    """The token steps from character `offset` of their text on; a token the offset falls
    inside keeps its part after it (and the alternatives that share the part before)."""
    at = 0
    for i, step in enumerate(steps):
        end = at + len(step.token)
        if end > offset:
            cut = offset - at
            if cut <= 0:
                return list(steps[i:])
            head = step.token[:cut]
            first = TokenStep(
                step.token[cut:],
                step.logprob,
                tuple((t[cut:], lp) for t, lp in step.top if t[:cut] == head),
            )
            return [first, *steps[i + 1 :]]
        at = end
    return []


def _chat_body(
    model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }


def _ask_logprobs(body: dict[str, Any], top_logprobs: int) -> None:
    if top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs


def _generate_body(
    model: str, messages: list[dict[str, str]], task: GenerateTask
) -> dict[str, Any]:
    body = _chat_body(model, messages, task.temperature, task.max_tokens)
    _ask_logprobs(body, task.top_logprobs)
    if task.stop:  # some endpoints refuse an empty list
        body["stop"] = list(task.stop)
    return body


def _token_steps(logprobs: Any) -> list[TokenStep]:
    """The generated tokens with their logprobs; `_Malformed` when they are not tokens and
    probabilities (a logprob above 0, NaN or infinite, a token that is not text)."""
    if logprobs is None:
        return []
    if not isinstance(logprobs, dict):
        raise _Malformed(f"logprobs is {_kind(logprobs)}, not an object")
    content = logprobs.get("content")
    if not content:
        return []
    if not isinstance(content, list):
        raise _Malformed(f"logprobs content is {_kind(content)}, not a list")
    steps = []
    for item in content:
        token = _token(item)
        alternatives = item.get("top_logprobs") or []
        if not isinstance(alternatives, list):
            raise _Malformed(f"top_logprobs is {_kind(alternatives)}, not a list")
        top = tuple((_token(alt), _logprob(alt)) for alt in alternatives)
        steps.append(TokenStep(token, _logprob(item), top))
    return steps


def _nodelay_transport(proxy: httpx.Proxy | None = None) -> httpx.AsyncHTTPTransport:
    """A transport with TCP_NODELAY: httpcore writes a request's headers and body separately, and
    Nagle's algorithm would hold the body back until the server's delayed ACK (about 40 ms).
    Through `proxy` when the environment names one (httpx ignores it once given a transport)."""
    try:
        return httpx.AsyncHTTPTransport(
            verify=_tls(),
            limits=httpx.Limits(max_connections=_POOL_SIZE, max_keepalive_connections=_POOL_SIZE),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            proxy=proxy,
        )
    except ImportError:  # a socks5:// proxy without socksio
        raise LabelerError(
            "a socks5:// proxy needs the socksio package: pip install 'httpx[socks]'"
        ) from None


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every connection pool of the process: making one loads the CA bundle
    (20-30 ms), and a labeling run opens a few pools per shard."""
    return httpx.create_ssl_context()


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms."""
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from a thread that already has a running loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
