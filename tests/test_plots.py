"""Figures from hand-built tables in the layouts of docs/tables.md."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from layerpolicy import plots, report

N_LAYERS = 4
SITES = ("resid", "attn", "mlp")


def make_summary(
    model: str = "tiny-model",
    readout: str = "raw",
    n_layers: int = N_LAYERS,
    metrics: tuple[str, ...] = ("entropy", "entropy_change", "kl_to_final", "rms_norm"),
    shift: float = 0.0,
) -> pd.DataFrame:
    """A summary.csv frame: embed (layer 0), resid/attn/mlp (1..L), final (L)."""
    rows = []
    for metric in metrics:
        cells = [("embed", 0)] if metric != "entropy_change" else []
        cells += [(s, layer) for s in SITES for layer in range(1, n_layers + 1)]
        if metric != "entropy_change":
            cells.append(("final", n_layers))
        for site, layer in cells:
            mean = {
                "entropy": 10.0 - 2.0 * layer,
                "entropy_change": (-1.0) ** layer * 0.5,
                "kl_to_final": 3.0 / (layer + 1),
                "rms_norm": 2.0**layer,
            }[metric] + shift
            rows.append(
                {
                    "model": model,
                    "readout": readout,
                    "site": site,
                    "layer": layer,
                    "n_layers": n_layers,
                    "rel_depth": layer / n_layers,
                    "metric": metric,
                    "n_prompts": 3,
                    "n_tokens": 30,
                    "mean": mean,
                    "ci_low": mean - 0.2,
                    "ci_high": mean + 0.3,
                    "pooled_mean": mean + 0.05,
                }
            )
    return pd.DataFrame(rows)


def make_tokens(texts: tuple[str, ...] = ("Hello", " $x$", " costs", " $5", "\n")) -> pd.DataFrame:
    """A tokens.parquet frame for two prompts, sites resid and final, both readouts."""
    rows = []
    for prompt_id in ("p0", "p1"):
        for position, text in enumerate(texts):
            for readout in ("raw", "logit-lens"):
                cells = [("resid", layer) for layer in range(1, N_LAYERS + 1)]
                cells.append(("final", N_LAYERS))
                for site, layer in cells:
                    rows.append(
                        {
                            "prompt_id": prompt_id,
                            "position": position,
                            "token_id": position + 10,
                            "token": text,
                            "target_id": position + 11 if position < len(texts) - 1 else -1,
                            "model": "tiny-model",
                            "readout": readout,
                            "site": site,
                            "layer": layer,
                            "n_layers": N_LAYERS,
                            "entropy": float(layer + position),
                            "kl_to_final": 0.1 * layer,
                            "target_logprob": -1.0,
                            "target_rank": 1.0,
                            "top1_agree": layer == N_LAYERS,
                            "rms_norm": 1.0,
                        }
                    )
    return pd.DataFrame(rows)


def make_log(n: int = 10, n_inter: int = 4) -> pd.DataFrame:
    steps = np.arange(1, n + 1)
    return pd.DataFrame(
        {
            "step": steps,
            "reward_mean": np.linspace(0.1, 0.6, n),
            "entropy_final": np.linspace(1.0, 0.7, n),
            "entropy_layer_k": np.linspace(5.0, 4.0, n),
            "kl_layer_k_final": np.linspace(3.0, 2.0, n),
            "loss": np.zeros(n),
            "clip_frac": np.full(n, 0.01),
            "grad_norm": np.ones(n),
            "response_len": np.full(n, 200.0),
            "phase": ["inter"] * n_inter + ["full"] * (n - n_inter),
        }
    )


def labelled_lines(ax) -> dict[str, object]:
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_entropy_profile_lines_bands_final_and_vocab_line():
    fig = plots.plot_entropy_profile(make_summary(), vocab_size=1000)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = labelled_lines(ax)
    assert set(lines) == {"resid", "attn", "mlp", "ln|V| = 6.91"}
    # resid starts at the embedding (layer 0), attn/mlp at layer 1
    np.testing.assert_array_equal(lines["resid"].get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(lines["attn"].get_xdata(), [1, 2, 3, 4])
    (final,) = ax.containers  # the errorbar of pi_theta
    assert final.get_label() == r"final $\pi_\theta$"
    np.testing.assert_array_equal(final.lines[0].get_xdata(), [N_LAYERS])
    np.testing.assert_allclose(lines["ln|V| = 6.91"].get_ydata(), np.log(1000))
    assert len(bands(ax)) == 3
    assert ax.get_ylabel() == "entropy (nats)"
    assert "tiny-model" in ax.get_title() and "raw" in ax.get_title()
    assert lines["resid"].get_color() == plots.SITE_COLORS["resid"]


def test_entropy_profile_norm_panel_is_log_and_needs_rms_norm():
    fig = plots.plot_entropy_profile(make_summary(), sites=("resid",), show_norm=True)
    _, bottom = fig.axes
    assert bottom.get_yscale() == "log"
    assert set(labelled_lines(bottom)) == {"resid"}
    with pytest.raises(ValueError, match=r"no metric 'rms_norm'.*available metrics: entropy"):
        plots.plot_entropy_profile(make_summary(metrics=("entropy",)), show_norm=True)


def test_missing_metric_and_site_raise_clear_errors():
    with pytest.raises(ValueError, match="no metric 'entropy'; available metrics: kl_to_final"):
        plots.plot_entropy_profile(make_summary(metrics=("kl_to_final",)))
    with pytest.raises(ValueError, match=r"no site 'attn_in'.*available sites: attn, embed"):
        plots.plot_kl_to_final(make_summary(), sites=("attn_in",))
    with pytest.raises(ValueError, match="lacks column"):
        plots.plot_entropy_profile(make_summary().drop(columns="ci_low"))
    mixed = pd.concat([make_summary(), make_summary(model="other")])
    with pytest.raises(ValueError, match="2 model values"):
        plots.plot_entropy_profile(mixed)


def test_entropy_change_bars_with_error_bars_and_sign_colours():
    fig = plots.plot_entropy_change(make_summary(), color_by_sign=True)
    attn_ax, mlp_ax = fig.axes
    for ax in (attn_ax, mlp_ax):
        assert len(ax.patches) == N_LAYERS
        assert len(ax.containers) == 2  # bars and their error bars
        assert "nats" in ax.get_ylabel()
    colors = [mpl.colors.to_hex(p.get_facecolor()) for p in attn_ax.patches]
    assert colors == [
        plots.SIGN_COLORS["negative"],
        plots.SIGN_COLORS["positive"],
        plots.SIGN_COLORS["negative"],
        plots.SIGN_COLORS["positive"],
    ]


def test_kl_to_final_log_scale():
    fig = plots.plot_kl_to_final(make_summary(), sites=("resid", "mlp"), log_y=True)
    (ax,) = fig.axes
    assert set(labelled_lines(ax)) == {"resid", "mlp"}
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == plots.METRIC_LABELS["kl_to_final"] + ", log scale"


def test_compare_two_models_on_relative_depth():
    summaries = {"model-a": make_summary("model-a"), "model-b": make_summary("model-b", n_layers=8)}
    fig = plots.plot_compare(summaries)
    (ax,) = fig.axes
    lines = labelled_lines(ax)
    assert set(lines) == {"model-a", "model-b"}
    np.testing.assert_allclose(lines["model-a"].get_xdata(), np.arange(0, 5) / 4)
    np.testing.assert_allclose(lines["model-b"].get_xdata(), np.arange(0, 9) / 8)
    assert len(bands(ax)) == 2
    assert ax.get_xlabel() == "relative depth l / L"
    assert plots.plot_entropy_profile(make_summary()).axes[0].get_xlabel() == (
        "layer l (0 = embedding)"
    )
    by_layer = plots.plot_compare(summaries, x="layer", sites=("attn", "mlp"))
    assert len(labelled_lines(by_layer.axes[0])) == 4
    with pytest.raises(ValueError, match="x must be one of"):
        plots.plot_compare(summaries, x="depth")


def test_compare_entropy_change_panels():
    summaries = {"a": make_summary("a"), "b": make_summary("b", n_layers=6)}
    fig = plots.plot_compare_entropy_change(summaries)
    for ax in fig.axes:
        assert set(labelled_lines(ax)) == {"a", "b"}
        assert len(bands(ax)) == 2


def make_difference(metric: str = "entropy") -> pd.DataFrame:
    """A difference.csv frame: embed (layer 0) and resid/attn/mlp (1..L), skewed bands."""
    cells = [("embed", 0), *((s, layer) for s in SITES for layer in range(1, N_LAYERS + 1))]
    rows = []
    for site, layer in cells:
        mean = 0.1 * layer - 0.2
        rows.append(
            {
                "site": site,
                "layer": layer,
                "n_layers": N_LAYERS,
                "rel_depth": layer / N_LAYERS,
                "metric": metric,
                "before": 5.0,
                "after": 5.0 + mean,
                "mean": mean,
                "ci_low": mean - 0.3,
                "ci_high": mean + 0.1,
            }
        )
    return pd.DataFrame(rows)


def test_difference_draws_the_table_as_given():
    diff = make_difference()
    fig = plots.plot_difference(
        diff, sites=("resid", "mlp"), labels=("base", "tuned"), readout="raw"
    )
    (ax,) = fig.axes
    resid = diff[diff["site"].isin(["embed", "resid"])].sort_values("layer")
    line = labelled_lines(ax)["resid"]
    np.testing.assert_array_equal(line.get_xdata(), resid["layer"].to_numpy(float))
    np.testing.assert_array_equal(line.get_ydata(), resid["mean"].to_numpy(float))
    ys = bands(ax)[0].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose(
        [ys.min(), ys.max()], [resid["ci_low"].min(), resid["ci_high"].max()]
    )
    assert "quadrature" in ax.get_ylabel() and "nats" in ax.get_ylabel()
    assert "tuned − base" in ax.get_title() and "softmax(x W_U)" in ax.get_title()
    with pytest.raises(ValueError, match="no metric 'kl_to_final'; available metrics: entropy"):
        plots.plot_difference(diff, metric="kl_to_final")
    with pytest.raises(ValueError, match="lacks column"):
        plots.plot_difference(diff.drop(columns="ci_low"))
    with pytest.raises(ValueError, match="no site 'mlp'"):
        plots.plot_difference(diff[diff["site"] != "mlp"])


def test_token_heatmap_dollar_tokens_render():
    fig = plots.plot_token_heatmap(make_tokens(), "p0", readout="raw")
    fig.canvas.draw()  # mathtext would raise here on unescaped $...$
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "Hello",
        r" \$x\$",
        " costs",
        r" \$5",
        "\\n",
    ]
    assert ax.images[0].get_array().shape == (N_LAYERS, 5)
    assert fig.axes[1].get_ylabel() == "entropy (nats)"


def test_token_heatmap_errors_and_truncation():
    tokens = make_tokens()
    with pytest.raises(ValueError, match="available ids: p0, p1"):
        plots.plot_token_heatmap(tokens, "nope", readout="raw")
    with pytest.raises(ValueError, match="2 readout values"):
        plots.plot_token_heatmap(tokens, "p0")
    with pytest.raises(ValueError, match="no metric column 'surprise'"):
        plots.plot_token_heatmap(tokens, "p0", metric="surprise", readout="raw")
    fig = plots.plot_token_heatmap(tokens, "p1", site="final", readout="raw", max_positions=3)
    assert fig.axes[0].images[0].get_array().shape == (1, 3)
    assert "3 of 5" in fig.axes[0].get_title()


def test_training_log_shades_inter_phase():
    fig = plots.plot_training_log(make_log())
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 7
    entropy_ax = panels[1]
    assert len(entropy_ax.get_lines()) == 2 and "nats" in entropy_ax.get_ylabel()
    for ax in panels:
        (span,) = ax.patches
        assert (span.get_x(), span.get_x() + span.get_width()) == (0.5, 4.5)
    with pytest.raises(ValueError, match="clip_frac"):
        plots.plot_training_log(make_log().drop(columns="clip_frac"))


def test_save_figure_writes_png_and_svg_atomically(tmp_path: Path):
    fig = plots.plot_entropy_profile(make_summary())
    paths = plots.save_figure(fig, tmp_path / "sub" / "profile_rel0.5")
    assert [p.name for p in paths] == ["profile_rel0.5.png", "profile_rel0.5.svg"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths)  # not mkstemp's 0600
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [p.name for p in paths]
    with pytest.raises(ValueError, match="without suffix"):
        plots.save_figure(plots.plot_kl_to_final(make_summary()), tmp_path / "x.png")


def test_no_global_state_change():
    before = dict(mpl.rcParams)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_entropy_profile(make_summary(), show_norm=True).canvas.draw()
    assert dict(mpl.rcParams) == before


class _Result:
    """What an analysis result's figure set reads: two tables and the recorded vocabulary size."""

    def __init__(self, summary: pd.DataFrame, tokens: pd.DataFrame, vocab_size: int | None = None):
        self.summary, self.tokens = summary, tokens
        self.record, self.path = {"model": {"vocab_size": vocab_size}}, None


