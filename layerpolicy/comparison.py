"""Compare several models (or one model before and after training): specs -> results -> table.

Each spec is a model (alias, hub id, local dir, .gguf, packaged or tiny name, or a ModelConfig)
or a finished run directory. Models are analysed with the same prompts and settings into a cache
keyed by the settings, so a repeated comparison loads the finished runs instead of recomputing
them. All statistics are per model; the figures align models on relative depth l/L, so models of
different depth or vocabulary compare fine (a tokenizer mismatch is noted, not an error).

Run directories: any finished `layerpolicy entropy` run (a directory with run.json of kind
"entropy"), or a training run directory holding `before/` and `after/` entropy run directories
(what `layerpolicy train --analyse` writes), which stands for both. Two run directories of the same
architecture (same depth and vocabulary) are read as before/after: the difference after − before
is tabulated and drawn too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import report
from .analysis import AnalysisResult, analyse, load_run
from .config import AnalysisConfig, ModelConfig, PromptConfig
from .errors import LayerpolicyError, RunDirectoryError
from .parallel import current_shard
from .prompts import PromptSet
from .readout.jacobian import check_lens_choice
from .runs import RunDirectory, atomic_path, read_json, write_csv
from .spec import RunSpec
from .tables.comparison import comparison_notes, comparison_table, run_readout
from .tables.difference import difference
from .tables.reading import reading

DEFAULT_CACHE = Path("runs") / "cache"
X_AXES = ("rel_depth", "layer")
BEFORE_AFTER = ("before", "after")


@dataclass
class CompareResult:
    """Per-model summaries (keyed by the model actually used), the comparison and its reading.

    `difference` (after − before per site, layer and metric) is set for a before/after pair.
    """

    summaries: dict[str, pd.DataFrame]
    comparison: pd.DataFrame
    reading: str
    figures: list[Path] = field(default_factory=list)
    path: Path | None = None
    runs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    difference: pd.DataFrame | None = None


@dataclass(frozen=True)
class _Entry:
    """One model of the comparison: its analysis, whether it came from a given run dir, a note."""

    result: AnalysisResult
    given_run: bool
    note: str | None


def compare(
    specs: Sequence[str | Path | ModelConfig],
    prompts: RunSpec | str | Path | PromptSet | PromptConfig | None = None,
    *,
    config: AnalysisConfig | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    x: str = "rel_depth",
    offline: bool | None = None,
    device: str = "auto",
    allow_mixed_readouts: bool = False,
    readouts: Sequence[str] | None = None,
    progress: bool = True,
    force: bool = False,
    cache: str | Path = DEFAULT_CACHE,
) -> CompareResult:
    """Analyse or load every spec, then tabulate, read and (with `out`) draw the comparison.

    `prompts` may be a RunSpec: its prompts and analysis settings (then not `config` or `limit`)
    and its model's device, dtype and offline for the string specs. Models are analysed with
    `prompts` (and `limit`) and `config` into `cache`/<model>-<readout>-<prompt hash>-<settings
    hash> (`RunSpec.key`) and reused when that run is finished (`force` recomputes). A string
    spec is loaded on `device` with `offline`; a ModelConfig carries its own. Run
    directories are loaded as they are. Readouts must match unless `allow_mixed_readouts`;
    `readouts` analyses every model once per readout (raw, logit-lens, jacobian-lens), overlaid.
    `x` ("rel_depth" or "layer") is the figures' depth axis. With `out`, writes comparison.csv,
    comparison.md, figures/ and, for a before/after pair, difference.csv, holding `out`'s lock
    (a second comparison into the same `out` waits for the first).
    """
    if x not in X_AXES:
        raise LayerpolicyError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    base = _base_spec(prompts, config, limit, device, offline)
    variants = _readout_specs(base, readouts)
    config = base.analysis
    models = [_model_config(spec, base.model) for spec in specs]
    targets = [_run_dirs(m.spec) or m for m in models]
    if sum(len(t) if isinstance(t, list) else len(variants) for t in targets) < 2:
        raise LayerpolicyError(
            "compare needs at least two models or run directories (or one training run "
            "directory with before/ and after/ inside)"
        )
    if out is not None:
        RunDirectory(out).check_not_file()
    given = [load_run(p) for t in targets if isinstance(t, list) for p in t]
    has_models = any(isinstance(t, ModelConfig) for t in targets)
    _check_readouts(given, config.readout if has_models else None, allow_mixed_readouts or readouts)
    for model, variant in ((m, v) for m in targets if isinstance(m, ModelConfig) for v in variants):
        check_lens_choice(variant.replace(model=model))
    prompt_config = base.prompts
    writer = out is not None and current_shard().is_main
    with RunDirectory(out).lock() if writer else contextlib.nullcontext():
        prompt_set: PromptSet | None = None
        loaded, entries = iter(given), []
        for target in targets:
            if isinstance(target, list):
                entries += [_given_entry(next(loaded)) for _ in target]
                continue
            if prompt_set is None:  # loaded once, and only when a model is scored
                prompt_set = prompt_config.load()
                prompt_config = dataclasses.replace(prompt_config, source=prompt_set, limit=None)
            for variant in variants:
                spec = variant.replace(model=target, prompts=prompt_config)
                entries.append(_analysed_entry(spec, prompt_set.sha256, cache, progress, force))
        return _finish(entries, x, Path(out) if writer else None)


def _finish(entries: list[_Entry], x: str, out: Path | None) -> CompareResult:
    labels = _labels([e.result for e in entries])
    results = dict(zip(labels, (e.result for e in entries), strict=True))
    summaries = {label: r.summary for label, r in results.items()}
    comparison = comparison_table(results)
    pair = _before_after(entries, labels)
    diff = difference(summaries[pair[0]], summaries[pair[1]], labels=pair) if pair else None
    result = CompareResult(
        summaries=summaries,
        comparison=comparison,
        reading=reading(comparison, diff, pair),
        runs={label: r.path for label, r in results.items() if r.path is not None},
        notes=[e.note for e in entries if e.note] + comparison_notes(results),
        difference=diff,
    )
    if out is not None:
        result.path = out
        write_csv(result.comparison, out / "comparison.csv")
        if diff is not None:
            write_csv(diff, out / "difference.csv")
        figures = out / "figures"
        result.figures = report.compare_figures(summaries, figures, x=x, pair=pair, difference=diff)
        with atomic_path(out / "comparison.md") as tmp:
            tmp.write_text(report.comparison_markdown(result, x))
    return result


# ---------------------------------------------------------------------------- specs and runs


def _base_spec(
    prompts: RunSpec | str | Path | PromptSet | PromptConfig | None,
    config: AnalysisConfig | None,
    limit: int | None,
    device: str,
    offline: bool | None,
) -> RunSpec:
    """The spec every model of the comparison is analysed with (its model: the defaults)."""
    if isinstance(prompts, RunSpec):
        if config is not None or limit is not None:
            raise LayerpolicyError("a RunSpec holds its prompts and settings; pass it alone")
        return prompts
    model = ModelConfig(device=device, offline=offline)
    return RunSpec(model, PromptConfig.of(prompts, limit), config or AnalysisConfig())


def _readout_specs(base: RunSpec, readouts: Sequence[str] | None) -> list[RunSpec]:
    """`base` once per readout (its lens kept for jacobian-lens only); [base] without any."""
    return [
        base.replace(readout=r, lens=base.analysis.lens if r == "jacobian-lens" else None)
        for r in dict.fromkeys(readouts or ())
    ] or [base]


def _model_config(spec: str | Path | ModelConfig, base: ModelConfig) -> ModelConfig:
    """A ModelConfig as it is; a model or run directory spec with the base model's settings."""
    if isinstance(spec, ModelConfig):
        return spec
    return dataclasses.replace(base, spec=str(spec))


