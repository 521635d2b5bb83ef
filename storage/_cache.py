"""The response cache: every teacher answer, keyed by a canonical hash of the full request.

SQLite in WAL mode; an answer is committed before the caller uses it, so a crash or a re-run
never pays for the same request twice. A damaged file, or one deleted or replaced under a
running labeler, stops the run with a StoreError rather than losing what was paid for.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from ._store import StoreError

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
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed_at REAL NOT NULL
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
CREATE TABLE IF NOT EXISTS holds (
    tag TEXT,
    owner TEXT NOT NULL,
    usd REAL NOT NULL,
    held_at REAL NOT NULL
);
"""

# what each tag's ledger rows add up to (an untagged row's under ''), kept by a trigger as rows
# are written, whoever writes them: a budget reads it before every call, and summing a ledger
# of a million rows takes tens of milliseconds, all of them inside the write lock
_SPENT = (
    "CREATE TABLE spent (tag TEXT NOT NULL PRIMARY KEY, cost_usd REAL NOT NULL)",
    "INSERT INTO spent SELECT COALESCE(tag, ''), SUM(cost_usd) FROM ledger"
    " GROUP BY COALESCE(tag, '')",
    "CREATE TRIGGER ledger_spent AFTER INSERT ON ledger BEGIN"
    " INSERT INTO spent VALUES (COALESCE(NEW.tag, ''), NEW.cost_usd)"
    " ON CONFLICT(tag) DO UPDATE SET cost_usd = cost_usd + excluded.cost_usd; END",
)


