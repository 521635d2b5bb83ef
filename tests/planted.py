"""A file planted in a store or a run folder: a pickle whose loading runs a command (it writes a
marker file), to prove that stillroom checks what it reads before opening it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class Planted:
    """Unpickling it touches `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


def plant(path: Path, marker: Path, torch_format: bool = False) -> Path:
    """Replace `path` with a pickle that touches `marker` when loaded (torch.save's zip format
    for a checkpoint, a plain pickle otherwise); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        import torch

        torch.save({"model": Planted(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Planted(marker)))
    return path