def test_run_figures_draw_what_the_run_has(tmp_path):
    tokens = make_tokens().query("readout == 'raw'")
    paths = report.run_figures(_Result(make_summary(), tokens, 1000), tmp_path / "a")
    names = {p.name for p in paths}
    for stem in ("entropy_profile", "kl_to_final", "heatmap_first_prompt", "entropy_change"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert all(p.parent == tmp_path / "a" and p.stat().st_size > 0 for p in paths)
    resid_only = make_summary(metrics=("entropy", "kl_to_final", "rms_norm"))
    resid_only = resid_only[resid_only["site"].isin(["embed", "resid", "final"])]
    paths = report.run_figures(_Result(resid_only, tokens), tmp_path / "b")
    assert {p.stem for p in paths} == {"entropy_profile", "kl_to_final", "heatmap_first_prompt"}


def test_train_figures_add_the_difference_only_with_both_runs(tmp_path):
    before, after = make_summary(), make_summary(shift=1.0)
    paths = report.train_figures(tmp_path, make_log(), before=before, after=after, title="t")
    assert {p.stem for p in paths} == {"training_log", "entropy_difference"}
    paths = report.train_figures(tmp_path / "log", make_log(), before=before)
    assert {p.name for p in paths} == {"training_log.png", "training_log.svg"}
