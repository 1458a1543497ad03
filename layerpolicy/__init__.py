"""layerpolicy: read a language model's residual stream as a stack of internal policies.

    import layerpolicy as lp
    result = lp.analyse("smollm2-135m-instruct", "math500.parquet", limit=8, out="runs/smollm2")
    result.summary            # per (site, layer, metric): mean, 95% CI, pooled mean
    spec = lp.RunSpec(        # the settings the CLI takes, validated when built
        lp.ModelConfig("qwen3-8b", dtype="bfloat16", device_map="auto"),
        lp.PromptConfig("math500", limit=100, generate=2048, thinking=False),
        lp.AnalysisConfig(readout="raw", sites="paper", top_k=5),
    )
    result = lp.analyse(spec, out="runs/qwen3-8b")
    lp.run_figures(result)    # the run's figures, into runs/qwen3-8b/figures
    spec.to_argv()            # the `layerpolicy entropy ...` command of the same run
    lp.compare([...])         # several models or before/after runs, aligned on relative depth
    lp.train(...)             # Bottom-up Policy Optimization
    lp.DynamicsCallback(...)  # the internal policies during any TRL training (dynamics.parquet)

Heavy imports (torch, transformers) happen on first use of an attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyse": "analysis",
    "AnalysisConfig": "config",
    "ModelConfig": "config",
    "PromptConfig": "config",
    "RunSpec": "spec",
    "run_figures": "report",
    "AnalysisResult": "analysis",
    "load_run": "analysis",
    "load_model": "models",
    "LoadedModel": "models",
    "load_prompts": "prompts",
    "builtin_prompts": "prompts",
    "compare": "comparison",
    "CompareResult": "comparison",
    "train": "bupo",
    "TrainConfig": "bupo",
    "TrainResult": "bupo",
    "DynamicsCallback": "dynamics",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'layerpolicy' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, name)
