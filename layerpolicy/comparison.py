"""Compare several models (or one model before and after training) on their internal policies.

Each spec is a model (alias, hub id, local dir, .gguf, packaged or tiny name) or a finished run
directory. Models are analysed with the same prompts and settings into a cache keyed by the
settings, so a repeated comparison loads the finished runs instead of recomputing them. All
statistics are per model; the figures align models on relative depth l/L, so models of different
depth or vocabulary compare fine (a tokenizer mismatch is noted, not an error).

Run directories: any finished `layerpolicy entropy` run (a directory with run.json of kind
"entropy"), or a training run directory holding `before/` and `after/` entropy run directories
(what `layerpolicy train --analyse` writes), which stands for both. Two run directories of the same
architecture (same depth and vocabulary) are read as before/after: the difference after − before
is tabulated and drawn too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .analysis import AnalysisConfig, AnalysisResult, analyse, load_run
from .errors import LayerpolicyError, RunDirectoryError
from .models import resolve_spec
from .prompts import PromptSet, load_prompts
from .runs import atomic_path, read_json, write_csv
from .tables import shape
from .tables.reading import markdown_table, reading

DEFAULT_CACHE = Path("runs") / "cache"
X_AXES = ("rel_depth", "layer")
BEFORE_AFTER = ("before", "after")
COMPARISON_COLUMNS = [
    "model",
    "n_layers",
    "vocab_size",
    "ln_vocab",
    "readout",
    "n_prompts",
    "n_tokens",
    "policy_entropy",
    "final_entropy",
    "convergence_depth",
    "convergence_layer",
    "abruptness",
    "largest_drop_share",
    "eic_mlp",
    "eic_attn",
    "tau_mlp",
    "tau_attn",
    "mean_abs_dh_mlp",
    "mean_abs_dh_attn",
    "boundary_layer",
    "boundary_layer_index",
    "boundary_rel_depth",
    "run",
]
_TEXT_COLUMNS = ("model", "readout", "eic_mlp", "eic_attn", "run")
_INT_COLUMNS = ("n_layers", "vocab_size", "n_prompts", "n_tokens", "convergence_layer")
_INT_COLUMNS += ("boundary_layer", "boundary_layer_index")
_DIGITS = 3  # comparison.csv and comparison.md round floats alike, so the text quotes the table


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
    specs: Sequence[str | Path],
    prompts: str | Path | PromptSet | None = None,
    *,
    config: AnalysisConfig | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    x: str = "rel_depth",
    offline: bool | None = None,
    device: str = "auto",
    allow_mixed_readouts: bool = False,
    progress: bool = True,
    force: bool = False,
    cache: str | Path = DEFAULT_CACHE,
) -> CompareResult:
    """Analyse or load every spec, then tabulate, read and (with `out`) draw the comparison.

    Models are analysed with `prompts`, `limit` and `config` into `cache`/<model>-<readout>-<prompt
    hash>-<settings hash> and reused when that run is finished (`force` recomputes). Run
    directories are loaded as they are. Readouts must match unless `allow_mixed_readouts`.
    `x` ("rel_depth" or "layer") is the figures' depth axis. With `out`, writes comparison.csv,
    comparison.md, figures/ and, for a before/after pair, difference.csv.
    """
    if x not in X_AXES:
        raise LayerpolicyError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    config = config or AnalysisConfig()
    targets = [_run_dirs(str(spec)) or str(spec) for spec in specs]
    if sum(len(t) if isinstance(t, list) else 1 for t in targets) < 2:
        raise LayerpolicyError(
            "compare needs at least two models or run directories (or one training run "
            "directory with before/ and after/ inside)"
        )
    given = [load_run(p) for t in targets if isinstance(t, list) for p in t]
    has_models = any(isinstance(t, str) for t in targets)
    _check_readouts(given, config.readout if has_models else None, allow_mixed_readouts)
    prompt_set = None
    entries: list[_Entry] = []
    loaded = iter(given)
    for target in targets:
        if isinstance(target, list):
            entries += [_given_entry(next(loaded)) for _ in target]
            continue
        prompt_set = prompt_set or _prompt_set(prompts, limit)
        entries.append(
            _analysed_entry(
                target, prompt_set, config, Path(cache), offline, device, progress, force
            )
        )
    return _finish(entries, x, out)


def _finish(entries: list[_Entry], x: str, out: str | Path | None) -> CompareResult:
    labels = _labels([e.result for e in entries])
    results = dict(zip(labels, (e.result for e in entries), strict=True))
    summaries = {label: r.summary for label, r in results.items()}
    comparison = comparison_table(results)
    pair = _before_after(entries, labels)
    diff = difference(summaries[pair[0]], summaries[pair[1]]) if pair else None
    notes = _notes(entries, labels)
    text = reading(comparison, diff, pair)
    result = CompareResult(
        summaries=summaries,
        comparison=comparison,
        reading=text,
        runs={label: r.path for label, r in results.items() if r.path is not None},
        notes=notes,
        difference=diff,
    )
    if out is not None:
        _write(result, Path(out), x, pair)
    return result


# ---------------------------------------------------------------------------- specs and runs


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


def _readout(result: AnalysisResult) -> str:
    return str(result.record["settings"]["readout"])


def _check_readouts(
    given: list[AnalysisResult], model_readout: str | None, allow_mixed: bool
) -> None:
    """Raise when readouts differ (before any model is analysed), unless mixing is allowed."""
    used = {str(r.path): _readout(r) for r in given}
    if model_readout is not None:
        used["the models analysed here (--readout)"] = model_readout
    if allow_mixed or len(set(used.values())) <= 1:
        return
    listing = "; ".join(f"{where}: {readout}" for where, readout in used.items())
    raise RunDirectoryError(
        f"readouts differ ({listing}); compare runs of one readout (set --readout to match the "
        "run directories) or pass --allow-mixed-readouts"
    )


def _prompt_set(prompts: str | Path | PromptSet | None, limit: int | None) -> PromptSet:
    """The prompts every model is scored on (`limit` applies to sources, as in `analyse`)."""
    return prompts if isinstance(prompts, PromptSet) else load_prompts(prompts, limit=limit)


def _given_entry(result: AnalysisResult) -> _Entry:
    return _Entry(result, given_run=True, note=result.record["model"].get("note"))


def _analysed_entry(
    spec: str,
    prompt_set: PromptSet,
    config: AnalysisConfig,
    cache: Path,
    offline: bool | None,
    device: str,
    progress: bool,
    force: bool,
) -> _Entry:
    """Analyse `spec` into its cache directory (loaded, not recomputed, when finished)."""
    source = resolve_spec(spec, offline=offline)
    run_dir = cache / cache_name(source.name, source.location, prompt_set.sha256, config)
    # Resolve again exactly as here: offline unless the hub was chosen (so no fallback flips).
    result = analyse(
        spec,
        prompt_set,
        config=config,
        out=run_dir,
        force=force,
        device=device,
        offline=source.kind != "hub",
        progress=progress,
        figures=False,  # the cache keeps tables; the comparison draws its own figures
    )
    return _Entry(result, given_run=False, note=source.note)


def cache_name(model: str, location: str, prompts_sha256: str, config: AnalysisConfig) -> str:
    """`<model>-<readout>-<prompt hash[:8]>-<settings hash[:8]>`: one directory per settings."""
    settings = {
        "model": model,
        "location": location,
        "prompts_sha256": prompts_sha256,
        **config.recorded(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    safe = model.replace("/", "_").replace(" ", "_")
    return f"{safe}-{config.readout}-{prompts_sha256[:8]}-{digest[:8]}"


def _labels(results: list[AnalysisResult]) -> list[str]:
    """Model names; a name given twice gets its readout, then its run directory's name, added."""
    names = [r.model for r in results]
    tags: list[Callable[[AnalysisResult], str]] = [_readout, lambda r: Path(r.path or "").name]
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
    same_readout = _readout(entries[0].result) == _readout(entries[1].result)
    return (labels[0], labels[1]) if keys[0] == keys[1] and same_readout else None


