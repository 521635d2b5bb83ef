"""Immutable, versioned datasets: Parquet + manifest.json + a dataset card, in a local store.

A version is written in a temporary folder and renamed into place, so readers never see half
of one and two writers never get the same version number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._card import render_card

DATA_FILE = "data.parquet"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
    ref: DatasetRef
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """A folder of versioned datasets: ``ROOT/datasets/NAME/vN/{data.parquet,manifest.json,README.md}``.

    Parameters
    ----------
    root : a local folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        if "://" in text and not text.startswith("file://"):
            raise StoreError(f"store {text!r}: only local folders are supported in this version")
        self.root = Path(text.removeprefix("file://"))

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    def names(self) -> list[str]:
        if not self.datasets_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.datasets_dir.iterdir() if p.is_dir() and _NAME.match(p.name)
        )

    def versions(self, name: str) -> list[str]:
        folder = self.datasets_dir / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if re.fullmatch(r"v\d+", p.name) and p.is_dir()]
        return sorted(found, key=lambda v: int(v[1:]))

    def resolve(self, spec: str) -> DatasetRef:
        """``NAME`` (latest version) or ``NAME@vN`` to a ref that exists."""
        name, version = DatasetRef.parse(spec)
        versions = self.versions(name)
        if not versions:
            raise StoreError(f"no dataset named {name!r} in store {self.root}")
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
            manifest: dict[str, Any] = json.loads((self.path(ref) / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{ref}: unreadable manifest ({exc.__class__.__name__})") from None
        return manifest

    def load(self, ref: DatasetRef) -> pa.Table:
        try:
            return pq.read_table(self.path(ref) / DATA_FILE)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{ref}: unreadable data file ({exc})") from None

    def commit(
        self,
        name: str,
        table: pa.Table,
        *,
        licence: Licence,
        parent: DatasetRef | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> DatasetRef:
        """Write `table` as the next version of `name`; the same content on the same parent
        as the latest version returns that version instead of a copy."""
        if not _NAME.match(name):
            raise StoreError(
                f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-'"
            )
        folder = self.datasets_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            data_path = tmp / DATA_FILE
            pq.write_table(table, data_path, compression="zstd")
            content = sha256_file(data_path)
            latest = self.versions(name)[-1:]
            if latest:
                previous = self.manifest(DatasetRef(name, latest[0]))
                same = (
                    previous.get("content_sha256"),
                    previous.get("parent"),
                    previous.get("licence"),
                )
                if same == (content, str(parent) if parent else None, licence.__dict__):
                    return DatasetRef(name, latest[0])
            manifest = {
                "name": name,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": table.num_rows,
                "schema": {f.name: str(f.type) for f in table.schema},
                "content_sha256": content,
                "parent": str(parent) if parent else None,
                "licence": licence.__dict__,
                **(metadata or {}),
            }
            return self._publish(folder, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, folder: Path, tmp: Path, manifest: dict[str, Any]) -> DatasetRef:
        number = int(self.versions(folder.name)[-1][1:]) + 1 if self.versions(folder.name) else 1
        while True:
            ref = DatasetRef(folder.name, f"v{number}")
            manifest["version"] = ref.version
            (tmp / "README.md").write_text(render_card(manifest))
            manifest["files"] = {
                p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                for p in sorted(tmp.iterdir())
                if p.name != "manifest.json"
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            for p in tmp.iterdir():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(tmp, folder / ref.version)  # fails when another writer took this number
            except OSError:
                number += 1
                continue
            return ref

    def verify(self, ref: DatasetRef) -> VerifyResult:
        """Re-hash every file of a version against its manifest."""
        result = VerifyResult(ref)
        folder = self.path(ref)
        manifest = self.manifest(ref)
        listed = manifest.get("files", {})
        for name, meta in sorted(listed.items()):
            path = folder / name
            if not path.is_file():
                result.problems.append(f"{name}: missing")
            elif sha256_file(path) != meta["sha256"]:
                result.problems.append(f"{name}: sha256 differs from the manifest (modified)")
        for path in sorted(folder.iterdir()):
            if path.name not in listed and path.name != "manifest.json":
                result.problems.append(f"{path.name}: not in the manifest (added)")
        if not result.problems and manifest.get("content_sha256") != listed.get(DATA_FILE, {}).get(
            "sha256"
        ):
            result.problems.append("manifest: content_sha256 does not match the data file")
        return result

    def list(self) -> list[dict[str, Any]]:
        """One summary per version, oldest first within each name."""
        out = []
        for name in self.names():
            for version in self.versions(name):
                m = self.manifest(DatasetRef(name, version))
                out.append(
                    {
                        "dataset": f"{name}@{version}",
                        "rows": m.get("rows"),
                        "created_at": m.get("created_at"),
                        "parent": m.get("parent"),
                        "licence": (m.get("licence") or {}).get("spdx"),
                    }
                )
        return out
