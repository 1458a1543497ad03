"""The data behind the README's three readouts: raw, logit lens and Jacobian lens per model.

Per family: its Jacobian lens (TransformerLens's `JacobianLens.fit` through
`layerpolicy.readout.jacobian_fit`, on the first LENS_LIMITS[family] problems of LENS_PROMPTS,
cached beside the model; fitted here when missing, resumably), then the responses saved by the
family's raw run scored again on the residual stream through the logit lens and through that lens
(`layerpolicy.comparison.compare` with `readouts`, the raw run given as a run directory beside
them), so the three readouts read the same token ids. Writes `readouts_<metric>_<family>.png`
for METRICS, readouts.csv (those rows) and record.json's "readouts" facts.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from layerpolicy import plots
from layerpolicy.comparison import CompareResult, compare
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.models.cache import is_complete
from layerpolicy.readout.jacobian import LENS_FILE
from layerpolicy.readout.jacobian_fit import FitSettings, fit_lens, lens_directory, prompt_text
from layerpolicy.report.figures import save_png
from layerpolicy.runs import read_json, write_csv
from layerpolicy.spec import RunSpec

from .figures_families import label_of, rescoring_spec, run_of
from .figures_record import DIGITS
from .tour import shown

LENS_PROMPTS = "deepmath"  # training problems, none of the MATH-500 problems analysed
LENS_LIMITS = {"qwen": 2, "llama": 4}  # prompts per lens: about 20 CPU minutes each here
METRICS = ("entropy", "kl_to_final")
READOUTS = ("raw", "logit-lens", "jacobian-lens")  # the order of figures and tables
SHAPE_COLUMNS = ("convergence_depth", "convergence_layer", "abruptness", "largest_drop_share")
TABLE = "readouts.csv"
READOUT_LABELS = {"raw": "raw", "logit-lens": "logit lens", "jacobian-lens": "Jacobian lens"}
METRIC_TITLES = {"entropy": "entropy H(π^l)", "kl_to_final": "KL(π_θ ‖ π^l)"}


def readout_facts(
    runs: Mapping[str, tuple[str, Path]], base: RunSpec, cache: Path, out: Path
) -> tuple[dict[str, Any], list[Path]]:
    """record.json's "readouts": per family of `runs` (family -> its model spec and its raw run
    directory, with responses) the lens, the Jacobian-lens run and each readout's shape
    statistics, scored with `base`'s device and analysis settings into `cache`; figures and
    TABLE into `out` (their paths returned beside the facts)."""
    compared = {
        family: family_readouts(family, *dirs, base, cache) for family, dirs in runs.items()
    }
    drawn, rows = {}, []
    for family, (result, _) in compared.items():
        summaries = by_readout(result)
        for metric in METRICS:
            drawn[f"readouts_{metric}_{family}"] = plots.plot_compare(
                {READOUT_LABELS[r]: s for r, s in summaries.items()},
                metric=metric,
                x="layer",
                title=f"{METRIC_TITLES[metric]} · {model_name(result)} · three readouts",
            )
        for summary in summaries.values():
            keep = summary.metric.isin(METRICS) & summary.site.isin(("embed", "resid", "final"))
            rows.append(summary[keep])
    write_csv(pd.concat(rows, ignore_index=True).round(DIGITS), out / TABLE)
    facts = {
        "lens_prompts": LENS_PROMPTS,
        "table": TABLE,
        "models": {family: facts for family, (_, facts) in compared.items()},
    }
    return facts, save_png(drawn, out)


def family_readouts(
    family: str, model_spec: str, raw_dir: Path, base: RunSpec, cache: Path
) -> tuple[CompareResult, dict[str, Any]]:
    """The three readouts of one family compared, and its facts (lens, run, shape per readout)."""
    model = ModelConfig(model_spec, device=base.model.device, offline=True)
    lens = fitted_lens(model, LENS_LIMITS[family])
    spec = rescoring_spec(model, raw_dir, base, "jacobian-lens").replace(lens=str(lens))
    result = compare(
        [str(raw_dir), model_spec],
        spec,
        readouts=READOUTS[1:],
        allow_mixed_readouts=True,
        cache=cache,
    )
    jacobian_run = run_of(result, "jacobian-lens")
    command = [_home(shown(str(part))) for part in spec.to_argv()]
    shape = result.comparison.set_index("readout")
    facts = {
        "model": model_name(result),
        "n_layers": int(shape["n_layers"].iloc[0]),
        "lens": lens_facts(lens),
        "run": shown(str(jacobian_run)),
        "command": shlex.join([*command, "--out", shown(str(jacobian_run))]),
        "fit_command": shlex.join(fit_argv(shown(model_spec), LENS_LIMITS[family])),
        "score_s": read_json(jacobian_run / "run.json").get("timings", {}).get("score_s"),
        "shape": {
            readout: {c: _plain(shape.at[readout, c]) for c in SHAPE_COLUMNS}
            for readout in READOUTS
        },
    }
    return result, facts


def fitted_lens(model: ModelConfig, limit: int) -> Path:
    """lens.pt of `model` fitted on the first `limit` LENS_PROMPTS problems with the fit's
    defaults: the cached one, or fitted now (loading the model only then)."""
    prompt_set = PromptConfig(LENS_PROMPTS, limit=limit).load()
    texts = [prompt_text(item) for item in prompt_set.items]
    settings = FitSettings(LENS_PROMPTS, prompt_set.sha256, n_prompts=len(texts))
    directory = lens_directory(model.resolve().name, settings)
    if is_complete(directory):
        return directory / LENS_FILE
    print(f"fitting the Jacobian lens of {model.spec} on {limit} {LENS_PROMPTS} problems")
    return fit_lens(model.load(), texts, settings)


def lens_facts(lens: Path) -> dict[str, Any]:
    """What the lens was fitted on and how long it took (its settings.json), and how far it is
    from the logit lens: the mean and largest ||J_l − I|| / ||I|| over its blocks."""
    from transformer_lens.tools.analysis import JacobianLens

    settings = read_json(lens.parent / "settings.json")
    jacobians = JacobianLens.load(str(lens)).jacobians
    eye = torch.eye(next(iter(jacobians.values())).shape[0])
    distance = [float((j.float() - eye).norm() / eye.norm()) for j in jacobians.values()]
    return {
        "path": _home(str(lens.parent)),
        **{k: settings[k] for k in ("prompts", "n_prompts", "prompts_fitted", "max_seq_len")},
        **{k: settings[k] for k in ("skip_first_positions", "dim_batch", "fit_s")},
        "distance_from_identity": {"mean": sum(distance) / len(distance), "max": max(distance)},
    }


def fit_argv(model_spec: str, limit: int) -> list[str]:
    """The `layerpolicy lens fit` command that fits (or finds) the lens of `model_spec`."""
    return ["layerpolicy", "lens", "fit", "--model", model_spec, "--prompts", LENS_PROMPTS,
            "--limit", str(limit), "--offline"]  # fmt: skip


def by_readout(result: CompareResult) -> dict[str, pd.DataFrame]:
    """The comparison's summary tables by readout, in READOUTS order."""
    return {readout: result.summaries[label_of(result, readout)] for readout in READOUTS}


def model_name(result: CompareResult) -> str:
    return str(next(iter(result.summaries.values()))["model"].iloc[0])


def _plain(value: Any) -> Any:
    """A table cell as JSON holds it (NaN and NA as None)."""
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _home(text: str) -> str:
    """`text` with the user's home directory written as ~ (a cache path as the user types it)."""
    home = str(Path.home())
    return "~" + text[len(home) :] if text.startswith(home + "/") else text