# ---------------------------------------------------------------------------- tables


def comparison_table(results: dict[str, AnalysisResult]) -> pd.DataFrame:
    """One row per model: size, readout, sample and shape statistics (docs/shape.md).

    Floats are rounded to 3 decimals; undefined statistics are empty (NaN / <NA>).
    """
    rows = [_comparison_row(label, result) for label, result in results.items()]
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for column in COMPARISON_COLUMNS:
        if column in _INT_COLUMNS:
            table[column] = table[column].astype("Int64")
        elif column not in _TEXT_COLUMNS:
            table[column] = table[column].astype(float).round(_DIGITS)
    return table


def _comparison_row(label: str, result: AnalysisResult) -> dict[str, object]:
    stats = shape.shape_statistics(result.summary)
    n_layers = int(stats["n_layers"])
    vocab = int(result.record["model"]["vocab_size"])
    final = result.summary[
        (result.summary["site"] == "final") & (result.summary["metric"] == "entropy")
    ]
    depth, k = stats["convergence_depth"], stats["boundary_layer"]
    return {
        **stats,
        "model": label,
        "vocab_size": vocab,
        "ln_vocab": math.log(vocab),
        "readout": _readout(result),
        "n_prompts": int(final["n_prompts"].iloc[0]) if len(final) else None,
        "n_tokens": int(final["n_tokens"].iloc[0]) if len(final) else None,
        "convergence_layer": None if depth is None else round(float(depth) * n_layers),
        "boundary_rel_depth": None if k is None else int(k) / n_layers,
        "run": str(result.path) if result.path is not None else None,
    }


