"""Prompt sets: load them (builtin, named sets, files, the hub) and tokenise them once.

`builtin` generates the project's own problems, `sources` resolves and loads a source (`files`
and `records` read tables), `encode` renders chat templates and marks the scored positions.
"""

from .builtin import BUILTIN, builtin_prompts
from .encode import (
    EncodedPrompt,
    encode_generation_prompt,
    encode_ids,
    encode_prompt,
    encode_with_response_ids,
    has_thinking_switch,
    thinking_mode,
    uses_chat_template,
)
from .files import SUPPORTED_EXTENSIONS
from .items import (
    SYSTEM_INSTRUCTION,
    PromptItem,
    PromptSet,
    prompts_sha256,
    with_response,
    with_response_ids,
)
from .records import ANSWER_COLUMNS, PROMPT_COLUMNS, RESPONSE_COLUMNS
from .sources import DATA_ENV, HF_PREFIX, NAMED_SETS, NamedSet, load_prompts, set_names

__all__ = [
    "ANSWER_COLUMNS",
    "BUILTIN",
    "DATA_ENV",
    "HF_PREFIX",
    "NAMED_SETS",
    "PROMPT_COLUMNS",
    "RESPONSE_COLUMNS",
    "SUPPORTED_EXTENSIONS",
    "SYSTEM_INSTRUCTION",
    "EncodedPrompt",
    "NamedSet",
    "PromptItem",
    "PromptSet",
    "builtin_prompts",
    "encode_generation_prompt",
    "encode_ids",
    "encode_prompt",
    "encode_with_response_ids",
    "has_thinking_switch",
    "load_prompts",
    "prompts_sha256",
    "set_names",
    "thinking_mode",
    "uses_chat_template",
    "with_response",
    "with_response_ids",
]
