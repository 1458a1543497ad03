"""Options shared by several commands, and the configs they name (validated before any loading)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import typer

from layerpolicy.config import (
    DEFAULT_MODEL,
    DEFAULT_TOP_K,
    SAMPLERS,
    AnalysisConfig,
    ModelConfig,
    PromptConfig,
)
from layerpolicy.devices import DEVICE_MAPS, DTYPES
from layerpolicy.errors import LayerpolicyError
from layerpolicy.readout.sites import READOUT_MODES, SITE_SETS

ReadoutMode = Literal[READOUT_MODES]
SiteSet = Literal[tuple(SITE_SETS)]
DType = Literal[DTYPES]
DeviceMap = Literal[DEVICE_MAPS]
Sampler = Literal[SAMPLERS]

Model = typer.Option(
    DEFAULT_MODEL,
    "--model",
    "-m",
    help="Alias (qwen, llama, ...), hub id, local dir, .gguf file, or packaged name.",
)
Prompts = typer.Option(
    None,
    "--prompts",
    "-p",
    help="builtin (default), a named set (math500, deepmath), a .txt/.jsonl/.json/.csv/.parquet "
    "file, or hf:owner/name",
)
Column = typer.Option(None, "--column", help="Prompt column of a table source.")
ResponseColumn = typer.Option(
    None, "--response-column", help="Column with a given response to score (response only)."
)
Limit = typer.Option(None, "--limit", "-n", help="Use only the first N prompts.", min=1)
Readout = typer.Option(
    "raw", "--readout", help="Readout mode (raw = the paper's internal policies, no norm)."
)
Sites = typer.Option(
    "paper", "--sites", help="Readout set (paper = resid, attn, mlp and the module inputs)."
)
TopK = typer.Option(
    DEFAULT_TOP_K,
    "--top-k",
    min=0,
    help="Keep the K most likely tokens of every resid and final row (0 = none).",
)
Device = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps")
DTypeOption = typer.Option(
    "float32",
    "--dtype",
    help="Forward dtype (half precision for GPUs; auto = bfloat16 on a GPU that has it; readouts "
    "and metrics stay float32).",
)
DeviceMapOption = typer.Option(
    None,
    "--device-map",
    help="Spread the layers over the visible GPUs (models larger than one GPU); not with --device.",
)
MaxMemory = typer.Option(
    None,
    "--max-memory",
    help="Memory per device for --device-map, e.g. 0=20GiB,1=40GiB,cpu=64GiB.",
)
Offline = typer.Option(
    False,
    "--offline",
    help="Never contact the hub: aliases use the packaged model of their family.",
)
BatchSize = typer.Option(4, "--batch-size", "-b", min=1, help="Prompts per forward pass.")
MaxTokens = typer.Option(
    1024, "--max-tokens", min=2, help="Truncate longer inputs (counted and warned)."
)
ChunkTokens = typer.Option(
    None, "--chunk-tokens", min=1, help="Tokens per unembedding chunk (default: automatic)."
)
Generate = typer.Option(
    0,
    "--generate",
    min=0,
    help="Sample up to N new tokens per prompt (T=1) and score the response only.",
)
Temperature = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature.")
SamplerOption = typer.Option(
    "hf", "--sampler", help="Sampler for --generate (vllm: when installed, on a GPU)."
)
Thinking = typer.Option(
    False,
    "--thinking/--no-thinking",
    help="The chat template's thinking mode, where it has one (Qwen3).",
)
Seed = typer.Option(0, "--seed", help="Seed for sampling and bootstrap.")
Force = typer.Option(
    False, "--force", help="Recompute even if the output directory holds a finished run."
)
NoChatTemplate = typer.Option(
    False, "--no-chat-template", help="Do not apply the tokenizer's chat template."
)


def check_out_dir(out: Path | None, option: str = "--out") -> None:
    """Raise unless `out` is unset, missing, or a directory (call it before loading anything)."""
    if out is not None and out.exists() and not out.is_dir():
        raise LayerpolicyError(
            f"{option} {out} is a file, not a directory; pass a new or existing run directory"
        )


def out_dir(out: Path | None, *parts: str) -> Path:
    """The output directory: the given one, or runs/<parts joined by '-'> (names made path-safe)."""
    if out is not None:
        return out
    safe = "-".join(p.replace("/", "_").replace(" ", "_") for p in parts)
    return Path("runs") / safe


def model_config(params: Mapping[str, Any], spec: str | None = None) -> ModelConfig:
    """The ModelConfig of a command's parsed options (`spec` replaces --model)."""
    return ModelConfig(
        spec=spec if spec is not None else params["model"],
        device=params["device"],
        dtype=params.get("dtype", "float32"),
        offline=params["offline"] or None,
        device_map=params.get("device_map"),
        max_memory=params.get("max_memory"),
    )


def prompt_config(params: Mapping[str, Any]) -> PromptConfig:
    """The PromptConfig of a command's parsed options (`--generate 0` = score the prompts)."""
    return PromptConfig(
        source=params["prompts"],
        limit=params["limit"],
        column=params.get("column"),
        response_column=params.get("response_column"),
        chat_template=not params["no_chat_template"],
        thinking=params["thinking"],
        max_tokens=params["max_tokens"],
        generate=params["generate"] or None,
        temperature=params["temperature"],
        sampler=params["sampler"],
    )


def analysis_config(params: Mapping[str, Any]) -> AnalysisConfig:
    """The AnalysisConfig of a command's parsed options."""
    return AnalysisConfig(
        readout=params["readout"],
        sites=params["sites"],
        batch_size=params["batch_size"],
        chunk_tokens=params["chunk_tokens"],
        top_k=params["top_k"],
        seed=params["seed"],
    )
