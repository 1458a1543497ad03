"""The trained layer k: given, or BuPO's boundary layer of dH_mlp (`layerpolicy.tables.shape`)."""

from __future__ import annotations

import pandas as pd

from ..errors import LayerpolicyError
from ..readout.layer_policy import check_layer as check_layer  # the one k-range check
from ..tables.shape import boundary_layer, format_regions, module_regions


def check_beta(beta: float, s_inter: int) -> None:
    """One line unless beta is 0 whenever phase 1 runs (s_inter > 0): a KL term to a reference
    acts on pi_theta, which phase 1 does not train."""
    if beta != 0 and s_inter > 0:
        raise LayerpolicyError(
            f"beta = {beta} adds a KL term to pi_theta, which phase 1 does not train; "
            "use beta 0 with BuPO, or --inter-steps 0 for GRPO with KL"
        )


def boundary_layer_from(summary: pd.DataFrame, n_layers: int) -> tuple[int, str]:
    """k by the boundary-layer rule on the dH_mlp regions of an analysis summary, and why.

    Raises `NoBoundaryLayerError` (one line naming the regions and asking for --layer N) when
    the model has no exploration region before convergence, or it reaches the last layer.
    """
    regions = module_regions(summary, site="mlp")
    k = boundary_layer(regions, n_layers=n_layers)
    return k, (
        "boundary layer: last layer of the first exploration region of dH_mlp "
        f"(regions {format_regions(regions)})"
    )


def parse_layer(value: str | int) -> int | str:
    """ "auto" or a 1-based layer number, from a CLI string."""
    if isinstance(value, int):
        return value
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise LayerpolicyError(
            f"--layer must be 'auto' or a 1-based layer number, got {value!r}"
        ) from None
