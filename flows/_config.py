"""The run configuration: YAML validated by pydantic, with `--set key.path=value` overrides.

Unknown keys are errors that name the key; the API key itself never appears here, only the
name of the environment variable that holds it.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from stillroom import labelers, storage

_CLIENT = labelers.OpenAIOptions()
_GENERATE = labelers.GenerateTask()  # a generation's defaults, written once in labelers
_SECRET_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature", re.IGNORECASE)
DEFAULT_STORE = ".stillroom"
DEFAULT_LOCAL_DIR = ".stillroom-local"


def local_dir(store: str, local: str = DEFAULT_LOCAL_DIR) -> Path:
    """Where a store's local files are (the response cache, checkpoints, models, run folders):
    the store itself when it is a local folder, else `local`."""
    return Path(local) if storage.is_remote(store) else Path(store.removeprefix("file://"))


class ConfigError(Exception):
    """The configuration file or an override is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Restriction = Literal[
    "no-training", "no-competing-models", "non-commercial", "share-alike", "attribution"
]
"""What a licence or a provider's terms may forbid or ask (storage.RESTRICTIONS)."""


class DataConfig(_Model):
    path: str
    id_field: str | None = "id"
    text_field: str = "text"
    # generate: Alpaca-style records (the prompt is the instruction, then the input when there is
    # one), or the text field; either through an optional prompt template
    instruction_field: str | None = None
    input_field: str | None = None
    prompt_template: str | None = None
    gold_field: str | None = None
    # a Hugging Face dataset folder (save_to_disk, or data files load_dataset reads): which split
    split: str | None = None
    # SPDX id; unset: what the source's dataset card states, else NOASSERTION
    licence: str | None = None
    # what the source's terms restrict beyond its SPDX id (e.g. [no-training] for a set
    # released for evaluation only)
    restrictions: list[Restriction] = Field(default_factory=list)
    licence_statement: str = ""
    source: str = ""
    citation: str = ""
    limit: int | None = Field(default=None, ge=1)

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        if template is not None:
            template_fields(template)
        return template

    @model_validator(mode="after")
    def _prompt_fields(self) -> DataConfig:
        if self.instruction_field is not None and "text_field" in self.model_fields_set:
            raise ValueError(
                "data.text_field and data.instruction_field both make the prompt: give one"
            )
        if self.input_field is not None and self.instruction_field is None:
            raise ValueError(
                "data.input_field needs data.instruction_field: the input follows an instruction"
            )
        if self.prompt_template is not None:
            self._check_template(self.prompt_template)
        return self

    def _check_template(self, template: str) -> None:
        fields = {"instruction", "input"} if self.instruction_field else {"text"}
        required = "instruction" if self.instruction_field else "text"
        used = template_fields(template)
        unknown = sorted(used - fields)
        if unknown:
            given = " and ".join(f"{{{name}}}" for name in sorted(fields, reverse=True))
            raise ValueError(
                f"data.prompt_template uses {{{unknown[0]}}}, which these records do not have: "
                f"with data.{required}_field it may use {given}"
            )
        if required not in used:
            raise ValueError(
                f"data.prompt_template must use {{{required}}}: without it every prompt is the same"
            )
        if "input" in used and self.input_field is None:
            raise ValueError("data.prompt_template uses {input}: set data.input_field")


