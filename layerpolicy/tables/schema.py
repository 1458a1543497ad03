"""Every table's column names, once: the token table, prompt means, summary, comparison, log.

The meaning of each column is in docs/tables.md (token table, prompt means, summary, difference)
and docs/shape.md (comparison); this module is the one place code takes the names from.
"""

from __future__ import annotations

# The input site of each module: a module's entropy change is H(output) - H(input), same layer.
MODULE_INPUTS = {"attn": "attn_in", "mlp": "mlp_in"}
ENTROPY_CHANGE = "entropy_change"

# tokens.parquet: one row per (prompt, position, site, layer).
TOKEN_KEYS = ("prompt_id", "position", "token_id", "token", "target_id", "model", "readout")
TOKEN_METRICS = (
    "entropy",
    "kl_to_final",
    "target_logprob",
    "target_rank",
    "top1_agree",
    "rms_norm",
)
TOKEN_FLOAT_METRICS = ("entropy", "kl_to_final", "target_logprob", "target_rank", "rms_norm")
TOKEN_COLUMNS = [*TOKEN_KEYS, "site", "layer", "n_layers", *TOKEN_FLOAT_METRICS, "top1_agree"]
# Optional token-table columns, present when scored with top_k > 0 (lists per row).
TOP_K_COLUMNS = ("top_ids", "top_logprobs")

# Optional token-table columns of runs that sample or score saved responses: the response's
# index among its prompt's samples, and its grade (NA: ungraded) where the prompts have answers.
SAMPLE_COLUMN = "sample"
CORRECT_COLUMN = "correct"

# responses.parquet: one row per (prompt, sample) of a run that samples (layerpolicy.responses).
RESPONSE_COLUMNS = [
    "prompt_id",
    "sample",
    "seed",
    "prompt_ids",
    "response_ids",
    "response_text",
    "n_tokens",
    "finish_reason",
    "answer",
    "correct",
    "tokenizer",
]

# by_correct.csv: correct against incorrect responses per (site, layer, metric) of one run.
BY_CORRECT_COLUMNS = [
    "site",
    "layer",
    "n_layers",
    "rel_depth",
    "metric",
    "n_correct",
    "correct",
    "correct_low",
    "correct_high",
    "n_incorrect",
    "incorrect",
    "incorrect_low",
    "incorrect_high",
    "difference",
    "difference_low",
    "difference_high",
]

# Per-prompt means (prompt_means.parquet): one row per (prompt, site, layer, metric).
MEANS_COLUMNS = ["prompt_id", "site", "layer", "n_layers", "metric", "value", "n_tokens"]

# summary.csv: one row per (site, layer, metric) of one model and readout.
SUMMARY_COLUMNS = [
    "model",
    "readout",
    "site",
    "layer",
    "n_layers",
    "rel_depth",
    "metric",
    "n_prompts",
    "n_tokens",
    "mean",
    "ci_low",
    "ci_high",
    "pooled_mean",
]

# difference.csv: after - before per (site, layer, metric) of two runs of one architecture.
DIFFERENCE_COLUMNS = [
    "site",
    "layer",
    "n_layers",
    "rel_depth",
    "metric",
    "before",
    "after",
    "mean",
    "ci_low",
    "ci_high",
]

# Shape statistics of one profile (tables.shape.shape_statistics), in comparison.csv order.
SHAPE_COLUMNS = [
    "n_layers",
    "policy_entropy",
    "last_layer_entropy",
    "convergence_depth",
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
]

# comparison.csv: one row per model.
COMPARISON_COLUMNS = [
    "model",
    "n_layers",
    "vocab_size",
    "ln_vocab",
    "readout",
    "n_prompts",
    "n_tokens",
    "policy_entropy",
    "last_layer_entropy",
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
COMPARISON_TEXT_COLUMNS = ("model", "readout", "eic_mlp", "eic_attn", "run")
COMPARISON_INT_COLUMNS = (
    "n_layers",
    "vocab_size",
    "n_prompts",
    "n_tokens",
    "convergence_layer",
    "boundary_layer",
    "boundary_layer_index",
)

# The training log (one row per step) that the training-log figure reads.
TRAINING_LOG_COLUMNS = (
    "step",
    "reward_mean",
    "entropy_final",
    "entropy_layer_k",
    "kl_layer_k_final",
    "loss",
    "clip_frac",
    "grad_norm",
    "response_len",
    "phase",
)
