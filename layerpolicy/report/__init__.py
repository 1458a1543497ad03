"""Reports built from result tables: the figure sets of a run, a comparison and a training run.

Which figures a run gets is decided here; `layerpolicy.plots` only draws them. The interactive
HTML view of a run is `layerpolicy.report.view`.
"""

from .compare import compare_figures, comparison_markdown
from .run import run_figures
from .train import train_figures

__all__ = ["compare_figures", "comparison_markdown", "run_figures", "train_figures"]