def _add_spent(db: sqlite3.Connection) -> None:
    """The running totals of the ledger (`_SPENT`), added to a cache from before them with what
    its ledger already holds; once, whichever process opens it first."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spent'"
    if db.execute(exists).fetchone():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not db.execute(exists).fetchone():
            for statement in _SPENT:
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _alive(owner: str) -> bool:
    """Whether the process that took a claim (HOST:PID:...) may still be running: one on this
    machine that has exited is not."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stored_json(value: Any) -> str:
    """`canonical_json`, with any lone surrogate (JSON's \\ud800 in an answer) kept as its
    escape: SQLite and files hold UTF-8, which has no such character; json.loads reads it back
    as it was received."""
    text = canonical_json(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON: the same request always has the same key."""
    # surrogatepass: a crafted request with a lone surrogate gets a key, not an exception
    return hashlib.sha256(canonical_json(request).encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """A durable map from request to response, with what each response cost.

    Every answer that used tokens is also a row of the spend ledger, tagged with `tag` (the
    config's name), so `spend()` can say what each dataset cost and a budget can span runs.

    A file that is not a cache, or is damaged, raises `StoreError` and is left as it is.

    Parameters
    ----------
    path : the SQLite file; its folder is created when missing.
    tag : what ledger rows written through this object are filed under.
    """

    def __init__(self, path: str | Path, tag: str | None = None, *, claims: bool = False) -> None:
        self.path = Path(path)
        self.tag = tag
        # several processes labeling at once (a Dask cluster's workers): a request is claimed
        # before it is sent, so a second asker waits for the first one's answer
        self.claims = claims
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()
        self._db = self._open()
        self._identity = _identity(self.path)
        self._rescued: str | None = None  # what became of the answers, once copied aside

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open cache {self.path}: {exc}") from None
        try:
            # the first statement reads the header: a file that is not a database fails here,
            # before anything could be written to it
            # wait for other writers (other processes labeling into the same store) first
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            _add_spent(db)
        except sqlite3.Error as exc:
            db.close()
            raise self._error(exc) from None
        return db

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return StoreError(
                f"cache {self.path} is damaged ({exc}): move it aside, e.g. "
                f"mv {self.path} {self.path}.damaged, and run again; its answers would be paid again"
            )
        return StoreError(f"cannot use cache {self.path}: {exc}")

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, one thread at a time, with SQLite's errors as StoreErrors."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with self._using():
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (request_key(request),)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def claim(self, request: dict[str, Any], stale_s: float = 600.0) -> bool:
        """Take the right to send `request`: False when its answer is already stored or another
        asker holds a claim younger than `stale_s` (a dead one's claim expires); the claim ends
        when the answer is `put`, or at `release`."""
        key, now = request_key(request), time.time()
        with self._using(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone():
                return False
            held = self._db.execute(
                "SELECT owner, claimed_at FROM claims WHERE key = ?", (key,)
            ).fetchone()
            if held and held[0] != self._owner and now - held[1] < stale_s and _alive(held[0]):
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (key, self._owner, now)
            )
        return True

    def release(self, request: dict[str, Any]) -> None:
        """Give up a claim without an answer (the request failed): another asker may send it."""
        with self._using(), self._db:
            self._db.execute(
                "DELETE FROM claims WHERE key = ? AND owner = ?",
                (request_key(request), self._owner),
            )

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
        with self._using(), self._db:
            self._check_same_file()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    stored_json(request),
                    stored_json(response),
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
            if self.claims:
                self._db.execute("DELETE FROM claims WHERE key = ?", (key,))

    def forget(self, request: dict[str, Any], response: dict[str, Any]) -> bool:
        """Drop the stored answer to `request` if it is still `response` (one that could not be
        used, to be asked again); its ledger row stays, it was paid. True when it was dropped."""
        with self._using(), self._db:
            self._check_same_file()
            cursor = self._db.execute(
                "DELETE FROM responses WHERE key = ? AND response = ?",
                (request_key(request), stored_json(response)),
            )
        return cursor.rowcount > 0

    # --- a budget shared by every process labeling into this file, in its ledger -----------
    def hold(self, usd: float, limit_usd: float) -> int | None:
        """Reserve `usd` for a call about to be sent, unless what the ledger holds for this
        cache's tag, what live askers hold and `usd` would pass `limit_usd`; the hold's id, or
        None. Holds of processes that have exited are dropped."""
        with self._using(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._drop_dead_holds()
            if self._committed() + usd > limit_usd:
                return None
            cursor = self._db.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?)", (self.tag, self._owner, usd, time.time())
            )
        return cursor.lastrowid

    def unhold(self, hold: int) -> None:
        """End a reservation (its call was booked by `put`, or failed)."""
        with self._using(), self._db:
            self._db.execute("DELETE FROM holds WHERE rowid = ?", (hold,))

    def book(self, request: dict[str, Any], cost_usd: float) -> None:
        """A ledger row for a cost without an answer (a call that may have been billed)."""
        body = request.get("body", request)
        model = body.get("model") if isinstance(body, dict) else None
        with self._using(), self._db:
            self._db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, 0, 0, ?, ?)",
                (time.time(), self.tag, model, cost_usd, request_key(request)),
            )

    def committed(self) -> float:
        """Dollars the ledger holds for this cache's tag, and live askers' holds."""
        with self._using():
            return self._committed()

    def _committed(self) -> float:
        spent, held = self._db.execute(
            "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM spent WHERE tag = COALESCE(?, '')),"
            " (SELECT COALESCE(SUM(usd), 0) FROM holds WHERE tag IS ?)",
            (self.tag, self.tag),
        ).fetchone()
        return float(spent) + float(held)

    def _drop_dead_holds(self) -> None:
        owners = self._db.execute("SELECT DISTINCT owner FROM holds").fetchall()
        for (owner,) in owners:
            if not _alive(owner):
                self._db.execute("DELETE FROM holds WHERE owner = ?", (owner,))

    def totals(self) -> dict[str, float]:
        """Entries and what they cost in all."""
        with self._using():
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
        with self._using():
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

    def outputs(self, tag: str, model: str, max_tokens: int | None = None) -> tuple[int, int]:
        """(calls, output tokens in all) of the ledger's rows for `tag` and `model`: how long the
        answers paid for so far were, to estimate the next ones.

        Parameters
        ----------
        tag : str
            The config name the rows were filed under.
        model : str
            The model the requests named.
        max_tokens : int or None, default=None
            Only requests that capped the answer at this many tokens, when given: another cap
            allows other lengths.
        """
        query = (
            "SELECT COUNT(*), COALESCE(SUM(l.output_tokens), 0) FROM ledger l"
            " JOIN responses r ON r.key = l.key WHERE l.tag = ? AND l.model = ?"
            # not the rows `book` wrote for calls that may have been billed: they have no tokens
            " AND (l.input_tokens > 0 OR l.output_tokens > 0)"
        )
        params: tuple[object, ...] = (tag, model)
        if max_tokens is not None:
            # the body sits under "body" when the request names its endpoint too, as in put()
            query += (
                " AND COALESCE(json_extract(r.request, '$.body.max_tokens'),"
                " json_extract(r.request, '$.max_tokens')) = ?"
            )
            params += (max_tokens,)
        with self._using():
            calls, tokens = self._db.execute(query, params).fetchone()
        return int(calls), int(tokens)

    def export(self, path: str | Path) -> int:
        """Write every answer (request, response, tokens, cost, when) to `path` as JSON lines
        (gzip-compressed when the name ends in .gz), for another store to import; returns how
        many. Requests hold no secrets (keys never enter the cache), so the file holds none."""
        out = Path(path)
        count = 0
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        opener = gzip.open if out.suffix == ".gz" else open
        try:
            with self._using(), opener(tmp, "wt", encoding="utf-8") as f:
                rows = self._db.execute(
                    "SELECT key, request, response, input_tokens, output_tokens, cost_usd,"
                    " created_at FROM responses ORDER BY created_at, key"
                )
                for key, request, response, inp, outp, cost, created in rows:
                    entry = {
                        "key": key,
                        "request": json.loads(request),
                        "response": json.loads(response),
                        "input_tokens": inp,
                        "output_tokens": outp,
                        "cost_usd": cost,
                        "created_at": created,
                    }
                    f.write(stored_json(entry) + "\n")
                    count += 1
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {out}: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return count

    def import_answers(self, path: str | Path) -> dict[str, int]:
        """Add the answers of a file `export` wrote. An answer already here is never overwritten;
        a line whose key is not the hash of its request (edited, or not an export) is rejected.
        A genuine line whose counts are not numbers a ledger can hold (negative, infinite, NaN,
        too large) stops the import with a StoreError naming the line: nothing is imported.
        Imported answers are not spend: the ledger is left alone. Returns {added, present,
        rejected}."""
        source = Path(path)
        if not source.is_file():
            raise StoreError(f"no such file to import: {source}")
        counts = {"added": 0, "present": 0, "rejected": 0}
        opener = gzip.open if source.suffix == ".gz" else open
        try:
            with opener(source, "rt", encoding="utf-8") as f, self._using(), self._db:
                self._check_same_file()
                self._db.execute("BEGIN IMMEDIATE")
                for number, line in enumerate(f, 1):
                    try:
                        row = _import_row(line)
                    except ValueError as exc:
                        raise StoreError(
                            f"{source} line {number}: {exc}; nothing was imported"
                        ) from None
                    if row is None:
                        counts["rejected"] += 1
                        continue
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", row
                    )
                    counts["added" if cursor.rowcount else "present"] += 1
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            raise StoreError(f"cannot read {source}: {exc}; nothing was imported") from None
        return counts

    def _check_same_file(self) -> None:
        """Raise when the file at `path` is no longer the one opened: writing on would store
        answers in a deleted file, lost at close. What the open file holds is copied aside."""
        if _identity(self.path) == self._identity:
            return
        if self._rescued is None:
            self._rescued = self._rescue()
        raise StoreError(
            f"cache file {self.path} was deleted or replaced while labeling: nothing more was "
            f"written to it; {self._rescued}"
        )

    def _rescue(self) -> str:
        """Copy the open (perhaps deleted) database to a new file beside `path`; says what to do."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.rescued-{stamp}-{os.getpid()}")
        try:
            with closing(sqlite3.connect(target)) as copy:
                self._db.backup(copy)
        except (sqlite3.Error, OSError) as exc:
            return (
                f"its answers could not be copied aside ({exc}): stop the run and put the file back"
            )
        return (
            f"the answers it held were copied to {target}: stop the run, move that copy to "
            f"{self.path} (setting aside whatever is there now) and run again"
        )

    def __len__(self) -> int:
        return int(self.totals()["entries"])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_row(line: str) -> tuple[Any, ...] | None:
    """A responses row from one exported line; None when the line is not a whole, genuine
    answer (its key must be the hash of its request)."""
    try:
        entry = json.loads(line)
        request, response = entry["request"], entry["response"]
        numbers = [entry[k] for k in ("input_tokens", "output_tokens", "cost_usd", "created_at")]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(request, dict) or not isinstance(response, dict):
        return None
    if entry.get("key") != request_key(request):
        return None
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        return None
    inp, outp, cost, created = numbers
    for name, value in (("input_tokens", inp), ("output_tokens", outp)):
        if not (math.isfinite(value) and value == int(value) and 0 <= value < 2**63):
            raise ValueError(f"{name} is {value!r}, not a token count")
    for name, value in (("cost_usd", cost), ("created_at", created)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} is {value!r}, not a finite number from 0")
    return (
        entry["key"],
        stored_json(request),
        stored_json(response),
        int(inp),
        int(outp),
        float(cost),
        float(created),
    )


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
