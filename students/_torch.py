"""What the torch students share: importing torch lazily, threads, quiet model loads, and
atomic training checkpoints that a killed fit resumes from."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._embedding import INSTALL_HINT

CHECKPOINT = "checkpoint.pt"
DIGESTS = "checkpoint.json"
"""Beside the checkpoint: the sha256 of the checkpoints written last, checked before one is read."""


def import_torch(who: str) -> tuple[Any, Any]:
    """(torch, transformers); ValueError with the install hint naming `who` needs them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ValueError(f"{who} needs torch and transformers: {INSTALL_HINT}") from None
    return torch, transformers


def set_threads(torch: Any) -> None:
    """All the cores this process may use, unless the user chose (OMP_NUM_THREADS)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


@contextlib.contextmanager
def quiet(transformers: Any) -> Iterator[None]:
    """transformers' warnings and progress bars off while loading (a new head is meant to be)."""
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:  # never turn on what the user (HF_HUB_DISABLE_PROGRESS_BARS) turned off
            transformers.logging.enable_progress_bar()


def save_checkpoint(
    folder: Path | None, state: dict[str, Any], model: Any, optimizer: Any, scheduler: Any
) -> None:
    """Write `state` with the model, optimiser, scheduler and RNG states atomically: a kill
    leaves the previous checkpoint or this one. Nothing without a folder."""
    import torch

    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        **state,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    partial = folder / (CHECKPOINT + ".partial")
    torch.save(payload, partial)
    # the previous checkpoint's digest stays until this one has replaced it: a kill between the
    # two writes leaves a checkpoint whose digest is recorded, whichever it is
    kept = _digests(folder)[-1:] + [sha256_of(partial)]
    _write_atomically(folder / DIGESTS, json.dumps({"sha256": kept}) + "\n")
    os.replace(partial, folder / CHECKPOINT)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _digests(folder: Path) -> list[str]:
    """The digests recorded for the folder's checkpoint; [] when none (or unreadable)."""
    try:
        found = json.loads((folder / DIGESTS).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [d for d in found if isinstance(d, str)] if isinstance(found, list) else []


def _checked(path: Path) -> Path:
    """`path`, once its sha256 is one recorded when a checkpoint was written there; ValueError
    naming it otherwise (a file planted or replaced there is never opened by torch)."""
    if sha256_of(path) not in _digests(path.parent):
        raise ValueError(
            f"{path} is not a checkpoint this fit wrote (its sha256 is not the one recorded in "
            f"{DIGESTS}): remove the folder {path.parent} to train from the start"
        )
    return path


def load_checkpoint(
    folder: Path | None, model: Any, optimizer: Any, scheduler: Any
) -> dict[str, Any] | None:
    """Restore what `save_checkpoint` wrote into the model, optimiser, scheduler and RNGs;
    returns the rest of the state, or None when there is no checkpoint."""
    import torch

    if folder is None or not (folder / CHECKPOINT).is_file():
        return None
    path = _checked(folder / CHECKPOINT)
    try:  # tensors and plain values only: never code, even from a file whose digest matched
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's UnpicklingError, a truncated file
        raise ValueError(f"{path} cannot be read as a checkpoint: {_first_line(exc)}") from None
    model.load_state_dict(payload.pop("model"))
    optimizer.load_state_dict(payload.pop("optimizer"))
    scheduler.load_state_dict(payload.pop("scheduler"))
    torch.set_rng_state(payload.pop("rng"))
    cuda_rng = payload.pop("cuda_rng", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_rng)
    return payload


def drop_checkpoint(folder: Path | None) -> None:
    """Remove a completed fit's checkpoint (and its folder when empty)."""
    if folder is None:
        return
    (folder / CHECKPOINT).unlink(missing_ok=True)
    (folder / DIGESTS).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
