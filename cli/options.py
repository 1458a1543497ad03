"""Options shared by several commands, and the RunSpec they name (validated before any loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
from layerpolicy.readout.precision import PRECISIONS
from layerpolicy.readout.sites import READOUT_MODES, SITE_SETS
from layerpolicy.runs import RunDirectory
from layerpolicy.spec import RunSpec

ReadoutMode = Literal[READOUT_MODES]
Precision = Literal[PRECISIONS]
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
Lens = typer.Option(
    None,
    "--lens",
    help="Jacobian lens for --readout jacobian-lens: a lens file or directory, or a published "
    "name (needs the hub); default: the newest one `layerpolicy lens fit` cached for the model.",
)
ReadoutPrecision = typer.Option(
    None,
    "--readout-precision",
    help="How the readout matmul is computed: float32, split (3xTF32: float32's accuracy on GPU "
    "tensor cores), tf32, bfloat16. Default: split on a CUDA GPU with TF32, else float32.",
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
Samples = typer.Option(
    1,
    "--samples",
    help="Responses per prompt with --generate (a prompt's statistics average its responses).",
)
Responses = typer.Option(
    None,
    "--responses",
    help="Score saved responses (a run made with --generate, or its responses.parquet): exactly "
    "those ids, response positions only, with this model and readout.",
)
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


def check_out(out: Path | None, option: str = "--out") -> None:
    """Raise unless `out` is unset, missing, or a directory (before anything is loaded)."""
    if out is not None:
        RunDirectory(out).check_not_file(option)


def out_dir(out: Path | None, *parts: str) -> Path:
    """The output directory: the given one, or runs/<parts joined by '-'> (names made path-safe)."""
    if out is not None:
        return out
    safe = "-".join(p.replace("/", "_").replace(" ", "_") for p in parts)
    return Path("runs") / safe


def readout_list(readouts: str | None) -> list[str] | None:
    """`--readouts raw,logit-lens,...` as a list, each checked (None when not given)."""
    if readouts is None:
        return None
    names = [name.strip() for name in readouts.split(",") if name.strip()]
    unknown = [name for name in names if name not in READOUT_MODES]
    if unknown or not names:
        raise LayerpolicyError(
            f"unknown readout in --readouts {readouts!r}; choose from {', '.join(READOUT_MODES)}"
        )
    return names


def analysis_spec(
    *,
    model: str,
    prompts: str | None,
    column: str | None,
    response_column: str | None,
    readout: str,
    sites: str,
    top_k: int,
    lens: str | None = None,
    readout_precision: str | None = None,
    generate: int,
    temperature: float,
    sampler: str,
    samples: int,
    responses: str | None,
    thinking: bool,
    limit: int | None,
    batch_size: int,
    max_tokens: int,
    chunk_tokens: int | None,
    device: str,
    dtype: str,
    device_map: str | None,
    max_memory: str | None,
    seed: int,
    no_chat_template: bool,
    offline: bool,
) -> RunSpec:
    """The RunSpec of the analysis options (`--generate 0` = score the prompts; `--offline` off
    = contact the hub only when it can be reached)."""
    return RunSpec(
        ModelConfig(
            model,
            device=device,
            dtype=dtype,
            offline=offline or None,
            device_map=device_map,
            max_memory=max_memory,
        ),
        PromptConfig(
            prompts,
            limit=limit,
            column=column,
            response_column=response_column,
            chat_template=not no_chat_template,
            thinking=thinking,
            max_tokens=max_tokens,
            generate=generate or None,
            temperature=temperature,
            sampler=sampler,
            samples=samples,
            responses=responses,
        ),
        AnalysisConfig(
            readout=readout,
            sites=sites,
            batch_size=batch_size,
            chunk_tokens=chunk_tokens,
            top_k=top_k,
            seed=seed,
            lens=lens,
            readout_precision=readout_precision,
        ),
    )
