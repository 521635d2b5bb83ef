"""stillroom: distil a teacher LLM into small, cheap students, with versioned datasets and honest
measurements. Installed as the `stillroom` package itself; the four parts live beside it.

- `stillroom.labelers`: teacher clients (any OpenAI-compatible API, local models)
- `stillroom.storage`: versioned datasets with licence and terms, the response cache
- `stillroom.students`: students and the metrics that compare them with the teacher
- `stillroom.flows`: the config, the Prefect flows and the `stillroom` command line
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stillroom")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_version"]


def load_version(
    spec: str,
    store: str = ".stillroom",
    *,
    config: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> object:
    """A dataset version (``NAME`` or ``NAME@vN``) as a `datasets.DatasetDict`, ``train`` and
    ``test`` as the students split it (a `config` file's store and split, when given); see
    `stillroom.flows.load_version`."""
    from stillroom.flows import load_version as load

    return load(spec, store, config=config, test_fraction=test_fraction, seed=seed)
