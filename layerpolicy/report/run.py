"""The figure set of one analysis run: which figures it gets, drawn from its tables."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..errors import LayerpolicyError
from ..tables.results import RunTables
from ..tables.schema import ENTROPY_CHANGE, SAMPLE_COLUMN

MODULE_SITES = ("resid", "attn", "mlp")


def run_figures(result: RunTables, directory: Path | None = None) -> list[Path]:
    """PNG and SVG of the run's standard figures, written to `directory` (default: the run
    directory's figures/); their paths.

    entropy_profile (with the RMS-norm panel and ln|V| of the recorded vocabulary), kl_to_final,
    heatmap_first_prompt (the token table's first prompt, its first response when sampled), and
    entropy_change when the summary holds the entropy change of attn or mlp. Only the sites the
    summary holds are drawn.
    """
    if directory is None:
        if result.path is None:
            raise LayerpolicyError("this result has no run directory; pass the figures' directory")
        directory = Path(result.path) / "figures"
    vocab_size = result.record["model"].get("vocab_size")
    summary = result.summary
    present = set(summary["site"])
    sites = tuple(site for site in MODULE_SITES if site in present)
    tokens = result.tokens
    first_prompt = str(tokens["prompt_id"].iloc[0])
    if SAMPLE_COLUMN in tokens.columns:  # the heatmap of the first prompt's first response
        tokens = tokens[(tokens["prompt_id"] == first_prompt) & (tokens[SAMPLE_COLUMN] == 0)]
    drawn = {
        "entropy_profile": plots.plot_entropy_profile(
            summary, sites=sites, vocab_size=vocab_size, show_norm=True
        ),
        "kl_to_final": plots.plot_kl_to_final(summary, sites=sites),
        "heatmap_first_prompt": plots.plot_token_heatmap(tokens, first_prompt),
    }
    with_change = set(summary.loc[summary["metric"] == ENTROPY_CHANGE, "site"])
    changes = tuple(site for site in ("attn", "mlp") if site in with_change)
    if changes:
        drawn["entropy_change"] = plots.plot_entropy_change(summary, sites=changes)
    return save_all(drawn, Path(directory))


def save_all(drawn: dict, directory: Path) -> list[Path]:
    """Save each named figure as `directory/<name>.png` and `.svg`; the paths written."""
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, directory / name)
    return paths