def template_fields(template: str) -> set[str]:
    """The `{name}` fields of a prompt template; ValueError for positional or formatted fields
    (write a literal brace as `{{` or `}}`)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write a literal brace as {{{{ or }}}})") from None
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain {{name}}"
            )
        names.add(name)
    return names


# keys that only one task kind reads: given for the other kind, they are refused, not ignored
_CLASSIFY_ONLY = ("labels", "multi_label", "descriptions", "rationale")
_GENERATE_ONLY = ("max_tokens", "temperature", "stop", "top_logprobs")


class TaskConfig(_Model):
    kind: Literal["classify", "generate"] = "classify"
    labels: list[str] | None = None  # required for classify
    multi_label: bool = False
    # classify: ask for a short rationale before the label, kept apart (distilling step by step)
    rationale: bool = False
    instructions: str = "Classify the text."  # generate: labelers.GenerateTask's
    descriptions: dict[str, str] = Field(default_factory=dict)
    system_prompt: str = ""
    # a JSONL/CSV/Parquet file of few-shot examples: (text, label) to classify, (prompt,
    # completion) to generate
    examples: str | None = None
    # generate: what shapes a completion, defaults from labelers.GenerateTask
    max_tokens: int = Field(default=_GENERATE.max_tokens, ge=1)
    temperature: float = Field(default=_GENERATE.temperature, ge=0)
    stop: list[str] = Field(default_factory=lambda: list(_GENERATE.stop))
    # at most the 20 alternatives OpenAI-compatible endpoints return (GenerateTask checks it too)
    top_logprobs: int = Field(default=_GENERATE.top_logprobs, ge=0, le=20)

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: list[str]) -> list[str]:
        if any(not sequence for sequence in stop):
            raise ValueError("a stop sequence is empty: every stop sequence needs a character")
        return stop

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        if len(labels) < 2:
            raise ValueError(f"a classification task needs at least 2 labels, got {len(labels)}")
        for label in labels:
            if not label.strip():
                raise ValueError("a label is empty: every label needs a name")
            if label != label.strip():
                raise ValueError(f"label {label!r} has leading or trailing spaces")
        # answers are matched ignoring case, quotes and trailing punctuation: so are labels
        seen: dict[str, str] = {}
        for label in labels:
            same = seen.setdefault(labelers.canonical(label), label)
            if same != label:
                raise ValueError(
                    f"labels {same!r} and {label!r} are the same label to the answer parser "
                    "(it ignores case, quotes and trailing punctuation)"
                )
            if same == label and labels.count(label) > 1:
                raise ValueError(f"duplicate label {label!r}")
        return labels

    @model_validator(mode="after")
    def _kind(self) -> TaskConfig:
        generate = self.kind == "generate"
        keys = _CLASSIFY_ONLY if generate else _GENERATE_ONLY
        foreign = [key for key in keys if key in self.model_fields_set]
        if foreign:
            key, other = foreign[0], "classify" if generate else "generate"
            hint = (
                f" (a classifying teacher's is teacher.{key})"
                if key in ("temperature", "top_logprobs")
                else ""
            )
            raise ValueError(
                f"task.{key} is only for task.kind {other}: remove it for task.kind "
                f"{self.kind}{hint}"
            )
        if self.kind == "classify" and self.labels is None:
            raise ValueError("task.labels is required for task.kind classify (at least 2 labels)")
        if self.kind == "generate" and "instructions" not in self.model_fields_set:
            self.instructions = _GENERATE.instructions
        return self

    @model_validator(mode="after")
    def _separator(self) -> TaskConfig:
        sep = labelers.MULTI_LABEL_SEPARATOR
        if self.multi_label and self.labels is not None:
            bad = [label for label in self.labels if sep in label]
            if bad:
                raise ValueError(
                    f"label {bad[0]!r} contains {sep!r}, which joins the labels of a "
                    "multi-label answer: rename it"
                )
        return self


class PriceConfig(_Model):
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class TermsConfig(_Model):
    """A teacher's terms: their own words, where they are, the date of that wording, and what
    they restrict (training at all, competing models, commercial use) or owe (attribution)."""

    profile: str = "custom"
    statement: str
    restrictions: list[Restriction] = Field(default_factory=list)
    url: str = ""
    as_of: str = ""  # the date of the wording quoted in `statement` (its effective date)
    attribution: str = ""  # what credit the outputs owe, if any


# Dated profiles of the providers' terms on outputs, quoting the clause that matters for
# distillation; the wording can change after `as_of`: check the URL before relying on it.
TERMS_PROFILES: dict[str, TermsConfig] = {
    "openai": TermsConfig(
        profile="openai",
        statement='OpenAI Terms of Use, "What you cannot do": "Use Output to develop models that '
        'compete with OpenAI."',
        restrictions=["no-competing-models"],
        url="https://openai.com/policies/terms-of-use",
        as_of="2024-01-31",
    ),
    "anthropic": TermsConfig(
        profile="anthropic",
        statement="Anthropic Commercial Terms of Service: the customer may not access the "
        'Services "to build a competing product or service, including to train competing AI '
        "models\" without Anthropic's approval.",
        restrictions=["no-competing-models"],
        url="https://www.anthropic.com/legal/commercial-terms",
        as_of="2025-06-17",
    ),
    "google-gemini": TermsConfig(
        profile="google-gemini",
        statement='Gemini API Additional Terms of Service, "Use Restrictions": "You may not use '
        "the Services to develop models that compete with the Services (e.g., Gemini API or "
        'Google AI Studio)."',
        restrictions=["no-competing-models"],
        url="https://ai.google.dev/gemini-api/terms",
        as_of="2025-05-20",
    ),
    "apache-2.0": TermsConfig(
        profile="apache-2.0",
        statement="The teacher model is released under the Apache License 2.0 (as are "
        "SmolLM2-135M-Instruct and all-MiniLM-L6-v2, the local teachers stillroom ships); the "
        "licence covers the model, and its outputs carry no restriction.",
        url="https://www.apache.org/licenses/LICENSE-2.0",
        as_of="2004-01",
    ),
    "unknown": TermsConfig(
        profile="unknown",
        statement="The teacher's terms were not stated; check them before using or sharing the outputs.",
    ),
}

# a student teacher's terms are those recorded in its folder (flows read them); "unknown" is
# only what `resolved_terms` says without the folder
_DEFAULT_TERMS = {
    "openai": "unknown",
    "transformers": "apache-2.0",
    "zero-shot": "apache-2.0",
    "student": "unknown",
    "recorded": "unknown",
}
_DEFAULT_MODEL = {"transformers": "smollm2", "zero-shot": "all-minilm-l6-v2"}


_RECORDED = labelers.RecordedFields()


class RecordedFieldsConfig(_Model):
    """Where each part of a recorded answer is in the file's rows: a column, or a dotted path
    into nested objects (labelers.RecordedFields)."""

    id: str = _RECORDED.id
    label: str = _RECORDED.label
    probs: str = _RECORDED.probs
    raw: str = _RECORDED.raw
    rationale: str = _RECORDED.rationale
    completion: str = _RECORDED.completion
    finish_reason: str = _RECORDED.finish_reason
    tokens: str = _RECORDED.tokens
    input_tokens: str = _RECORDED.input_tokens
    output_tokens: str = _RECORDED.output_tokens
    cost_usd: str = _RECORDED.cost_usd


# what only a teacher that is called reads: given for provider recorded, it is refused
_CALLED_ONLY = (
    "base_url",
    "concurrency",
    "rpm",
    "tpm",
    "budget_usd",
    "answer_retries",
    "response_format",
    "timeout_s",
    "max_retries",
    "temperature",
    "top_logprobs",
    "max_input_chars",
    "max_response_bytes",
    "retry_malformed",
    "query",
    "headers",
    "header_env",
)
_ISO_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


class TeacherConfig(_Model):
    provider: Literal["openai", "transformers", "zero-shot", "student", "recorded"] = "zero-shot"
    model: str | None = None
    # provider student: a trained student's folder (RUN/students/N-KIND) labels the records;
    # provider recorded: a JSONL or Parquet file of answers by record id
    path: str | None = None
    # provider recorded: when the answers were made, and where their parts are in each row
    recorded_at: str | None = None
    fields: RecordedFieldsConfig | None = None
    # the client's defaults come from labelers.OpenAIOptions: written once, there
    base_url: str = _CLIENT.base_url
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = Field(default=_CLIENT.concurrency, ge=1, le=1024)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    budget_usd: float | None = Field(default=None, ge=0)
    answer_retries: int = Field(default=_CLIENT.answer_retries, ge=0, le=10)
    response_format: labelers.ResponseFormat = _CLIENT.response_format
    timeout_s: float = Field(default=_CLIENT.timeout_s, gt=0)
    max_retries: int = Field(default=_CLIENT.max_retries, ge=0, le=50)
    price: PriceConfig | Literal["unknown"] | None = None
    terms: str | TermsConfig | None = None
    # None: the provider's own default (0 for openai, the zero-shot teacher's softmax temperature)
    temperature: float | None = Field(default=None, ge=0)
    top_logprobs: int = Field(default=_CLIENT.top_logprobs, ge=0, le=20)
    max_input_chars: int | None = Field(default=_CLIENT.max_input_chars, ge=1)
    max_response_bytes: int = Field(default=_CLIENT.max_response_bytes, ge=1024)
    # ask again the requests whose cached answer is malformed (a failure 'malformed answer: ...'),
    # paying for them again; off, such an answer stays a failure and is never paid twice
    retry_malformed: bool = False
    # sent with every request: query parameters (part of the cache key), plain headers, and
    # headers whose values are read from the named environment variables (secrets)
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    header_env: dict[str, str] = Field(default_factory=dict)
    # records per label_shard task; unset: 64 requests per slot of `concurrency` for an endpoint
    # (256 to 8,192), so the wait for a shard's slowest answers is a small part of it, else 256
    shard_size: int | None = Field(default=None, ge=1)
    # below this share of records labeled, `label` and `run` fail (after committing the version)
    min_labeled: float = Field(default=0.5, ge=0, le=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            labelers.check_base_url(url)
        except labelers.LabelerError as exc:
            raise ValueError(str(exc).removeprefix("teacher base_url ")) from None
        return url

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if _SECRET_HEADER.search(name):
                raise ValueError(
                    f"header {name!r} looks like it holds a secret: name the environment variable "
                    f"that holds it instead, teacher.header_env: {{{name}: VARIABLE}}"
                )
        return headers

    @field_validator("recorded_at")
    @classmethod
    def _date(cls, when: str | None) -> str | None:
        if when is not None and not _ISO_DATE.match(when):
            raise ValueError(f"{when!r} is not a date: write YYYY-MM-DD, YYYY-MM or YYYY")
        return when

    @model_validator(mode="after")
    def _defaults(self) -> TeacherConfig:
        recorded_keys = [k for k in ("recorded_at", "fields") if getattr(self, k) is not None]
        if recorded_keys and self.provider != "recorded":
            raise ValueError(f"teacher.{recorded_keys[0]} is only for provider 'recorded'")
        if self.provider == "recorded":
            return self._recorded()
        if self.provider == "student":
            if not self.path:
                raise ValueError(
                    "teacher.path is required for provider 'student': a trained student's "
                    "folder, e.g. RUN/students/2-bert"
                )
            if self.terms is not None:
                raise ValueError(
                    "a student teacher inherits the terms of the teacher it learned from: "
                    "remove teacher.terms"
                )
            self.model = self.model or self.path
            return self
        if self.path is not None:
            raise ValueError("teacher.path is only for providers 'student' and 'recorded'")
        if self.model is None:
            if self.provider == "openai":
                raise ValueError("teacher.model is required for provider 'openai'")
            self.model = _DEFAULT_MODEL[self.provider]
        if self.provider == "openai" and self.price is None:
            raise ValueError(
                "teacher.price is required for provider 'openai': "
                "{input_per_1m: USD, output_per_1m: USD} (0 for a free endpoint), "
                "or 'unknown' to run without cost tracking or budget"
            )
        if self.terms is None:
            self.terms = _DEFAULT_TERMS[self.provider]
        self._check_terms()
        return self

    def _recorded(self) -> TeacherConfig:
        if not self.path:
            raise ValueError(
                "teacher.path is required for provider 'recorded': a JSONL or Parquet file of "
                "answers by record id"
            )
        if self.model is None:
            raise ValueError(
                "teacher.model is required for provider 'recorded': the model that made the answers"
            )
        if self.recorded_at is None:
            raise ValueError(
                "teacher.recorded_at is required for provider 'recorded': when the answers were "
                "made (YYYY-MM-DD, YYYY-MM or YYYY)"
            )
        called = [key for key in _CALLED_ONLY if key in self.model_fields_set]
        if called:
            raise ValueError(
                f"teacher.{called[0]} is for a teacher that is called; provider 'recorded' "
                "calls nothing: remove it"
            )
        self.fields = self.fields or RecordedFieldsConfig()
        self.terms = "unknown" if self.terms is None else self.terms
        self._check_terms()
        return self

    def _check_terms(self) -> None:
        if isinstance(self.terms, str) and self.terms not in TERMS_PROFILES:
            known = ", ".join(sorted(TERMS_PROFILES))
            raise ValueError(
                f"unknown terms profile {self.terms!r} (known: {known}, or an inline mapping)"
            )

    def shard(self) -> int:
        """Records per shard: `shard_size`, or its default for the provider."""
        if self.shard_size is not None:
            return self.shard_size
        if self.provider == "openai":
            return min(8192, max(256, 64 * self.concurrency))
        return 256

    def known_price(self) -> PriceConfig | None:
        return self.price if isinstance(self.price, PriceConfig) else None

    def resolved_terms(self) -> TermsConfig:
        if isinstance(self.terms, TermsConfig):
            return self.terms
        return TERMS_PROFILES[self.terms or _DEFAULT_TERMS[self.provider]]


class LogRegStudent(_Model):
    """TF-IDF + logistic regression; unset parameters keep the student's own defaults."""

    kind: Literal["logreg"]
    soft: bool = True
    C: float | None = Field(default=None, gt=0)
    max_features: int | None = Field(default=None, ge=1)

    def parameters(self) -> dict[str, Any]:
        """The student's constructor arguments that the config sets."""
        return self.model_dump(exclude={"kind", "soft"}, exclude_none=True)


