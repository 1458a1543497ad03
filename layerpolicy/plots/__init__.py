"""Figures drawn from result tables only (layouts in docs/tables.md); no metric is computed here.

Every figure function takes DataFrames, returns a `matplotlib.figure.Figure` rendered by the Agg
canvas (never registered with pyplot, so nothing is shown twice in notebooks), and styles it inside
a local `rc_context`: no global matplotlib or seaborn state changes. `save_figure` writes it out.

Site colours (`SITE_COLORS`) are the same in every figure. Where several models share one axis,
colour names the model and the line style names the site.
"""

from .base import (
    METRIC_LABELS,
    READOUT_LABELS,
    SIGN_COLORS,
    SITE_COLORS,
    SITE_LINESTYLES,
    X_LABELS,
    PlotInputError,
    escape_text,
    save_figure,
)
from .comparison import plot_compare, plot_compare_entropy_change, plot_difference
from .profile import plot_entropy_change, plot_entropy_profile, plot_kl_to_final, plot_token_heatmap
from .training import plot_training_log

__all__ = [
    "METRIC_LABELS",
    "READOUT_LABELS",
    "SIGN_COLORS",
    "SITE_COLORS",
    "SITE_LINESTYLES",
    "X_LABELS",
    "PlotInputError",
    "escape_text",
    "plot_compare",
    "plot_compare_entropy_change",
    "plot_difference",
    "plot_entropy_change",
    "plot_entropy_profile",
    "plot_kl_to_final",
    "plot_token_heatmap",
    "plot_training_log",
    "save_figure",
]
