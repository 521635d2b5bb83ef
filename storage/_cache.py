"""The response cache: every teacher answer, keyed by a canonical hash of the full request.

SQLite in WAL mode; an answer is committed before the caller uses it, so a crash or a re-run
never pays for the same request twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    created_at REAL NOT NULL,
    tag TEXT,
    model TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    key TEXT NOT NULL
);
"""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON: the same request always has the same key."""
    return hashlib.sha256(canonical_json(request).encode()).hexdigest()


class ResponseCache:
    """A durable map from request to response, with what each response cost.

    Every answer that used tokens is also a row of the spend ledger, tagged with `tag` (the
    config's name), so `spend()` can say what each dataset cost and a budget can span runs.

    Parameters
    ----------
    path : the SQLite file; its folder is created when missing.
    tag : what ledger rows written through this object are filed under.
    """

    def __init__(self, path: str | Path, tag: str | None = None) -> None:
        self.path = Path(path)
        self.tag = tag
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (request_key(request),)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(
        self,
        request: dict[str, Any],
        response: dict[str, Any],
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        key, now = request_key(request), time.time()
        body = request.get("body", request)
        model = body.get("model") if isinstance(body, dict) else None
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    canonical_json(request),
                    canonical_json(response),
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    now,
                ),
            )
            if input_tokens or output_tokens or cost_usd:
                self._db.execute(
                    "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (now, self.tag, model, input_tokens, output_tokens, cost_usd, key),
                )

    def totals(self) -> dict[str, float]:
        """Entries and what they cost in all."""
        with self._lock:
            n, inp, out, cost = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
                " COALESCE(SUM(cost_usd), 0) FROM responses"
            ).fetchone()
        return {"entries": n, "input_tokens": inp, "output_tokens": out, "cost_usd": cost}

    def spend(self, tag: str | None = None) -> list[dict[str, Any]]:
        """The ledger summed by tag and model (only `tag`'s rows when given)."""
        query = (
            "SELECT tag, model, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd),"
            " MIN(created_at), MAX(created_at) FROM ledger"
            + (" WHERE tag = ?" if tag is not None else "")
            + " GROUP BY tag, model ORDER BY tag, model"
        )
        with self._lock:
            rows = self._db.execute(query, (tag,) if tag is not None else ()).fetchall()
        names = (
            "tag",
            "model",
            "calls",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "first",
            "last",
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    def spent(self, tag: str) -> float:
        """Dollars the ledger holds for `tag`."""
        return float(sum(row["cost_usd"] for row in self.spend(tag)))

    def __len__(self) -> int:
        return int(self.totals()["entries"])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
