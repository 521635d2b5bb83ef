"""The store's catalog: ``ROOT/catalog.jsonl``, one line per committed version with the sha256 of
its manifest and of its data, appended when the version is committed.

A manifest edited by hand can re-hash the files it lists, but not the line written at commit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CATALOG_FILE = "catalog.jsonl"


@dataclass(frozen=True)
class Entry:
    """What a version was when it was committed."""

    name: str
    version: str
    manifest_sha256: str
    data_sha256: str


def append(root: Path, entry: Entry) -> None:
    """Add `entry` as one line, on disk (fsync) before returning.

    One ``write`` on an ``O_APPEND`` descriptor, so concurrent writers never interleave; a torn
    last line (a crash mid-write) is ended first, so it spoils only itself.
    """
    path = root / CATALOG_FILE
    created = not path.exists()
    line = json.dumps(
        {**asdict(entry), "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        sort_keys=True,
    )
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if torn else "") + line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_folder(root)


def read(root: Path) -> dict[tuple[str, str], Entry]:
    """Every version's entry, by (name, version); a later line for the same version wins (a
    damaged version moved aside and its number written again). Torn lines are skipped."""
    path = root / CATALOG_FILE
    if not path.exists():
        return {}
    entries: dict[tuple[str, str], Entry] = {}
    for text in path.read_text(errors="replace").splitlines():
        entry = _parse(text)
        if entry is not None:
            entries[(entry.name, entry.version)] = entry
    return entries


def _parse(text: str) -> Entry | None:
    try:
        row = json.loads(text)
        entry = Entry(row["name"], row["version"], row["manifest_sha256"], row["data_sha256"])
    except (ValueError, TypeError, KeyError):
        return None
    return entry if all(isinstance(v, str) for v in asdict(entry).values()) else None


def fsync_folder(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
