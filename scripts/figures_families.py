"""The family comparison's analyses: every family's raw run and its logit-lens run of the same
responses, analysed or loaded through the run cache.

The raw runs sample each model's own responses under the protocol and read every site; each
logit-lens run then scores the responses saved by its family's raw run on the residual stream
(`PromptConfig(responses=...)`), so both readouts of a model read the same token ids.
"""

from __future__ import annotations

from pathlib import Path

from layerpolicy.comparison import CompareResult, compare
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.spec import RunSpec


def family_runs(
    families: tuple[str, ...], raw_spec: RunSpec, cache: Path
) -> tuple[CompareResult, CompareResult]:
    """The raw runs of `families` analysed as `raw_spec` says, and their logit-lens runs of the
    same responses, both compared in `families` order (runs in `cache`)."""
    raw = compare(families, raw_spec, cache=cache)
    lens_dirs = [
        logit_lens_run(family, raw_dir, raw_spec, cache)
        for family, raw_dir in zip(families, raw.runs.values(), strict=True)
    ]
    return raw, compare([str(d) for d in lens_dirs], cache=cache, progress=False)


def rescoring_spec(model: ModelConfig, raw_dir: Path, base: RunSpec, readout: str) -> RunSpec:
    """`model` reading the responses saved in `raw_dir` with `readout` on the residual stream
    only, with the analysis settings of `base`."""
    prompts = PromptConfig(responses=str(raw_dir))
    return RunSpec(model, prompts, base.analysis).replace(readout=readout, sites="resid")


def label_of(result: CompareResult, readout: str) -> str:
    """The comparison's label of its (first) run read with `readout`."""
    rows = result.comparison[result.comparison.readout == readout]
    return str(rows["model"].iloc[0])


def run_of(result: CompareResult, readout: str) -> Path:
    """The run directory of the comparison's (first) run read with `readout`."""
    return result.runs[label_of(result, readout)]


def logit_lens_run(family: str, raw_dir: Path, raw_spec: RunSpec, cache: Path) -> Path:
    """The run directory of `family`'s logit-lens run of `raw_dir`'s responses (analysed into
    `cache` when missing)."""
    spec = rescoring_spec(raw_spec.model, raw_dir, raw_spec, "logit-lens")
    result = compare([str(raw_dir), family], spec, allow_mixed_readouts=True, cache=cache)
    return run_of(result, "logit-lens")