class EmbeddingStudent(_Model):
    """Frozen sentence embeddings + logistic regression; embeddings cached in the store."""

    kind: Literal["embedding"]
    soft: bool = True
    encoder: str | None = None  # the bundled all-MiniLM-L6-v2, or a sentence-transformers folder
    C: float | None = Field(default=None, gt=0)

    def parameters(self) -> dict[str, Any]:
        """The student's constructor arguments that the config sets."""
        return self.model_dump(exclude={"kind", "soft"}, exclude_none=True)


class BertStudentConfig(_Model):
    """A BERT-style encoder fine-tuned by distillation; unset parameters keep the student's own
    defaults (students.BertStudent)."""

    kind: Literal["bert"]
    soft: bool = True
    base: str | None = None  # the bundled all-MiniLM-L6-v2, or a local transformers folder
    epochs: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, ge=0, le=1)
    learning_rate: float | None = Field(default=None, gt=0)
    head_learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    max_length: int | None = Field(default=None, ge=2)
    patience: int | None = Field(default=None, ge=1)
    probe_epochs: int | None = Field(default=None, ge=0)
    seed: int | None = None
    device: str | None = None
    quantize: Literal["int8"] | None = None  # also save and measure an int8 copy

    def parameters(self) -> dict[str, Any]:
        """The student's constructor arguments that the config sets."""
        return self.model_dump(exclude={"kind", "soft", "quantize"}, exclude_none=True)


