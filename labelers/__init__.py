"""Teacher clients: a record's text in, a label with a probability per label out (or, for a
generation task, a completion with its tokens).

Any OpenAI-compatible endpoint, a local causal LM, a zero-shot sentence embedder, or answers
recorded elsewhere; each follows the `Teacher` protocol.
"""

from ._local import ScoringTeacher, TransformersTeacher, ZeroShotTeacher
from ._multi import MultiLabelTeacher, binary_task
from ._openai import OpenAIOptions, OpenAITeacher, ResponseFormat, check_base_url, header_safe
from ._parse import TokenStep, canonical, label_distribution, match_label
from ._prompt import build_messages, prompt_hash, system_prompt
from ._recorded import (
    MALFORMED_RECORDED_ANSWER,
    NO_RECORDED_ANSWER,
    RecordedFields,
    RecordedTeacher,
)
from ._tokens import count_message_tokens, message_token_bound, token_counter
from ._types import (
    BUDGET_EXHAUSTED,
    EMPTY_COMPLETION,
    MALFORMED_ANSWER,
    MULTI_LABEL_SEPARATOR,
    MULTI_LABEL_THRESHOLD,
    REFUSAL,
    TOOL_CALLS,
    Answer,
    Budget,
    ClassifyTask,
    GenerateTask,
    LabelerError,
    LabelStats,
    OnAnswer,
    Price,
    ResponseCache,
    SharedCache,
    SpendLedger,
    Teacher,
    Usage,
)

__all__ = [
    "BUDGET_EXHAUSTED",
    "EMPTY_COMPLETION",
    "MALFORMED_ANSWER",
    "MULTI_LABEL_SEPARATOR",
    "MALFORMED_RECORDED_ANSWER",
    "MULTI_LABEL_THRESHOLD",
    "NO_RECORDED_ANSWER",
    "REFUSAL",
    "TOOL_CALLS",
    "Answer",
    "Budget",
    "ClassifyTask",
    "GenerateTask",
    "LabelStats",
    "LabelerError",
    "MultiLabelTeacher",
    "OnAnswer",
    "OpenAIOptions",
    "OpenAITeacher",
    "Price",
    "RecordedFields",
    "RecordedTeacher",
    "ResponseCache",
    "ResponseFormat",
    "ScoringTeacher",
    "SharedCache",
    "SpendLedger",
    "Teacher",
    "TokenStep",
    "TransformersTeacher",
    "Usage",
    "ZeroShotTeacher",
    "binary_task",
    "build_messages",
    "canonical",
    "check_base_url",
    "header_safe",
    "count_message_tokens",
    "message_token_bound",
    "label_distribution",
    "match_label",
    "prompt_hash",
    "system_prompt",
    "token_counter",
]