def _run_dirs(spec: str) -> list[Path] | None:
    """The run directories `spec` names, or None when it names a model.

    A training run directory (before/ and after/ inside) stands for both of its runs. A spec that
    looks like a path but names nothing is a missing run directory.
    """
    path = Path(spec).expanduser()
    inner = [path / part for part in BEFORE_AFTER]
    if all((p / "run.json").is_file() for p in inner):
        return inner
    if (path / "run.json").is_file():
        kind = read_json(path / "run.json").get("kind")
        if kind != "entropy":
            raise RunDirectoryError(
                f"{path} holds a {kind!r} run, not an entropy run; pass a `layerpolicy entropy` "
                "run directory or a training run directory with before/ and after/ inside"
            )
        return [path]
    if path.is_dir() or path.suffix == ".gguf" or not _looks_like_path(spec):
        return None
    raise RunDirectoryError(
        f"run directory {spec} does not exist; pass a finished `layerpolicy entropy` run "
        "directory, or a model (run `layerpolicy models` to list them)"
    )


def _looks_like_path(spec: str) -> bool:
    """True for absolute or relative paths; `owner/name` counts only if `owner` is a directory."""
    parts = Path(spec).parts
    return (
        spec.startswith((".", "/", "~"))
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def _check_readouts(
    given: list[AnalysisResult], model_readout: str | None, allow_mixed: bool
) -> None:
    """Raise when readouts differ (before any model is analysed), unless mixing is allowed."""
    used = {str(r.path): run_readout(r) for r in given}
    if model_readout is not None:
        used["the models analysed here (--readout)"] = model_readout
    if allow_mixed or len(set(used.values())) <= 1:
        return
    listing = "; ".join(f"{where}: {readout}" for where, readout in used.items())
    raise RunDirectoryError(
        f"readouts differ ({listing}); compare runs of one readout (set --readout to match the "
        "run directories) or pass --allow-mixed-readouts"
    )


def _given_entry(result: AnalysisResult) -> _Entry:
    return _Entry(result, given_run=True, note=result.record["model"].get("note"))


def _analysed_entry(
    spec: RunSpec, prompts_sha256: str, cache: Path, progress: bool, force: bool
) -> _Entry:
    """Analyse `spec` into its cache directory (loaded, not recomputed, when finished)."""
    source = spec.model.resolve()
    name = cache_name(spec, source.name, source.location, prompts_sha256)
    # Resolve again exactly as here: offline unless the hub was chosen (so no fallback flips).
    pinned = spec.replace(offline=source.kind != "hub")
    result = analyse(pinned, out=Path(cache) / name, force=force, progress=progress)
    return _Entry(result, given_run=False, note=source.note)


def cache_name(spec: RunSpec, model: str, location: str, prompts_sha256: str) -> str:
    """`<model>-<readout>-<prompt hash[:8]>-<settings hash[:8]>`: one directory per settings
    (`model`, `location`: the resolved model's name and where it is)."""
    digest = spec.key(prompts_sha256, model_name=model, location=location)
    safe = model.replace("/", "_").replace(" ", "_")
    return f"{safe}-{spec.analysis.readout}-{prompts_sha256[:8]}-{digest[:8]}"


def _labels(results: list[AnalysisResult]) -> list[str]:
    """Model names; a name given twice gets its readout, then its run directory's name, added."""
    names = [r.model for r in results]
    tags: list[Callable[[AnalysisResult], str]] = [run_readout, lambda r: Path(r.path or "").name]
    labels = names
    for tag in tags:
        if len(set(labels)) == len(labels):
            break
        labels = [f"{r.model} ({tag(r)})" if names.count(r.model) > 1 else r.model for r in results]
    if len(set(labels)) < len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise LayerpolicyError(f"{', '.join(twice)} is given twice; name each model or run once")
    return labels


def _before_after(entries: list[_Entry], labels: list[str]) -> tuple[str, str] | None:
    """(before, after) labels when the specs are two run dirs of one architecture, else None."""
    if len(entries) != 2 or not all(e.given_run for e in entries):
        return None
    keys = [
        tuple(e.result.record["model"][k] for k in ("architecture", "n_layers", "vocab_size"))
        for e in entries
    ]
    same_readout = run_readout(entries[0].result) == run_readout(entries[1].result)
    return (labels[0], labels[1]) if keys[0] == keys[1] and same_readout else None