class GenerativeStudentConfig(_Model):
    """A small causal LM fine-tuned on a generate version's completions; unset parameters keep
    the student's own defaults (students.GenerativeStudent)."""

    kind: Literal["generative"]
    base: str | None = None  # smollm2 (SmolLM2-135M-Instruct), or a local transformers folder
    init: Literal["every_other_layer"] | None = None
    epochs: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation: int | None = Field(default=None, ge=1)
    max_length: int | None = Field(default=None, ge=8)
    alpha: float | None = Field(default=None, ge=0, le=1)
    temperature: float | None = Field(default=None, gt=0)
    distill: Literal["auto", "top_k", "full", "none"] | None = None
    # a LoRA rank, 0 for every weight; unset: "auto" (rank 8 on a CPU, see GenerativeStudent)
    lora: Annotated[int, Field(ge=0)] | Literal["auto"] | None = None
    merge_lora: bool | None = None
    max_new_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    device: str | None = None
    # classify: also learn the teacher's rationales (distilling step by step; task.rationale)
    rationale: bool = False

    def parameters(self) -> dict[str, Any]:
        """The student's constructor arguments that the config sets."""
        return self.model_dump(exclude={"kind", "rationale"}, exclude_none=True)


AnyStudent = LogRegStudent | EmbeddingStudent | BertStudentConfig | GenerativeStudentConfig
StudentConfig = Annotated[AnyStudent, Field(discriminator="kind")]
_STUDENT = TypeAdapter(StudentConfig)
_STUDENT_KINDS = frozenset(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(AnyStudent)
)


