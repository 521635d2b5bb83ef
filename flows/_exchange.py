"""Versions in and out of Hugging Face `datasets`, split as the students see them: the records
held out for evaluation (`evaluate.test_fraction`, by id and seed) are the ``test`` split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stillroom import storage

from ._config import DEFAULT_STORE, Config, EvaluateConfig, load_config
from ._training import held_out

_EVALUATE = EvaluateConfig()


def _held_out(store: storage.Store, ref: storage.DatasetRef, fraction: float, seed: int) -> Any:
    if fraction <= 0:
        return None
    if not 0 < fraction < 1:
        raise storage.HubError(f"test fraction must be in [0, 1), got {fraction}")
    ids = store.load(ref, verify=False, columns=["id"]).column("id").to_pylist()
    return held_out(ids, fraction, seed).tolist()


def _split_of(
    config: str | Path | Config | None, store: str | Path, test_fraction: float, seed: int
) -> tuple[str | Path, float, int]:
    """(store, test fraction, seed): the config's when one is given, else those passed."""
    if config is None:
        return store, test_fraction, seed
    cfg = config if isinstance(config, Config) else load_config(config)
    return cfg.store, cfg.evaluate.test_fraction, cfg.evaluate.seed


def load_version(
    spec: str,
    store: str | Path = DEFAULT_STORE,
    *,
    config: str | Path | Config | None = None,
    test_fraction: float = _EVALUATE.test_fraction,
    seed: int = _EVALUATE.seed,
) -> Any:
    """A version (``NAME`` for the latest, or ``NAME@vN``) as a `datasets.DatasetDict`:
    ``train`` and ``test``, the test records those the students are measured on: a config's
    (`config`: its store, `evaluate.test_fraction` and `evaluate.seed`), or those of
    `test_fraction` and `seed` (0 puts everything in ``train``). Labels are a `ClassLabel`
    feature and the probabilities a list of one float per label.

    >>> ds = load_version("banking77@v2", config="examples/banking77.yaml")  # doctest: +SKIP
    >>> ds["train"].features["label"].names[:2]  # doctest: +SKIP
    ['card_arrival', 'card_linking']
    """
    store, test_fraction, seed = _split_of(config, store, test_fraction, seed)
    s = storage.Store(store)
    ref = s.resolve(spec)
    return s.dataset_dict(ref, _held_out(s, ref, test_fraction, seed))


def export_version(
    spec: str,
    folder: str | Path,
    store: str | Path = DEFAULT_STORE,
    *,
    config: str | Path | Config | None = None,
    test_fraction: float = _EVALUATE.test_fraction,
    seed: int = _EVALUATE.seed,
) -> Path:
    """Write a version as a folder `datasets.load_dataset(folder)` reads, with a dataset card the
    Hub accepts; the splits are `load_version`'s."""
    store, test_fraction, seed = _split_of(config, store, test_fraction, seed)
    s = storage.Store(store)
    ref = s.resolve(spec)
    return s.export(ref, folder, _held_out(s, ref, test_fraction, seed))
