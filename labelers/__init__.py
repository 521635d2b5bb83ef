"""Teacher clients: a record's text in, a label with a probability per label out.

Any OpenAI-compatible endpoint, a local causal LM, or a zero-shot sentence embedder.
"""

from ._local import TransformersTeacher, ZeroShotTeacher
from ._multi import MultiLabelTeacher, binary_task
from ._openai import LabelStats, OpenAITeacher, Price
from ._parse import TokenStep, canonical, label_distribution, match_label
from ._prompt import build_messages, prompt_hash, system_prompt
from ._tokens import count_message_tokens, token_counter
from ._types import Answer, ClassifyTask, LabelerError, ResponseCache, Usage

__all__ = [
    "Answer",
    "ClassifyTask",
    "LabelStats",
    "LabelerError",
    "MultiLabelTeacher",
    "OpenAITeacher",
    "Price",
    "ResponseCache",
    "TokenStep",
    "TransformersTeacher",
    "Usage",
    "ZeroShotTeacher",
    "binary_task",
    "build_messages",
    "canonical",
    "count_message_tokens",
    "label_distribution",
    "match_label",
    "prompt_hash",
    "system_prompt",
    "token_counter",
]