def student_config(raw: dict[str, Any]) -> AnyStudent:
    """A student's config as recorded in a run folder's train.json."""
    return _STUDENT.validate_python(raw)


def _default_student() -> AnyStudent:
    return LogRegStudent(kind="logreg")


class EvaluateConfig(_Model):
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    # share of the training records held back to fit each student's calibration temperature
    # (never the test records); 0 turns calibration off
    calibration_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0
    # generate: how many held-out records each generative student writes a completion for
    # (ROUGE-L, exact match, lengths, latency); the NLL is over every held-out record
    generation_records: int = Field(default=32, ge=1)


class RetrainConfig(_Model):
    """When a run retrains the students instead of keeping the current ones (those of the last
    run that trained them): any threshold met retrains; none set keeps them while they exist."""

    min_new_records: int | None = Field(default=1, ge=1)
    min_new_share: float | None = Field(default=None, gt=0, le=1)
    max_agreement_drop: float | None = Field(default=None, ge=0, le=1)


def url_origin(url: str) -> str:
    """scheme://host[:port] of a URL: no user, password, path, query or fragment, any of which
    may hold a secret."""
    parsed = urlsplit(url)
    return f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}"


class WebhookConfig(_Model):
    """Where drift is reported: a JSON POST, retried with backoff; give the URL itself, or the
    name of the environment variable that holds it (a URL with a token in it is a secret)."""

    url: str | None = Field(default=None, pattern=r"^https?://")
    url_env: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=1.0, ge=0)

    @field_serializer("url")
    def _origin_only(self, url: str | None) -> str | None:
        """Written anywhere (Prefect's flow-run parameters, a dump of the config) as
        scheme://host only: a hook's path or query often holds its token."""
        return None if url is None else url_origin(url)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("drift.webhook needs one of url and url_env")
        return self


