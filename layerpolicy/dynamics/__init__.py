"""The internal policies during training: a probe scored every N optimizer steps
(dynamics.parquet) by a TrainerCallback that works with any transformers/TRL trainer."""

from .callback import DYNAMICS_COLUMNS, DYNAMICS_NAME, DynamicsCallback, bind_parameters
from .probe import PROBE_NAME, layer_pair_means, sample_probe, save_probe, score_probe

__all__ = [
    "DYNAMICS_COLUMNS",
    "DYNAMICS_NAME",
    "PROBE_NAME",
    "DynamicsCallback",
    "bind_parameters",
    "layer_pair_means",
    "sample_probe",
    "save_probe",
    "score_probe",
]
