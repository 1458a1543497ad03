"""figures/README.md's "BuPO against GRPO" section and its files, from record.json's "showcase"
facts (scripts/figures_showcase.py)."""

from __future__ import annotations

from typing import Any

from .findings_format import SHOWCASE, SHOWCASE_DIFFERENCE, SHOWCASE_LOG

SHOWCASE_FIGURE_TEXT = {  # figure name -> what figures/README.md says it shows
    "showcase_reward": "mean reward per rollout of the BuPO and the GRPO run on one axis; "
    "BuPO's IPA rollouts shaded",
    "showcase_difference_bupo": "after − before entropy per layer of the BuPO run (resid, attn, "
    f"mlp); π_θ's change is in {SHOWCASE_DIFFERENCE} (site final)",
    "showcase_difference_grpo": "the same for the GRPO run",
    "showcase_dynamics_bupo": "the BuPO run's internal policy of layer k during training: "
    "H(π^k), KL(π^k ‖ π^j), cos(H^k, H^j) for every later layer j, perplexity of π_θ; the "
    "phase boundary dashed",
    "showcase_dynamics_grpo": "the same for the GRPO run (layer k tracked, never trained)",
}


def showcase_section(record: dict[str, Any]) -> list[str]:
    """The lines of the section: the runs, their prompts, settings, evaluation and commands."""
    showcase = record["showcase"]
    bupo, grpo = showcase["runs"]["bupo"], showcase["runs"]["grpo"]
    train, screen = bupo["settings"], bupo["screen"]
    paired = showcase["bupo_minus_grpo"]
    return [
        "## BuPO against GRPO",
        "",
        f"- {bupo['method']} and {grpo['method']} on {bupo['model']['name']} "
        f"({bupo['model']['quantisation'] or 'original weights'}), {train['steps']} rollouts "
        f"each: s_inter = {train['inter_steps']} on π^k then π_θ, against s_inter = "
        f"{grpo['settings']['inter_steps']}; k = {bupo['layer']['k']} ({bupo['layer']['reason']}).",
        f"- Prompts: {bupo['prompts']['n_prompts']} of `{bupo['prompts']['source']}`; screened "
        f"with {screen['samples']} samples each from the base model (seed {screen['seed']}), the "
        f"{screen['n_kept']} solved sometimes trained on by both runs (`screen.csv` in each run).",
        f"- {train['prompts_per_step']} prompts per rollout × G = {train['group_size']} "
        f"responses of up to {train['max_new_tokens']} tokens, lr {train['lr']}, "
        f"{train['mini_batches']} optimizer steps per rollout, seed {train['seed']}; "
        f"{bupo['train_s'] / 60:.1f} and {grpo['train_s'] / 60:.1f} min of training on "
        f"{bupo['model']['device']}.",
        f"- Reward before/after: {bupo['reward']['samples']} samples per trained prompt from the "
        f"base and each trained model (seed {bupo['reward']['seed']}); mean over prompts of "
        "per-prompt solve rates with 95% bootstrap CIs, after − before paired by prompt; "
        f"{bupo['method']} − {grpo['method']} after training paired by prompt over the "
        f"{paired['n_prompts']} trained prompts (`{paired['file']}` of both runs).",
        f"- Before/after profiles: each model's own sampled responses to the first "
        f"{bupo['analyses']['before']['n_prompts']} trained prompts, response tokens only (raw "
        "readout). Dynamics: a probe of base-model responses to the same prompts, scored every "
        f"{train['monitor_every']} optimizer steps (`dynamics.parquet` in each run).",
        f"- Same runs as `{bupo['command']}` and `{grpo['command']}`.",
        "",
    ]


def showcase_files() -> list[str]:
    """The section's tables in figures/README.md's list of files."""
    return [
        f"- `{SHOWCASE}`: per run the reward before, after and after − before, and BuPO − GRPO "
        "after training paired by prompt (mean over prompts of solve rates, 95% CI).",
        f"- `{SHOWCASE_DIFFERENCE}`: after − before entropy and entropy change per run, site and "
        "layer, approx. 95% CI.",
        f"- `{SHOWCASE_LOG}`: both training logs, one row per rollout (`method` names the run).",
    ]