class DriftConfig(_Model):
    """Thresholds past which a run has drifted; a threshold set to null is not judged."""

    max_psi: float | None = Field(default=0.25, ge=0)
    min_p_value: float | None = Field(default=0.001, ge=0, le=1)
    max_failure_share: float | None = Field(default=0.2, ge=0, le=1)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    # fewer new labels than this: the label distribution is not judged (too few to tell)
    min_records: int = Field(default=50, ge=1)
    # fail: the flow run ends Failed (after committing); warn: it completes with a warning artifact
    action: Literal["fail", "warn"] = "fail"
    webhook: WebhookConfig | None = None


class RunnerConfig(_Model):
    """Where labeling shards run: here, one after another, or on a Dask cluster (the one at
    `address`, or a local one of `workers` processes started for the run)."""

    kind: Literal["serial", "dask"] = "serial"
    address: str | None = None  # tcp://scheduler:8786
    workers: int = Field(default=2, ge=1, le=256)
    in_flight: int | None = Field(default=None, ge=1)  # shards handed out at once (2 × workers)

    @model_validator(mode="after")
    def _address(self) -> RunnerConfig:
        if self.address and self.kind != "dask":
            raise ValueError("runner.address is for runner.kind dask")
        return self


SOURCE_SUFFIX = "-source"
"""The store names a config's source records NAME-source: no config may be named so itself."""