def difference(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """after − before of every (site, layer, metric) both summaries have.

    `mean` is the difference of the means; `ci_low`/`ci_high` an approximate 95% interval: the
    two CI half-widths combined in quadrature (as if independent), as `plots.plot_difference` draws.
    """
    keys = ["site", "layer", "n_layers", "rel_depth", "metric"]
    merged = before[[*keys, "mean", "ci_low", "ci_high"]].merge(
        after[[*keys, "mean", "ci_low", "ci_high"]], on=keys, suffixes=("_b", "_a")
    )
    delta = merged["mean_a"] - merged["mean_b"]
    half = np.hypot(
        (merged["ci_high_a"] - merged["ci_low_a"]) / 2,
        (merged["ci_high_b"] - merged["ci_low_b"]) / 2,
    )
    table = merged[keys].assign(
        before=merged["mean_b"],
        after=merged["mean_a"],
        mean=delta,
        ci_low=delta - half,
        ci_high=delta + half,
    )
    floats = ["before", "after", "mean", "ci_low", "ci_high"]
    table[floats] = table[floats].round(_DIGITS)
    return table.sort_values(["metric", "site", "layer"], ignore_index=True)


def _notes(entries: list[_Entry], labels: list[str]) -> list[str]:
    """Model fallbacks, tokenizer and prompt mismatches: facts to state, not errors."""
    notes = [e.note for e in entries if e.note]
    records = {label: e.result.record for label, e in zip(labels, entries, strict=True)}
    vocab = {label: r["model"]["vocab_size"] for label, r in records.items()}
    if len(set(vocab.values())) > 1:
        detail = ", ".join(f"{label} |V| = {v}" for label, v in vocab.items())
    elif _token_ids_differ(entries):
        detail = "one vocabulary size, but the same prompts become different token ids"
    else:
        detail = None
    if detail:
        notes.append(
            f"tokenizers differ ({detail}): every statistic is computed per model and the "
            "profiles are aligned on relative depth l/L"
        )
    prompts = {r["prompts"]["sha256"] for r in records.values()}
    if len(prompts) > 1:
        sources = ", ".join(f"{label}: {r['prompts']['source']}" for label, r in records.items())
        notes.append(f"the runs scored different prompt sets ({sources})")
    return notes


def _token_ids_differ(entries: list[_Entry]) -> bool:
    """True when two runs of the same prompts scored different input token ids."""
    seen: dict[str, np.ndarray] = {}
    for entry in entries:
        tokens = entry.result.tokens
        final = tokens[tokens["site"] == "final"].sort_values(["prompt_id", "position"])
        ids = final["token_id"].to_numpy()
        sha = entry.result.record["prompts"]["sha256"]
        if sha in seen and not np.array_equal(seen[sha], ids):
            return True
        seen.setdefault(sha, ids)
    return False


# ---------------------------------------------------------------------------- output


def _write(result: CompareResult, out: Path, x: str, pair: tuple[str, str] | None) -> None:
    result.path = out
    write_csv(result.comparison, out / "comparison.csv")
    if result.difference is not None:
        write_csv(result.difference, out / "difference.csv")
    result.figures = write_figures(result.summaries, out / "figures", x=x, pair=pair)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(markdown(result, x))


def write_figures(
    summaries: dict[str, pd.DataFrame],
    directory: Path,
    *,
    x: str = "rel_depth",
    pair: tuple[str, str] | None = None,
) -> list[Path]:
    """Overlay figures (PNG and SVG): entropy, module entropy change, KL to final; differences."""
    drawn = {
        "entropy": plots.plot_compare(summaries, metric="entropy", x=x),
        "kl_to_final": plots.plot_compare(summaries, metric="kl_to_final", x=x),
    }
    with_modules = {
        name: s
        for name, s in summaries.items()
        if {"attn", "mlp"} <= set(s.loc[s["metric"] == "entropy_change", "site"])
    }
    if with_modules:
        drawn["entropy_change"] = plots.plot_compare_entropy_change(with_modules, x=x)
    if pair is not None:
        before, after = summaries[pair[0]], summaries[pair[1]]
        drawn["difference_entropy"] = plots.plot_difference(before, after, labels=pair)
        if pair[0] in with_modules and pair[1] in with_modules:
            drawn["difference_entropy_change"] = plots.plot_difference(
                before, after, metric="entropy_change", sites=("attn", "mlp"), labels=pair
            )
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, directory / name)
    return paths


def markdown(result: CompareResult, x: str = "rel_depth") -> str:
    """comparison.md: the reading, the table, notes and figures."""
    names = ", ".join(result.comparison["model"])
    lines = [f"# Comparison: {names}", "", result.reading, "", "## Shape statistics", ""]
    lines += markdown_table(result.comparison.drop(columns=["run"]))
    lines += ["", "Definitions: docs/shape.md. Entropies in nats; KL is KL(pi_theta || readout)."]
    if result.runs:
        lines += ["", "## Runs", ""] + [f"- {name}: `{p}`" for name, p in result.runs.items()]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    if result.figures:
        axis = plots.X_LABELS[x]
        lines += ["", f"## Figures (x axis: {axis})", ""]
        lines += [f"- `figures/{p.name}`" for p in result.figures if p.suffix == ".png"]
    return "\n".join(lines) + "\n"
