"""Immutable, versioned datasets: Parquet + manifest.json + a dataset card, in a local store.

A version is written in a temporary folder and renamed into place, so readers never see half
of one and two writers never get the same version number; the catalog keeps what each version
was at commit, and every read checks the version against it before use.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import _catalog, _hub
from ._card import render_card

DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"
CLAIM_FILE = ".claim"
"""An object store's mark that a writer took a version's number (removed once it is whole)."""
_PROVENANCE_KEYS = ("terms", "restrictions", "teacher", "task")
"""Manifest keys that, changed, make the same data another version: what it may be used for, or
who made it and how."""
DATASETS = "datasets"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"v(\d+)")
# a version folder, or one moved aside (v3.damaged): its number is never given out again
_TAKEN = re.compile(r"v(\d+)(?:\D.*)?")
# Parquet names a list's items "element"; Arrow, and so the manifests, call them "item"
_LIST_ITEM = re.compile(r"(list<)element: ")


class StoreError(Exception):
    """A missing or damaged dataset, or a bad name."""


@dataclass(frozen=True)
class Licence:
    """The source data's licence: an SPDX id (or NOASSERTION / LicenseRef-...) and its statement."""

    spdx: str
    statement: str = ""
    source: str = ""
    citation: str = ""

    def __post_init__(self) -> None:
        if not self.spdx.strip():
            raise StoreError("a licence needs an SPDX id (or NOASSERTION)")


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> tuple[str, str | None]:
        name, _, version = text.partition("@")
        return name, (version or None)