class Config(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
    store: str = DEFAULT_STORE
    # a store in object storage (s3://bucket/prefix, any fsspec URL) keeps on this machine what
    # stays local: the response cache, checkpoints, de-quantised models, run folders (uploaded
    # to STORE/runs once written); a local store keeps them in itself
    local_dir: str = DEFAULT_LOCAL_DIR
    data: DataConfig
    task: TaskConfig
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    # none for generate unless given: generative students learn from the completions
    students: list[StudentConfig] = Field(default_factory=lambda: [_default_student()])
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    # recorded with the version this run commits (usually given as -m on the command line)
    message: str = ""
    # send only the records the latest version does not already answer (same id and text, same
    # teacher and prompt) and commit a child version that keeps the rest; nothing new commits
    # nothing
    incremental: bool = False
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    # judge each run's drift (measured and reported either way)
    drift: DriftConfig | None = None
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    # why training on a version whose terms forbid it is all right (--acknowledge-terms);
    # recorded in the run and every student's model card
    acknowledge_terms: str | None = Field(default=None, min_length=1)

    @property
    def local(self) -> Path:
        """Where this config's local files are (see `local_dir`)."""
        return local_dir(self.store, self.local_dir)

    @property
    def cache_path(self) -> Path:
        """The response cache: always a local SQLite file."""
        return self.local / "cache.sqlite"

    @field_validator("name")
    @classmethod
    def _not_a_source(cls, name: str) -> str:
        if name.endswith(SOURCE_SUFFIX):
            raise ValueError(
                f"ends in {SOURCE_SUFFIX!r}, which the store uses for the source records of "
                f"dataset {name.removesuffix(SOURCE_SUFFIX)!r}: choose another name"
            )
        return name

    @model_validator(mode="after")
    def _task_kind(self) -> Config:
        if self.task.kind == "generate":
            self._check_generate()
            return self
        given = [key for key in _GENERATE_DATA if getattr(self.data, key) is not None]
        if given:
            raise ValueError(f"data.{given[0]} is only for task.kind generate")
        return self

    def _check_generate(self) -> None:
        provider = self.teacher.provider
        if provider in ("zero-shot", "student"):
            raise ValueError(
                f"teacher.provider {provider} cannot generate: use provider openai, transformers "
                "or recorded"
            )
        shaping = [key for key in _GENERATE_ONLY if key in self.task.model_fields_set]
        if provider == "recorded" and shaping:
            raise ValueError(
                f"task.{shaping[0]} does not shape recorded answers (they were made already): "
                "remove it for provider recorded"
            )
        ignored = [key for key in _CLASSIFY_TEACHER if key in self.teacher.model_fields_set]
        if ignored:
            key = ignored[0]
            instead = f"set task.{key}" if key in _GENERATE_ONLY else "remove it"
            raise ValueError(
                f"teacher.{key} is for classification: {instead} for task.kind generate"
            )
        if "students" not in self.model_fields_set:
            self.students = []
        for i, student in enumerate(self.students):
            if student.kind != "generative":
                raise ValueError(
                    f"students.{i}: a {student.kind} student classifies; a generate version's "
                    "completions train kind generative"
                )

    @model_validator(mode="after")
    def _generative(self) -> Config:
        for i, student in enumerate(self.students):
            if not isinstance(student, GenerativeStudentConfig) or not student.rationale:
                continue
            if self.task.kind == "generate":
                raise ValueError(
                    f"students.{i}.rationale is for classification (distilling step by step): "
                    "remove it for task.kind generate"
                )
            if not self.task.rationale:
                raise ValueError(
                    f"students.{i}.rationale learns the teacher's rationales: set "
                    "task.rationale true so the teacher gives them"
                )
        for i, student in enumerate(self.students):
            full = isinstance(student, GenerativeStudentConfig) and student.distill == "full"
            if full and self.teacher.provider != "transformers":
                raise ValueError(
                    f"students.{i}: distill full computes a local teacher's whole "
                    "distribution: it needs teacher.provider transformers"
                )
        return self

    @model_validator(mode="after")
    def _rationale(self) -> Config:
        if not self.task.rationale:
            return self
        if self.teacher.provider not in ("openai", "transformers", "recorded"):
            raise ValueError(
                "task.rationale needs a teacher that writes text: provider openai or "
                "transformers (or recorded answers with teacher.fields.rationale)"
            )
        if self.task.multi_label:
            raise ValueError("task.rationale is not supported with task.multi_label yet")
        return self

    @model_validator(mode="after")
    def _multi_label(self) -> Config:
        if self.task.multi_label and self.teacher.provider in ("student", "recorded"):
            raise ValueError(
                f"task.multi_label is not supported with a {self.teacher.provider} teacher yet"
            )
        if self.task.multi_label and self.teacher.provider == "zero-shot":
            raise ValueError(
                "task.multi_label needs a teacher that can answer yes/no questions "
                "(provider openai or transformers), not zero-shot"
            )
        if self.task.multi_label:
            for i, student in enumerate(self.students):
                if student.kind != "logreg":
                    raise ValueError(
                        f"students.{i}: the {student.kind} student does not support multi-label "
                        "tasks yet (use kind: logreg)"
                    )
        if self.task.multi_label and self.task.examples:
            raise ValueError("task.examples is not supported with task.multi_label yet")
        return self


_GENERATE_DATA = ("instruction_field", "input_field", "prompt_template")
# teacher keys a generation does not read (its own are task.temperature and task.top_logprobs)
_CLASSIFY_TEACHER = ("temperature", "top_logprobs", "response_format", "answer_retries")


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        raise ConfigError(f"--set {key.strip()}: {text!r} is not a valid YAML value") from None
    node: Any = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {part!r} is not an index of that list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a section")


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    # union members show up in the location ("price.PriceConfig", "students.0.bert"): the
    # user's key is what is left
    loc = first["loc"]
    keys = [
        str(p)
        for i, p in enumerate(loc)
        if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))
        and not (i and isinstance(loc[i - 1], int) and p in _STUDENT_KINDS)
    ]
    where = ".".join(keys) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    if first["type"] == "missing":
        return f"missing config key '{where}'"
    message = first["msg"].removeprefix("Value error, ")
    # a check across keys names the key itself ("task.labels is required ...")
    if where == "config" or message.startswith(f"{where}."):
        return message
    return f"config key '{where}': {message}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; every problem is a one-line ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping")
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return config
