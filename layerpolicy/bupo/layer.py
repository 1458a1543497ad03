"""The trained layer k: given, or BuPO's boundary layer of dH_mlp (`layerpolicy.tables.shape`)."""

from __future__ import annotations

import pandas as pd

from ..errors import LayerpolicyError
from ..tables.shape import boundary_layer, format_regions, module_regions


def check_layer(layer: int, n_layers: int, name: str) -> int:
    """`layer` if it is a trainable internal layer (1..L-1), else a one-line error."""
    if not 1 <= layer < n_layers:
        raise LayerpolicyError(
            f"--layer must lie in 1..{n_layers - 1} for {name} ({n_layers} layers; "
            f"layer {n_layers} is pi_theta without its final norm), got {layer}"
        )
    return layer


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