@dataclass
class VerifyResult:
    """What `Store.verify` found: `problems` (the version is damaged when there is any) and
    `notes` (worth saying, not damage: e.g. a version older than the catalog)."""

    ref: DatasetRef
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return _sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """A folder of versioned datasets: ``ROOT/datasets/NAME/vN/{data.parquet,manifest.json,README.md}``
    and ``ROOT/catalog.jsonl``.

    Parameters
    ----------
    root : a local folder (created on first write).
    """

    def __new__(cls, root: str | Path = "") -> Store:  # "" when unpickled
        # any fsspec URL (s3://bucket/prefix, ...) is an object store: same API, same checks
        if cls is Store and is_remote(str(root)):
            from ._remote import ObjectStore

            remote: Store = super().__new__(ObjectStore)
            return remote
        return super().__new__(cls)

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.root = Path(text.removeprefix("file://"))
        self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"store {self.root} is a file, not a folder: name a folder (it is created on first write)"
            )

    # --- where files are: every read and listing goes through these (ObjectStore overrides) ---

    def _where(self, rel: str) -> str:
        """A path inside the store, as messages name it."""
        return str(self.root / rel)

    def _dirs(self, rel: str) -> list[str]:
        """The names of the folders in `rel` ([] when it is not a folder)."""
        folder = self.root / rel
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _entries(self, rel: str) -> list[str]:
        """The names of everything in `rel` ([] when it is not a folder)."""
        folder = self.root / rel
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def _isdir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def _isfile(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def _read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def _open(self, rel: str) -> BinaryIO:
        return (self.root / rel).open("rb")

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def catalog_path(self) -> Path:
        return self.root / _catalog.CATALOG_FILE

    def names(self) -> list[str]:
        return [name for name in self._dirs(DATASETS) if _NAME.match(name)]

    def versions(self, name: str) -> list[str]:
        found = [v for v in self._dirs(f"{DATASETS}/{name}") if _VERSION.fullmatch(v)]
        return sorted(found, key=lambda v: int(v[1:]))

    def resolve(self, spec: str) -> DatasetRef:
        """``NAME`` (latest version) or ``NAME@vN`` to a ref that exists."""
        name, version = DatasetRef.parse(spec)
        versions = self.versions(name) if _NAME.match(name) else []
        if not versions:
            raise StoreError(f"no dataset named {name!r} in store {self.location}")
        if version is None:
            return DatasetRef(name, versions[-1])
        if version not in versions:
            raise StoreError(
                f"dataset {name!r} has no version {version!r} (has {', '.join(versions)})"
            )
        return DatasetRef(name, version)

    def path(self, ref: DatasetRef) -> Path:
        return self.datasets_dir / ref.name / ref.version

    def manifest(self, ref: DatasetRef) -> dict[str, Any]:
        try:
            return self._read_manifest(ref)[1]
        except _Damage as exc:
            raise StoreError(f"{ref}: {exc}") from None

    def _read_manifest(self, ref: DatasetRef) -> tuple[bytes, dict[str, Any]]:
        """The manifest's bytes (what the catalog hashed) and its content."""
        try:
            raw = self._read(f"{_folder(ref)}/{MANIFEST_FILE}")
        except FileNotFoundError:
            raise _Damage(f"{MANIFEST_FILE} is missing") from None
        except OSError as exc:
            raise _Damage(f"unreadable manifest ({exc.strerror or exc})") from None
        return raw, _parse_manifest(raw)

    def load(
        self, ref: DatasetRef, *, verify: bool = True, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The version's table (only `columns`, when given).

        Parameters
        ----------
        verify : bool, default=True
            Check the version first (as `verify` does, on the very bytes that are then read) and
            raise `StoreError` when it is damaged; False only reads the Parquet file.
        """
        if not verify:
            try:
                with self._open(f"{_folder(ref)}/{DATA_FILE}") as f:
                    return pq.read_table(f, columns=columns)
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"{ref}: unreadable data file ({exc})") from None
        with self._verified(ref) as data:
            return data.read(columns=columns)

    def scan(
        self, ref: DatasetRef, *, batch_size: int = 65_536, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The version's records in batches, verified first (as `load`): memory stays that of a
        batch (and a row group), however many records the version holds."""
        with self._verified(ref) as data:
            try:
                yield from data.iter_batches(batch_size=batch_size, columns=columns)
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"{ref}: unreadable data file ({exc})") from None

    @contextmanager
    def _verified(self, ref: DatasetRef) -> Iterator[pq.ParquetFile]:
        """The version's data file, open, once `_examine` found nothing wrong with it: what is
        read next comes from the very file that was hashed (one open handle)."""
        result, data = self._examine(ref)
        try:
            if data is None or not result.ok:
                more = len(result.problems) - 1
                raise StoreError(
                    f"{ref} is damaged: {result.problems[0]}"
                    + (f" (and {more} more)" if more > 0 else "")
                    + f"; run `stillroom datasets verify {ref}` for details"
                )
            yield data
        finally:
            if data is not None:
                data.close(force=True)  # the file it was given, too

    def dataset_dict(self, ref: DatasetRef, held_out: Sequence[bool] | None = None) -> Any:
        """The version as a `datasets.DatasetDict` (verified first): ``train``, and ``test`` of
        the records `held_out` marks; class labels as a `ClassLabel`, probabilities as a list of
        one float per label."""
        return _hub.dataset_dict(self.load(ref), self.manifest(ref), held_out)

    def export(
        self, ref: DatasetRef, folder: str | Path, held_out: Sequence[bool] | None = None
    ) -> Path:
        """Write the version (verified first) as a folder `datasets.load_dataset` reads, with a
        dataset card the Hub accepts; see `dataset_dict` for the splits and features."""
        return _hub.export_folder(self.load(ref), self.manifest(ref), folder, held_out)

    def commit(
        self,
        name: str,
        table: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        *,
        licence: Licence,
        schema: pa.Schema | None = None,
        parent: DatasetRef | None = None,
        metadata: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        message: str | Callable[[], str] = "",
        command: str | None = None,
    ) -> DatasetRef:
        """Write `table` as the next version of `name`; the same content on the same parent
        under the same licence as the latest version returns that version instead of a copy.

        Lineage: `parent` is what the version was made from (a labeled version's source), and
        the manifest also names the `previous` version of `name` (None for the first), the
        `message` and the `command` that made it (`Store.log` walks the chain).

        The latest version is verified first: when it is damaged nothing is written and a
        `StoreError` says how to set it aside. A version folder with no manifest.json is not
        a version (commit writes the manifest before the folder appears); it is left as it is
        and its number is not used again.

        `table` may be a `pyarrow.RecordBatchReader`, or any iterable of record batches with their
        `schema` (a generator: its work, and any exception or Ctrl-C in it, stays in Python,
        not behind Arrow's reader): its batches are written as they come
        (row groups of at most 65,536 rows, as a table's are), so memory stays that of a batch
        however many records the version holds. `metadata` and `message` may then be functions,
        called once every batch is written (a streamed labeling run knows its counts only then).
        """
        if not _NAME.match(name):
            raise StoreError(
                f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-'"
            )
        tmp = self._stage(name)
        held = hold(tmp)  # gc leaves the folder of a live writer alone, however slow it is
        try:
            data_path = tmp / DATA_FILE
            rows, schema = _write_parquet(table, data_path, schema)
            content = sha256_file(data_path)
            metadata = metadata() if callable(metadata) else metadata
            message = message() if callable(message) else message
            latest = self._latest_with_manifest(name)
            if latest is not None and self._unchanged(latest, content, parent, licence, metadata):
                return latest
            manifest = {
                "name": name,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": rows,
                "schema": {f.name: str(f.type) for f in schema},
                "content_sha256": content,
                "parent": str(parent) if parent else None,
                "message": message,
                "command": command,
                "licence": licence.__dict__,
                **(metadata or {}),
            }
            return self._publish(name, tmp, manifest)
        finally:
            release(held)
            shutil.rmtree(tmp, ignore_errors=True)

    def _stage(self, name: str) -> Path:
        """A new local folder where a version's files are written before they are published:
        inside the dataset's folder, so that publishing is one rename."""
        folder = self.datasets_dir / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        except OSError as exc:
            raise StoreError(f"cannot write in {folder}: {exc.strerror or exc}") from None

    def log(self, name: str) -> list[dict[str, Any]]:
        """The versions of `name`, newest first, each as its lineage: version, created_at, rows,
        parent, previous, message, command (a version whose manifest cannot be read says so in
        `problem`)."""
        if not self.versions(name):
            raise StoreError(f"no dataset named {name!r} in store {self.location}")
        entries: list[dict[str, Any]] = []
        for version in reversed(self.versions(name)):
            ref = DatasetRef(name, version)
            try:
                manifest = self.manifest(ref)
            except StoreError as exc:
                entries.append({"version": str(ref), "problem": str(exc)})
                continue
            entries.append(
                {"version": str(ref), "problem": None}
                | {
                    key: manifest.get(key)
                    for key in ("created_at", "rows", "parent", "previous", "message", "command")
                }
            )
        return entries

    def gc(self, *, grace_s: float = 3600.0, dry_run: bool = False) -> list[tuple[str, int]]:
        """Remove what no version references: the temporary folders of commits that never
        finished, and numbered folders that never became a version (no manifest.json), once
        nothing has changed in them for `grace_s` seconds (a commit in progress is younger).
        Versions, the catalog and the cache are never touched. Returns (path, bytes) of what
        was (with `dry_run`, would be) removed."""
        if not self.root.joinpath(DATASETS).is_dir():
            return []
        recorded = set(self._catalog())
        leftovers = [
            entry
            for folder in sorted(p for p in self.datasets_dir.iterdir() if p.is_dir())
            for entry in sorted(p for p in folder.iterdir() if p.is_dir())
            # a committed version that lost its manifest is damage (verify), not a leftover
            if entry.name.startswith(".tmp-")
            or (
                _VERSION.fullmatch(entry.name) is not None
                and not (entry / MANIFEST_FILE).exists()
                and (folder.name, entry.name) not in recorded
            )
        ]
        return remove_stale(leftovers, grace_s, dry_run)

    def upload_run(self, folder: Path) -> str:
        """Where a run folder is in the store: a local store's are in it already (its `runs`
        folder, or wherever the user put them), so nothing is copied."""
        return str(folder)

    def _latest_with_manifest(self, name: str) -> DatasetRef | None:
        for version in reversed(self.versions(name)):
            if self._isfile(f"{DATASETS}/{name}/{version}/{MANIFEST_FILE}"):
                return DatasetRef(name, version)
        return None

    def _unchanged(
        self,
        latest: DatasetRef,
        content: str,
        parent: DatasetRef | None,
        licence: Licence,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Whether `latest` already holds this content; raises when `latest` is damaged, since
        neither returning it nor quietly writing past it would be right."""
        result = self.verify(latest)
        if not result.ok:
            path = self._where(_folder(latest))
            raise StoreError(
                f"{latest}, the latest version of {latest.name!r}, is damaged ({result.problems[0]}); "
                f"nothing was written. Move it aside (mv {path} {path}.damaged) and run again to "
                f"write a new version; `stillroom datasets verify {latest}` lists every problem"
            )
        previous = self.manifest(latest)
        same = (previous.get("content_sha256"), previous.get("parent"), previous.get("licence"))
        if same != (content, str(parent) if parent else None, licence.__dict__):
            return False
        # the same data under other terms, or from another teacher or prompt, is another version
        return all(previous.get(key) == (metadata or {}).get(key) for key in _PROVENANCE_KEYS)

    def _publish(self, name: str, tmp: Path, manifest: dict[str, Any]) -> DatasetRef:
        folder = self.datasets_dir / name
        number = self._last_number(name) + 1
        while True:
            ref = DatasetRef(name, f"v{number}")
            text = self._finish(ref, number, tmp, manifest)
            for p in tmp.iterdir():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(tmp, folder / ref.version)  # fails when another writer took this number
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StoreError(
                        f"cannot publish {ref} in {folder}: {exc.strerror or exc}"
                    ) from None
                number += 1
                continue
            _catalog.fsync_folder(folder)
            self._record(ref, sha256_bytes(text.encode()), manifest["content_sha256"])
            return ref

    def _finish(self, ref: DatasetRef, number: int, tmp: Path, manifest: dict[str, Any]) -> str:
        """Complete the staged version as `ref`: its card, its files' digests and its manifest
        (written into `tmp`, returned as text)."""
        manifest["version"] = ref.version
        # the version this one follows: the newest below its number, whoever wrote it
        below = [v for v in self.versions(ref.name) if int(v[1:]) < number]
        manifest["previous"] = str(DatasetRef(ref.name, below[-1])) if below else None
        (tmp / "README.md").write_text(render_card(manifest))
        manifest["files"] = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.iterdir())
            if p.name != MANIFEST_FILE
        }
        text = json.dumps(manifest, indent=2, sort_keys=True)
        (tmp / MANIFEST_FILE).write_text(text)
        return text

    def _last_number(self, name: str) -> int:
        """The highest number `name` ever used: its version folders, those moved aside and the
        catalog's lines, so no number is given to two different versions."""
        entries = self._entries(f"{DATASETS}/{name}")
        numbers = [int(m[1]) for entry in entries if (m := _TAKEN.fullmatch(entry))]
        numbers += [int(m[1]) for v in self._catalog_versions(name) if (m := _VERSION.fullmatch(v))]
        return max(numbers, default=0)

    def _catalog_versions(self, name: str) -> list[str]:
        """The versions of `name` the catalog recorded."""
        return [version for n, version in self._catalog() if n == name]

    def _catalog_entry(self, ref: DatasetRef) -> _catalog.Entry | None:
        """What the catalog recorded when `ref` was committed (None: nothing)."""
        return self._catalog().get((ref.name, ref.version))

    def _catalog(self) -> dict[tuple[str, str], _catalog.Entry]:
        try:
            return _catalog.read(self.root)
        except OSError as exc:
            raise StoreError(
                f"catalog {self.catalog_path} is unreadable ({exc.strerror or exc}): make it a "
                "readable file again (its lines are what verify checks manifests against)"
            ) from None

    def _record(self, ref: DatasetRef, manifest_sha256: str, data_sha256: str) -> None:
        entry = _catalog.Entry(ref.name, ref.version, manifest_sha256, data_sha256)
        try:
            _catalog.append(self.root, entry)
        except OSError as exc:
            raise StoreError(
                f"{ref} was written but could not be added to catalog {self.catalog_path} "
                f"({exc.strerror or exc}); it verifies against its own manifest only (`verify` "
                "notes the missing line)"
            ) from None

    def verify(self, ref: DatasetRef) -> VerifyResult:
        """Re-hash every file of a version against its manifest, check the manifest's rows,
        schema and labeling counts against the data, and the manifest and data against the
        digests the catalog recorded at commit."""
        result, data = self._examine(ref)
        if data is not None:
            data.close(force=True)  # the file it was given, too
        return result

    def _examine(self, ref: DatasetRef) -> tuple[VerifyResult, pq.ParquetFile | None]:
        """The verdict, and the data file open on the very handle that was hashed (None when
        there is none to read; the caller closes it). Nothing is held in memory but a block at
        a time: the rows and schema come from the file's footer, the labeling counts from its
        `error` column read a row group at a time."""
        result = VerifyResult(ref)
        folder = _folder(ref)
        if not self._isdir(folder):
            result.problems.append(f"version folder {self._where(folder)} is missing")
            return result, None
        try:
            raw, manifest = self._read_manifest(ref)
            listed = _listed_files(manifest)
        except _Damage as exc:
            result.problems.append(str(exc))
            return result, None
        data, digests = self._hash_files(folder, listed, result.problems)
        try:
            return self._judge(ref, result, folder, raw, manifest, listed, data, digests)
        except BaseException:
            if data is not None:
                data.close()
            raise

    def _judge(
        self,
        ref: DatasetRef,
        result: VerifyResult,
        folder: str,
        raw: bytes,
        manifest: dict[str, Any],
        listed: dict[str, str],
        data: BinaryIO | None,
        digests: dict[str, str],
    ) -> tuple[VerifyResult, pq.ParquetFile | None]:
        for entry in self._entries(folder):
            if entry not in listed and entry not in (MANIFEST_FILE, CLAIM_FILE):
                result.problems.append(f"{entry}: not in the manifest (added)")
        if DATA_FILE not in listed:
            result.problems.append(f"manifest: lists no {DATA_FILE}")
        elif manifest.get("content_sha256") != listed[DATA_FILE]:
            result.problems.append("manifest: content_sha256 does not match the data file")
        if (manifest.get("name"), manifest.get("version")) != (ref.name, ref.version):
            result.problems.append(
                f"manifest: describes {manifest.get('name')}@{manifest.get('version')}, not {ref}"
            )
        parsed = _parse_table(data, result.problems) if data is not None else None
        if parsed is None and data is not None:
            data.close()  # not a Parquet file: nothing will read it
        if parsed is not None:
            result.problems += _content_problems(manifest, parsed)
        self._check_catalog(result, sha256_bytes(raw), digests.get(DATA_FILE))
        return result, parsed

    def _hash_files(
        self, folder: str, listed: dict[str, str], problems: list[str]
    ) -> tuple[BinaryIO | None, dict[str, str]]:
        """The data file, open (hashed through this handle, read through it later), and each
        file's sha256, hashed a block at a time."""
        data: BinaryIO | None = None
        digests = {}
        for name, expected in sorted(listed.items()):
            rel = f"{folder}/{name}"
            if not self._isfile(rel):
                problems.append(f"{name}: missing")
                continue
            try:
                handle = self._open(rel)
            except OSError as exc:
                problems.append(f"{name}: unreadable ({exc})")
                continue
            try:
                digests[name] = _sha256_stream(handle)
            except OSError as exc:
                handle.close()
                problems.append(f"{name}: unreadable ({exc})")
                continue
            if name == DATA_FILE:
                handle.seek(0)
                data = handle
            else:
                handle.close()
            if digests[name] != expected:
                problems.append(f"{name}: sha256 differs from the manifest (modified)")
        return data, digests

    def _check_catalog(self, result: VerifyResult, manifest_sha: str, data_sha: str | None) -> None:
        try:
            entry = self._catalog_entry(result.ref)
        except StoreError as exc:
            result.problems.append(str(exc))
            return
        if entry is None:
            result.notes.append(
                f"not in {_catalog.CATALOG_FILE} (committed before the catalog existed): the "
                "manifest was checked against the data only"
            )
            return
        if entry.manifest_sha256 != manifest_sha:
            result.problems.append(
                f"{MANIFEST_FILE}: sha256 differs from the one {_catalog.CATALOG_FILE} recorded "
                "at commit (edited after commit)"
            )
        if data_sha is not None and entry.data_sha256 != data_sha:
            result.problems.append(
                f"{DATA_FILE}: sha256 differs from the one {_catalog.CATALOG_FILE} recorded at "
                "commit (replaced after commit)"
            )

    def list(self) -> list[dict[str, Any]]:
        """One summary per version, oldest first within each name.

        A version whose manifest is missing or unreadable does not stop the listing: its row
        has `problem` set (what is wrong) and None for the rest; `problem` is None otherwise.
        Only manifests are read; `verify` checks the files.
        """
        out = []
        for name in self.names():
            for version in self.versions(name):
                try:
                    manifest, problem = self._read_manifest(DatasetRef(name, version))[1], None
                except _Damage as exc:
                    manifest, problem = {}, str(exc)
                licence = manifest.get("licence")
                out.append(
                    {
                        "dataset": f"{name}@{version}",
                        "rows": manifest.get("rows"),
                        "created_at": manifest.get("created_at"),
                        "parent": manifest.get("parent"),
                        "licence": licence.get("spdx") if isinstance(licence, dict) else None,
                        "problem": problem,
                    }
                )
        return out


def hold(folder: Path) -> int | None:
    """Lock `folder` for as long as its writer lives (an advisory lock on the folder itself,
    released by `release` or by the process's end, even a SIGKILL): `remove_stale` never
    removes a held folder. Returns the lock's descriptor (None where locks do not work)."""
    try:
        return _lock(folder)
    except OSError:
        return None


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _lock(folder: Path) -> int:
    """A descriptor of `folder` holding its lock; BlockingIOError when another holds it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _held(folder: Path) -> bool:
    """Whether a live writer holds `folder` (see `hold`)."""
    try:
        release(_lock(folder))  # closing drops the lock this test took
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def remove_stale(
    folders: Sequence[Path], grace_s: float, dry_run: bool = False
) -> list[tuple[str, int]]:
    """Remove (unless `dry_run`) those of `folders` in which nothing changed for `grace_s`
    seconds and that no live writer holds (`hold`); returns their (path, bytes)."""
    now, found = time.time(), []
    for folder in folders:
        if _held(folder):
            continue
        files = [folder, *folder.rglob("*")]
        if now - max(f.stat().st_mtime for f in files) >= grace_s:
            found.append((folder, sum(f.stat().st_size for f in files if f.is_file())))
    if not dry_run:
        for path, _ in found:
            shutil.rmtree(path, ignore_errors=True)
    return [(str(path), size) for path, size in found]


class _Damage(Exception):
    """What is wrong with a version, without naming it (the caller adds the ref)."""


def _folder(ref: DatasetRef) -> str:
    """A version's folder, relative to the store's root."""
    return f"{DATASETS}/{ref.name}/{ref.version}"


def is_remote(root: str) -> bool:
    """Whether a store location is an fsspec URL other than a local file (s3://, gs://, ...)."""
    return "://" in root and not root.startswith("file://")


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise _Damage(f"unreadable manifest ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict):
        raise _Damage("unreadable manifest (not a JSON object)")
    return manifest


def _listed_files(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest's `files` as name -> sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(meta, dict) and isinstance(meta.get("sha256"), str) for meta in files.values()
    ):
        raise _Damage("manifest: 'files' is missing or malformed")
    return {name: meta["sha256"] for name, meta in files.items()}


def _sha256_stream(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _parse_table(data: BinaryIO, problems: list[str]) -> pq.ParquetFile | None:
    try:
        # no pre-buffering: a streamed read holds one row group, not a run of them
        return pq.ParquetFile(data, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        problems.append(f"{DATA_FILE}: not a readable Parquet file ({exc})")
        return None


ROW_GROUP = 65_536
"""The most rows per Parquet row group: what a streamed read holds at once."""


def _write_parquet(
    table: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
    path: Path,
    schema: pa.Schema | None = None,
) -> tuple[int, pa.Schema]:
    """Write a table, or batches as they come (a reader's, or an iterable's of `schema`);
    returns (rows, schema)."""
    if isinstance(table, pa.Table | pa.RecordBatchReader):
        schema = table.schema
    if schema is None:
        raise StoreError("committing an iterable of record batches needs their schema")
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        if isinstance(table, pa.Table):
            writer.write_table(table, row_group_size=ROW_GROUP)
            return table.num_rows, table.schema
        for batch in table:
            writer.write_batch(batch, row_group_size=ROW_GROUP)
            rows += batch.num_rows
    return rows, schema


def _type_name(type_text: object) -> str:
    return _LIST_ITEM.sub(r"\1item: ", str(type_text))


def _content_problems(manifest: dict[str, Any], data: pq.ParquetFile) -> list[str]:
    """Where the manifest's rows, schema and labeling counts disagree with the data file (its
    footer, and its `error` column a row group at a time)."""
    problems = []
    rows = data.metadata.num_rows
    if manifest.get("rows") != rows:
        problems.append(f"manifest: rows is {manifest.get('rows')!r} but {DATA_FILE} has {rows}")
    schema = data.schema_arrow
    problems += _schema_problems(manifest.get("schema"), schema)
    labeling = manifest.get("labeling")
    # a labeled version has a label column, a generated one a completion column
    answered = {"label", "completion"} & set(schema.names)
    if isinstance(labeling, dict) and answered and "error" in schema.names:
        # as the labeling summary counts: labeled = no error, failed = an error given
        counts = {"labeled": 0, "failed": 0}
        for group in range(data.num_row_groups):
            errors = data.read_row_group(group, columns=["error"]).column("error")
            counts["labeled"] += errors.null_count
            counts["failed"] += pc.sum(pc.greater(pc.utf8_length(errors), 0)).as_py() or 0
        problems += [
            f"manifest: labeling.{key} is {labeling[key]!r} but {DATA_FILE} has {count}"
            for key, count in counts.items()
            if key in labeling and labeling[key] != count
        ]
    if "probs" in schema.names:
        problems += _probability_problems(manifest, data)
    return problems


_PROB_SLACK = 1e-6


def _probability_problems(manifest: dict[str, Any], data: pq.ParquetFile) -> list[str]:
    """Rows whose probabilities are not finite, in [0, 1] and (single-label) summing to 1
    within 1e-6, or whose coverage is not finite in [0, 1]: the students would misread them."""
    multi = bool((manifest.get("task") or {}).get("multi_label"))
    columns = [c for c in ("id", "probs", "coverage") if c in data.schema_arrow.names]
    bad: list[str] = []
    for group in range(data.num_row_groups):
        table = data.read_row_group(group, columns=columns).to_pydict()
        ids = table.get("id") or [None] * len(table["probs"])
        coverages = table.get("coverage") or [None] * len(ids)
        for rid, probs, coverage in zip(ids, table["probs"], coverages, strict=True):
            if not _sound(probs, coverage, multi):
                bad.append(str(rid))
    if not bad:
        return []
    shown = ", ".join(repr(b) for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
    return [
        f"{DATA_FILE}: {len(bad)} record(s) have probabilities that are not a distribution "
        f"(not finite, outside [0, 1] or not summing to 1): {shown}"
    ]


def _sound(probs: list[float | None] | None, coverage: float | None, multi: bool) -> bool:
    if coverage is not None and not (math.isfinite(coverage) and 0.0 <= coverage <= 1.0):
        return False
    if probs is None:
        return True
    if not all(p is not None and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        return False
    return multi or abs(sum(p for p in probs if p is not None) - 1.0) <= _PROB_SLACK


def _schema_problems(recorded: object, schema: pa.Schema) -> list[str]:
    if not isinstance(recorded, dict):
        return ["manifest: 'schema' is missing or malformed"]
    found = {f.name: _type_name(f.type) for f in schema}
    said = {name: _type_name(t) for name, t in recorded.items()}
    # column order is not compared: manifests are written with sorted keys
    diffs = [
        f"{name!r} {said.get(name, 'absent')} vs {found.get(name, 'absent')}"
        for name in sorted(said.keys() | found.keys())
        if said.get(name) != found.get(name)
    ]
    if not diffs:
        return []
    return [f"manifest: schema does not match {DATA_FILE} (manifest vs data: {', '.join(diffs)})"]
