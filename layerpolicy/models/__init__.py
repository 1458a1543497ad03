"""Model specs -> TransformerBridges: hub ids, local directories, GGUF files, packaged weights."""

from .load import LoadedModel, ModelInfo, load_model, load_tokenizer
from .registry import ALIASES, FAMILY_FALLBACK, PACKAGED_MODELS
from .resolve import ModelSource, hub_reachable, known_names, resolve_spec

__all__ = [
    "ALIASES",
    "FAMILY_FALLBACK",
    "PACKAGED_MODELS",
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "hub_reachable",
    "known_names",
    "load_model",
    "load_tokenizer",
    "resolve_spec",
]
