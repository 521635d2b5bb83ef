"""A store in object storage: any fsspec URL (``s3://bucket/prefix``, ``gs://...``, ...).

The same layout and checks as a local store; what differs is how a version becomes visible, since
an object store has no rename. A writer first takes the version's number by creating
``datasets/NAME/vN/.claim`` only if it does not exist (an exclusive, conditional write: S3's
``If-None-Match: *``), so two writers never share a number; it then uploads the data file and the
card, and last the manifest, again only if none exists. A version is a folder with a manifest:
readers never see one without it, and a writer killed before its manifest leaves a claimed
number that is never reused (`gc` removes it later). The catalog is one object per version,
``catalog/NAME/vN.json``, written after the manifest.

Credentials come from the environment only (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ... as
the filesystem's library reads them); nothing here takes or writes a secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from . import _catalog
from ._store import (
    _VERSION,
    CLAIM_FILE,
    DATA_FILE,
    DATASETS,
    MANIFEST_FILE,
    DatasetRef,
    Store,
    StoreError,
    _folder,
    sha256_bytes,
)

CATALOG = "catalog"


class ObjectStore(Store):
    """A `Store` in object storage, made by ``Store("s3://bucket/prefix")``: see the module."""

    def __init__(self, root: str | Path) -> None:
        import fsspec  # type: ignore[import-untyped]

        self.location = str(root).rstrip("/")
        try:
            # listings are not cached: other writers add versions all the time
            self.fs, self.base = fsspec.core.url_to_fs(
                self.location, use_listings_cache=False, skip_instance_cache=True
            )
        except (ImportError, ValueError) as exc:
            raise StoreError(f"store {self.location!r}: {exc}") from None
        self.base = self.base.rstrip("/")
        self.root = Path(self.base)  # for messages only: every access goes through self.fs
        self._exclusive = False  # whether conditional writes were seen to work

    @property
    def datasets_dir(self) -> Path:
        raise StoreError(f"store {self.location} is in object storage: it has no local folder")

    def path(self, ref: DatasetRef) -> Path:
        raise StoreError(f"store {self.location} is in object storage: {ref} has no local folder")

    # --- where files are ------------------------------------------------------------------

    def _full(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _where(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    def _listing(self, rel: str) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(self._full(rel), detail=True))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self._where(rel)}: {exc}") from None

    def _dirs(self, rel: str) -> list[str]:
        found = [e["name"] for e in self._listing(rel) if e["type"] == "directory"]
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in found)

    def _entries(self, rel: str) -> list[str]:
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._listing(rel))

    def _isdir(self, rel: str) -> bool:
        return bool(self._listing(rel))

    def _isfile(self, rel: str) -> bool:
        try:
            return bool(self.fs.isfile(self._full(rel)))
        except OSError:
            return False

    def _read(self, rel: str) -> bytes:
        data: bytes = self.fs.cat_file(self._full(rel))
        return data

    def _open(self, rel: str) -> BinaryIO:
        handle: BinaryIO = self.fs.open(self._full(rel), "rb")
        return handle

    def versions(self, name: str) -> list[str]:
        """The versions of `name` with a manifest: a number taken by a writer that has not
        finished (or never will) is not a version."""
        found = [
            v
            for v in self._dirs(f"{DATASETS}/{name}")
            if _VERSION.fullmatch(v) and self._isfile(f"{DATASETS}/{name}/{v}/{MANIFEST_FILE}")
        ]
        return sorted(found, key=lambda v: int(v[1:]))

    # --- writing a version ------------------------------------------------------------------

    def _stage(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix="stillroom-stage-"))

    def _create(self, rel: str, data: bytes) -> bool:
        """Write `data` at `rel` only when nothing is there; False when something was."""
        try:
            self.fs.pipe_file(self._full(rel), data, mode="create")
        except FileExistsError:
            return False
        return True

    def _check_exclusive(self) -> None:
        """Refuse a filesystem whose "create only if absent" is not one: two writers could then
        take the same number. Checked once per store, before its first commit."""
        if self._exclusive:
            return
        probe = f"{CATALOG}/.probe-{uuid.uuid4().hex}"
        try:
            first, second = self._create(probe, b"1"), self._create(probe, b"2")
            self.fs.rm_file(self._full(probe))
        except OSError as exc:
            raise StoreError(f"cannot write in {self.location}: {exc}") from None
        if not (first and not second):
            raise StoreError(
                f"store {self.location}: this object storage does not refuse a second write of "
                "the same object (conditional writes, If-None-Match), so two writers could take "
                "the same version number; use a local store, or storage that supports them"
            )
        self._exclusive = True

    def _publish(self, name: str, tmp: Path, manifest: dict[str, Any]) -> DatasetRef:
        self._check_exclusive()
        number = self._last_number(name) + 1
        token = uuid.uuid4().hex
        claim = json.dumps({"pid": os.getpid(), "at": time.time(), "token": token}).encode()
        try:
            while not self._create(f"{DATASETS}/{name}/v{number}/{CLAIM_FILE}", claim):
                number += 1  # another writer took this number
            ref = DatasetRef(name, f"v{number}")
            text = self._finish(ref, number, tmp, manifest)
            for path in sorted(tmp.iterdir()):
                if path.name != MANIFEST_FILE:
                    self.fs.put_file(str(path), self._full(f"{_folder(ref)}/{path.name}"))
            # still ours? (a `gc` that judged this writer dead may have freed the number)
            if json.loads(self._read(f"{_folder(ref)}/{CLAIM_FILE}")).get("token") != token:
                raise StoreError(f"{ref}: this writer's claim on the number was lost; run again")
            if not self._create(f"{_folder(ref)}/{MANIFEST_FILE}", text.encode()):
                raise StoreError(f"{ref}: a manifest appeared under a number this writer claimed")
        except FileNotFoundError:
            raise StoreError(
                f"{name}: this writer's claim on a number was lost; run again"
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot write in {self.location}: {exc}") from None
        self._record(ref, sha256_bytes(text.encode()), manifest["content_sha256"])
        # the version is whole: a claim left behind is ignored by readers
        with contextlib.suppress(OSError):
            self.fs.rm_file(self._full(f"{_folder(ref)}/{CLAIM_FILE}"))
        return ref

    # --- the catalog: one object per version ------------------------------------------------

    def _catalog_versions(self, name: str) -> list[str]:
        return [e.removesuffix(".json") for e in self._entries(f"{CATALOG}/{name}")]

    def _catalog_entry(self, ref: DatasetRef) -> _catalog.Entry | None:
        try:
            raw = self._read(f"{CATALOG}/{ref.name}/{ref.version}.json")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"catalog entry of {ref} is unreadable ({exc})") from None
        return _catalog._parse(raw.decode(errors="replace"))

    def _record(self, ref: DatasetRef, manifest_sha256: str, data_sha256: str) -> None:
        entry = _catalog.Entry(ref.name, ref.version, manifest_sha256, data_sha256)
        line = json.dumps(asdict(entry), sort_keys=True).encode()
        try:
            if not self._create(f"{CATALOG}/{ref.name}/{ref.version}.json", line):
                raise StoreError(f"{ref}: the catalog already has an entry for this version")
        except OSError as exc:
            raise StoreError(
                f"{ref} was written but could not be added to the catalog ({exc}); it verifies "
                "against its own manifest only"
            ) from None

    def upload_run(self, folder: Path) -> str:
        """Copy a run folder (report, students, model cards) to ``STORE/runs/<folder name>``;
        returns its URL there."""
        target = f"runs/{folder.name}"
        try:
            # file by file: a folder put onto one that exists would land inside it
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                relative = path.relative_to(folder).as_posix()
                self.fs.put_file(str(path), self._full(f"{target}/{relative}"))
        except OSError as exc:
            raise StoreError(f"cannot copy {folder} to {self._where(target)}: {exc}") from None
        return self._where(target)

    # --- retention ----------------------------------------------------------------------------

    def gc(self, *, grace_s: float = 3600.0, dry_run: bool = False) -> list[tuple[str, int]]:
        """Remove numbers that writers claimed and never made a version of: no manifest and no
        catalog entry (a version that lost its manifest is damage for `verify`, not a leftover),
        once nothing under them changed, and the claim is older, than `grace_s` seconds.
        Listing errors stop it: nothing is removed on a guess. Returns (path, bytes)."""
        now = time.time()
        found: list[tuple[str, int]] = []
        for name in self.names():
            recorded = set(self._catalog_versions(name))
            for v in self._dirs(f"{DATASETS}/{name}"):
                rel = f"{DATASETS}/{name}/{v}"
                if not _VERSION.fullmatch(v) or v in recorded:
                    continue
                listing = self.fs.find(self._full(rel), detail=True)
                names = {path.rsplit("/", 1)[-1] for path in listing}
                if MANIFEST_FILE in names:
                    continue
                objects = listing.values()
                newest = max((_modified(o) for o in objects), default=0.0)
                if CLAIM_FILE in names:
                    try:
                        claimed = json.loads(self._read(f"{rel}/{CLAIM_FILE}")).get("at", 0.0)
                        newest = max(newest, float(claimed))
                    except (ValueError, TypeError):
                        pass  # a claim that is not JSON: its object's time stands
                if now - newest >= grace_s:
                    found.append((self._where(rel), sum(int(o["size"]) for o in objects)))
                    if not dry_run:
                        self.fs.rm(self._full(rel), recursive=True)
        return found


def _modified(info: dict[str, Any]) -> float:
    stamp: Any = info.get("LastModified") or info.get("mtime") or info.get("created")
    if hasattr(stamp, "timestamp"):
        return float(stamp.timestamp())
    return float(stamp or 0.0)


__all__ = ["DATA_FILE", "ObjectStore"]
