"""Client-side rate limits: requests and tokens per minute as token buckets, and a shared pause
that a 429 or an exhausted x-ratelimit header puts on every request, not just the one that hit it.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SERVER_WAIT_S = 120.0
"""The longest pause a server's Retry-After or x-ratelimit-reset-* header may impose."""


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "0.5s") or plain seconds, in seconds."""
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def exhausted_for(headers: httpx.Headers) -> tuple[float, str] | None:
    """Seconds until the provider's request or token window resets, when it says none are left,
    and the header that says so."""
    waits: list[tuple[float, str]] = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is not None and reset is not None and remaining.strip() in ("0", "0.0"):
            seconds = parse_duration(reset)
            if seconds is not None:
                waits.append((seconds, f"x-ratelimit-reset-{kind}"))
    return max(waits) if waits else None


class _Bucket:
    """`per_minute` units a minute, spent at an even rate with bursts of at most `burst`."""

    def __init__(self, per_minute: float, burst: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst
        self.level = self.capacity
        self.stamp = time.monotonic()

    def wait_for(self, amount: float) -> float:
        """Take `amount` now (possibly going negative) and return how long to wait before using it."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """rpm and tpm caps (None = no cap) and a pause shared by every request of one client.

    All methods run on one event loop, so the state needs no lock.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        max_pause_s: float = MAX_SERVER_WAIT_S,
    ) -> None:
        # Starts evenly spaced at 0.998 x rpm: a bucket lets rate x T + 1 starts into a window T,
        # and the 0.2% headroom absorbs network jitter (a cold connection delays the first
        # request by ~10 ms), so the provider sees at most rpm in any 60 s it looks at.
        self.requests = _Bucket(rpm * 0.998, burst=1.0) if rpm else None
        self.tokens = _Bucket(tpm, burst=tpm / 60.0) if tpm else None
        self.resume_at = 0.0
        self.pauses = 0
        self.max_pause_s = max_pause_s

    async def acquire(self, tokens: int) -> None:
        waits = [self.resume_at - time.monotonic()]
        if self.requests is not None:
            waits.append(self.requests.wait_for(1.0))
        if self.tokens is not None:
            waits.append(self.tokens.wait_for(float(tokens)))
        delay = max(waits)
        if delay > 0:
            await asyncio.sleep(delay)
        # a pause that began while this request waited still applies to it
        while (left := self.resume_at - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the usage the endpoint reports is known."""
        if self.tokens is not None and actual >= 0:
            self.tokens.give_back(float(estimated - actual))

    def pause(self, seconds: float) -> None:
        """Hold every request of this client for `seconds` (from a 429 or exhausted headers), at
        most max_pause_s: a server's header must not stop a client for good."""
        until = time.monotonic() + min(seconds, self.max_pause_s)
        if until > self.resume_at:
            self.resume_at = until
            self.pauses += 1
