"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

from layerpolicy.readout.sites import READOUT_MODES, SITE_SETS

Prompts = typer.Option(
    None,
    "--prompts",
    "-p",
    help="builtin (default), a .txt/.jsonl/.json/.csv/.parquet file, or hf:owner/name",
)
Limit = typer.Option(None, "--limit", "-n", help="Use only the first N prompts.", min=1)
Readout = typer.Option(
    "raw",
    "--readout",
    help=f"Readout mode: {' | '.join(READOUT_MODES)} (raw = the paper's, no norm).",
)
Sites = typer.Option(
    "paper",
    "--sites",
    help=f"Readout set: {' | '.join(SITE_SETS)} (paper = resid, attn, mlp and module inputs).",
)
Device = typer.Option("auto", "--device", help="auto | cpu | cuda | mps")
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
Seed = typer.Option(0, "--seed", help="Seed for sampling and bootstrap.")
Force = typer.Option(
    False, "--force", help="Recompute even if the output directory holds a finished run."
)
NoChatTemplate = typer.Option(
    False, "--no-chat-template", help="Do not apply the tokenizer's chat template."
)


def analysis_config(
    *,
    readout: str,
    sites: str,
    batch_size: int,
    chunk_tokens: int | None,
    max_tokens: int,
    no_chat_template: bool,
    generate: int,
    temperature: float,
    seed: int,
):
    """The `AnalysisConfig` the analysis options name (`--generate 0` = score the prompts)."""
    from layerpolicy.analysis import AnalysisConfig

    return AnalysisConfig(
        readout=readout,
        sites=sites,
        batch_size=batch_size,
        chunk_tokens=chunk_tokens,
        max_tokens=max_tokens,
        chat_template=not no_chat_template,
        generate=generate or None,
        temperature=temperature,
        seed=seed,
    )


def out_dir(out: Path | None, *parts: str) -> Path:
    """The output directory: the given one, or runs/<parts joined by '-'> (names made path-safe)."""
    if out is not None:
        return out
    safe = "-".join(p.replace("/", "_").replace(" ", "_") for p in parts)
    return Path("runs") / safe


Column = typer.Option(None, "--column", help="Prompt column of a table source.")
ResponseColumn = typer.Option(
    None, "--response-column", help="Column with a given response to score (response only)."
)
AnswerColumn = typer.Option(None, "--answer-column", help="Column with the ground-truth answer.")


def prompt_set(prompts, limit, column=None, response_column=None, answer_column=None):
    """Load the prompt source the options name."""
    from layerpolicy.prompts import load_prompts

    return load_prompts(
        prompts,
        limit=limit,
        column=column,
        response_column=response_column,
        answer_column=answer_column,
    )
