"""The bundled examples, copied out of the installed package so they run anywhere: a config and
the data it reads, at the paths it names (`examples/...`, relative to where it runs)."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

from ._errors import SetupError

_DATA = re.compile(r"\bexamples/(data/[A-Za-z0-9_.-]+)/")


def _bundled() -> Path:
    return Path(str(resources.files("stillroom.examples")))


def example_names() -> list[str]:
    return sorted(p.stem for p in _bundled().glob("*.yaml"))


def write_example(name: str, folder: Path) -> Path:
    """Copy example `name`'s config to FOLDER/examples/NAME.yaml and the data folders it reads
    beside it (each with its SOURCE.md); nothing that is there already is overwritten. Returns
    the config's path, relative to FOLDER."""
    names = example_names()
    if name not in names:
        raise SetupError(f"no example named {name!r}: the examples are {', '.join(names)}")
    source = _bundled() / f"{name}.yaml"
    config = source.read_text(encoding="utf-8")
    wanted = [Path(f"{name}.yaml"), *(Path(d) for d in sorted(set(_DATA.findall(config))))]
    target = folder / "examples"
    taken = [str(target / w) for w in wanted if (target / w).exists()]
    if taken:
        raise SetupError(f"{taken[0]} exists already: choose an empty folder for the example")
    target.mkdir(parents=True, exist_ok=True)
    for part in wanted:
        if (_bundled() / part).is_dir():
            shutil.copytree(_bundled() / part, target / part)
        else:
            shutil.copyfile(_bundled() / part, target / part)
    return Path("examples") / f"{name}.yaml"
