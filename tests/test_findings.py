"""The README's generated blocks: rendered from figures/ alone, and in step with it.

scripts/findings.py renders the "What it finds" section and scripts/tour.py the Quick tour's
outputs from the files `make figures` writes into figures/; scripts/tour.py also shows the commands
that reproduce make_figures' cached runs. Here: the committed README and figures/README.md equal
the rendering of the committed figures/, a hand-built figures directory renders to the numbers it
holds (words that compare computed from them), the commands shown name the runs make_figures
computes, and a finished BuPO run trained with other settings is refused, not reused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import typer
from layerpolicy.cli.app import app
from typer.testing import CliRunner

import layerpolicy.bupo
import layerpolicy.bupo.run
from layerpolicy.comparison import cache_name
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.report.figures import TrainedTables, family_figures, showcase_figures
from layerpolicy.runs import write_csv, write_json
from layerpolicy.spec import RunSpec
from layerpolicy.tables.schema import (
    COMPARISON_COLUMNS,
    COMPARISON_INT_COLUMNS,
    DIFFERENCE_COLUMNS,
    SUMMARY_COLUMNS,
)
from scripts import findings, findings_files, findings_format, make_figures, readme_blocks, tour
from scripts.findings_bupo_files import SHOWCASE_FIGURE_TEXT
from tests.test_plots import make_log, make_summary

REPO = Path(__file__).resolve().parent.parent

QWEN, SMOL = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"


# ------------------------------------------------------------------------------ committed files


def test_readme_blocks_are_the_rendering_of_the_committed_figures():
    figures = REPO / "figures"
    if not (figures / findings.RECORD).is_file():
        pytest.skip(
            "figures/record.json does not exist yet: regenerate figures/ with `make figures`"
        )
    text = (REPO / "README.md").read_text()
    assert readme_blocks.update_readme(text, figures) == text, (
        "README.md's generated blocks differ from figures/; run `make figures` instead of "
        "editing them by hand"
    )
    assert "prompt text" not in (figures / "README.md").read_text()
    record = json.loads((figures / findings.RECORD).read_text())
    assert findings_files.render_figures_readme(record) == (figures / "README.md").read_text()


def test_readme_has_every_block_once():
    text = (REPO / "README.md").read_text()
    for name in readme_blocks.BLOCKS:
        readme_blocks.replace_block(text, name, "x")  # raises when a marker is missing


# ------------------------------------------------------------------------------ replace_block


def test_replace_block_replaces_only_between_its_markers():
    text = "a\n<!-- make-figures:x -->\nold\n<!-- /make-figures:x -->\nb\n"
    assert readme_blocks.replace_block(text, "x", "new 1\nnew 2\n") == (
        "a\n<!-- make-figures:x -->\nnew 1\nnew 2\n<!-- /make-figures:x -->\nb\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        "<!-- make-figures:x -->\nonly the start\n",
        "only the end\n<!-- /make-figures:x -->\n",
        "<!-- /make-figures:x -->\nreversed\n<!-- make-figures:x -->\n",
        "<!-- make-figures:x -->\n<!-- make-figures:x -->\n<!-- /make-figures:x -->\n",
    ],
)
def test_replace_block_names_a_missing_marker(text):
    with pytest.raises(
        readme_blocks.ReadmeBlockError, match=r"<!-- make-figures:x -->.*put them back"
    ):
        readme_blocks.replace_block(text, "x", "new")


# ------------------------------------------------------------------------------ a built figures/


def comparison_row(model: str, readout: str, **values) -> dict:
    row = dict.fromkeys(COMPARISON_COLUMNS)
    row.update(model=model, readout=readout, n_prompts=24, **values)
    return row


def flat_findings(figures_dir: Path) -> str:
    """The findings block rendered from `figures_dir`, with every run of whitespace one space."""
    return " ".join(findings.render_findings(figures_dir).split())


def showcase_run(method: str, reward_ci: tuple[float, float], inter_steps: int) -> dict:
    """One training run's facts as record.json's "showcase" holds them, with numbers chosen here
    (BuPO's after − before entropies differ from GRPO's)."""
    bupo = method == "BuPO"
    after = (0.4167, 0.3333, 0.5) if bupo else (0.2917, 0.2, 0.375)
    reward = {
        "before": {"prompt_mean": 0.3125, "ci_low": 0.25, "ci_high": 0.375, "n_prompts": 9},
        "after": {"prompt_mean": after[0], "ci_low": after[1], "ci_high": after[2],
                  "n_prompts": 9},
        "difference": {"mean": after[0] - 0.3125, "ci_low": reward_ci[0],
                       "ci_high": reward_ci[1], "n_prompts": 9},
        "samples": 4, "seed": 1, "function": "math_reward",
        "verifier": {"name": "math-verify", "version": "0.9.0"},
    }  # fmt: skip
    at_k = {
        when: {"policy_entropy": h, "policy_entropy_ci": [h - 0.1, h + 0.1],
               "entropy_resid": r, "entropy_resid_ci": [r - 0.1, r + 0.1],
               "dh_mlp": -2.4, "dh_mlp_ci": [-2.6, -2.2], "dh_attn": -1.2,
               "dh_attn_ci": [-1.4, -1.0], "eic_mlp": "E1 I2-20 E21-24"}
        for when, h, r in (("before", 1.9, 0.6), ("after", 1.5 if bupo else 1.7, 0.9))
    }  # fmt: skip
    return {
        "method": method,
        "model": {"name": QWEN, "hub_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                  "quantisation": "Q4_K_M (dequantised to float32)", "device": "cpu",
                  "n_layers": 24},
        "prompts": {"source": "builtin", "n_prompts": 24},
        "screen": {"samples": 4, "seed": 0, "n_kept": 9,
                   "summary": {"never": 0.5, "sometimes": 0.375, "always": 0.125}},
        "settings": {"steps": 10, "inter_steps": inter_steps, "prompts_per_step": 2,
                     "group_size": 4, "max_new_tokens": 160, "temperature": 1.0,
                     "mini_batches": 2, "lr": 1e-5, "seed": 0, "analysis_prompts": 4,
                     "monitor_every": 6},
        "layer": {"k": 6, "reason": "given: --layer 6"},
        "train_s": 1500.0 if bupo else 1380.0,
        "reward": reward,
        "entropy_at_k": at_k,
        "analyses": {"before": {"n_prompts": 4, "n_tokens": 612},
                     "after": {"n_prompts": 4, "n_tokens": 588}},
        "command": f"layerpolicy train --model {QWEN} --inter-steps {inter_steps} --layer 6",
    }  # fmt: skip


def built_figures(
    directory: Path,
    *,
    reward_ci=(0.021, 0.187),
    paired_ci=(0.02, 0.23),
    abruptness=(0.38, 0.006),
) -> Path:
    """A figures/ directory as make_figures writes it, with numbers chosen here."""
    directory.mkdir()
    qwen = {"n_layers": 24, "vocab_size": 151936, "ln_vocab": 11.931, "n_tokens": 4321}
    smol = {"n_layers": 30, "vocab_size": 49152, "ln_vocab": 10.803, "n_tokens": 3876}
    rows = [
        comparison_row(QWEN, "raw", **qwen, policy_entropy=1.314, last_layer_entropy=6.736,
                       convergence_depth=0.917, convergence_layer=22, abruptness=abruptness[0],
                       largest_drop_share=0.4, eic_mlp="E1 I2-16 E17-24", eic_attn="I1-2 E3-24",
                       mean_abs_dh_mlp=0.835, boundary_layer=1, boundary_layer_index=0,
                       boundary_rel_depth=0.042),
        comparison_row(QWEN, "logit-lens", **qwen, policy_entropy=1.314, last_layer_entropy=1.314,
                       convergence_depth=0.875, convergence_layer=21, abruptness=0.065,
                       largest_drop_share=0.283),
        comparison_row(SMOL, "raw", **smol, policy_entropy=1.868, last_layer_entropy=0.038,
                       convergence_depth=0.033, convergence_layer=1, abruptness=abruptness[1],
                       largest_drop_share=0.838, eic_mlp="C1-30", eic_attn="I1 C2-30",
                       mean_abs_dh_mlp=7.318),
        comparison_row(SMOL, "logit-lens", **smol, policy_entropy=1.868, last_layer_entropy=1.868,
                       abruptness=None, largest_drop_share=None),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS).drop(columns=["run"])
    write_csv(
        table.astype(dict.fromkeys(COMPARISON_INT_COLUMNS, "Int64")), directory / "comparison.csv"
    )
    finals = [
        (QWEN, readout, 24, 4321, 1.3142, 1.2103, 1.4201, 1.2984)
        for readout in ("raw", "logit-lens")
    ] + [(SMOL, readout, 30, 3876, 1.8681, 1.78, 1.9517, 1.9) for readout in ("raw", "logit-lens")]
    summary = pd.DataFrame(
        [
            {"model": m, "readout": r, "site": "final", "layer": n, "n_layers": n, "rel_depth": 1.0,
             "metric": "entropy", "n_prompts": 24, "n_tokens": t, "mean": mean, "ci_low": low,
             "ci_high": high, "pooled_mean": pooled}
            for m, r, n, t, mean, low, high, pooled in finals
        ],
        columns=SUMMARY_COLUMNS,
    )  # fmt: skip
    resid = {"model": QWEN, "readout": "raw", "site": "resid", "layer": 1, "n_layers": 24,
             "rel_depth": 1 / 24, "metric": "entropy", "n_prompts": 24, "n_tokens": 4321,
             "mean": 11.52, "ci_low": 11.5, "ci_high": 11.54, "pooled_mean": 11.52}  # fmt: skip
    write_csv(pd.concat([summary, pd.DataFrame([resid])]), directory / "summary.csv")
    diff = pd.DataFrame(
        [
            (method, site, layer, 24, layer / 24, metric, 0.0, change, change, low, high)
            for method, rows in (
                ("BuPO", [("final", 24, "entropy", -0.4, -0.55, -0.25),
                          ("resid", 6, "entropy", 0.3, 0.1, 0.5),
                          ("mlp", 6, "entropy_change", 0.1, -0.2, 0.4),
                          ("attn", 6, "entropy_change", -0.1, -0.3, 0.1)]),
                ("GRPO", [("final", 24, "entropy", -0.2, -0.45, 0.05),
                          ("resid", 6, "entropy", -0.3, -0.5, -0.1),
                          ("mlp", 6, "entropy_change", 0.2, 0.05, 0.35),
                          ("attn", 6, "entropy_change", 0.0, -0.2, 0.2)]),
            )
            for site, layer, metric, change, low, high in rows
        ],
        columns=["method", *DIFFERENCE_COLUMNS],
    )  # fmt: skip
    write_csv(diff, directory / "showcase_difference.csv")
    showcase = {
        label: showcase_run(method, reward_ci if method == "BuPO" else (-0.1, 0.05), inter)
        for label, method, inter in (("bupo", "BuPO", 3), ("grpo", "GRPO", 0))
    }
    model = {"thinking": None, "dtype": "float32", "device": "cpu", "responses": 24}
    record = {
        "families": ["qwen", "llama"],
        "prompts": {"source": "math500", "title": "MATH-500", "dataset": "HuggingFaceH4/MATH-500",
                    "split": "test", "local_copy": True, "sha256": "279b2a0322e3" + "0" * 52,
                    "n_problems": 24},
        "sampling": {"max_new_tokens": 192, "temperature": 1.0, "seed": 0,
                     "distribution": "softmax(z / T), nothing else",
                     "seeding": "one seed per response"},
        "statistics": {"n_boot": 1000, "seed": 0, "max_tokens": 1024},
        "models": {
            "qwen": {**model, "name": QWEN, "hub_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                     "architecture": "Qwen2ForCausalLM", "n_layers": 24, "vocab_size": 151936,
                     "quantisation": "Q4_K_M (dequantised to float32)", "response_tokens": 4321,
                     "responses_at_cap": 20, "seconds": {"raw": 2160.0, "logit-lens": 660.0}},
            "llama": {**model, "name": SMOL, "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "architecture": "LlamaForCausalLM", "n_layers": 30, "vocab_size": 49152,
                      "quantisation": "Q4_1 (dequantised to float32)", "response_tokens": 3876,
                      "responses_at_cap": 17, "seconds": {"raw": 480.0, "logit-lens": 45.0}},
        },
        "showcase": {
            "runs": showcase,
            "bupo_minus_grpo": {"mean": 0.125, "ci_low": paired_ci[0], "ci_high": paired_ci[1],
                                "n_prompts": 9, "samples": 4, "file": "reward_after.csv"},
        },
        "figures": ["compare_entropy.png", *(f"{name}.png" for name in SHOWCASE_FIGURE_TEXT)],
        "quick_tour": {
            "entropy": {"family": "llama", "command": "layerpolicy entropy --model m --limit 24"},
            "compare": {"command": "layerpolicy compare qwen llama --limit 24 --offline",
                        "cache": "runs/cache"},
        },
    }  # fmt: skip
    write_json(record, directory / "record.json")
    (directory / "entropy_output.txt").write_text("\n".join(rich_table(12)) + "\n")
    compare_lines = [
        "note: qwen -> qwen2.5-coder-0.5b-instruct (--offline)",
        *rich_table(3),
        *(f"reading line {i}" for i in range(1, 7)),
        "results in runs/compare-qwen-llama (comparison.csv, comparison.md, figures/) in",
        "1.5 s",
    ]
    (directory / "compare_output.txt").write_text("\n".join(compare_lines) + "\n")
    return directory


def rich_table(rows: int) -> list[str]:
    """A table drawn as rich draws one: title, head, `rows` body rows, bottom."""
    body = [f"│ {layer:>5} │ {layer / 10:4.2f} │" for layer in range(rows)]
    return ["   title", "┏━━━━━━━┳━━━━━━┓", "┃ layer ┃    H ┃", "┡━━━━━━━╇━━━━━━┩", *body,
            "└───────┴──────┘"]  # fmt: skip


def test_findings_quote_the_protocol_and_the_weights(tmp_path):
    text = findings.render_findings(built_figures(tmp_path / "figures"))
    flat = " ".join(text.split())
    assert "the first 24 problems of MATH-500 (a local copy of `HuggingFaceH4/MATH-500`" in flat
    assert "sha256 279b2a0322e3…" in flat
    assert "at T = 1 by pure sampling (softmax(z / T), nothing else" in flat
    assert "at most 192 tokens" in flat and "no thinking switch" in flat
    assert "qwen2.5-coder-0.5b-instruct: 4,321 tokens, 20 of 24 responses cut at the cap" in flat
    assert "smollm2-135m-instruct: 3,876 tokens, 17 of 24 responses cut at the cap" in flat
    assert "dequantised GGUF files, not the original checkpoints" in flat
    assert "qwen2.5-coder-0.5b-instruct (a copy of `Qwen/Qwen2.5-Coder-0.5B-Instruct`; " in flat
    assert "from GGUF Q4_K_M (dequantised to float32)" in flat
    assert "qwen2.5-coder-0.5b-instruct raw 36 min and logit lens 11 min on the CPU" in flat
    assert "[docs/shape.md](docs/shape.md)" in flat
    assert "[Tan et al., arXiv 2512.19673](https://arxiv.org/abs/2512.19673)" in flat
    assert "prompt text" not in flat


def test_findings_table_holds_both_readouts_of_both_models(tmp_path):
    text = findings.render_findings(built_figures(tmp_path / "figures"))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| | "))
    assert header == (
        "| | qwen2.5-coder-0.5b-instruct, raw | qwen2.5-coder-0.5b-instruct, logit lens | "
        "smollm2-135m-instruct, raw | smollm2-135m-instruct, logit lens |"
    )

    def row(title: str) -> list[str]:
        line = next(line for line in lines if line.startswith(f"| {title} |"))
        return [cell.strip() for cell in line.strip().strip("|").split(" | ")[1:]]

    assert row("H(π_θ), mean over problems [95% CI]")[0] == "1.314 [1.210, 1.420]"
    assert row("H(π_θ), pooled over tokens") == ["1.298", "1.298", "1.900", "1.900"]
    assert row("convergence depth (layer)")[:3] == ["0.917 (22 of 24)", "0.875 (21 of 24)",
                                                    "0.033 (1 of 30)"]  # fmt: skip
    assert row("convergence depth (layer)")[3].startswith("none (never settles")
    assert row("EIC regions of ΔH_mlp")[:3] == ["E1 I2-16 E17-24", "–", "C1-30"]
    assert row("boundary layer k")[0] == "1 (l/L = 0.042)"
    assert row("boundary layer k")[2] == "none (no exploration region before convergence)"
    assert row("largest single-layer share of the drop")[3] == "none (no drop)"


def test_findings_readings_and_contrast_come_from_the_numbers(tmp_path):
    flat = flat_findings(built_figures(tmp_path / "a"))
    assert "**Raw readout.** qwen2.5-coder-0.5b-instruct (24 layers, raw readout)" in flat
    assert "at relative depth 0.917 (layer 22 of 24)" in flat
    assert "**Logit lens.** qwen2.5-coder-0.5b-instruct (24 layers, logit-lens readout)" in flat
    assert "abruptness is 0.006 for smollm2-135m-instruct against 0.380" in flat
    assert "(the reverse of the paper's order)" in flat
    swapped = built_figures(tmp_path / "b", abruptness=(0.1, 0.9))
    flat = flat_findings(swapped)
    assert "abruptness is 0.900 for smollm2-135m-instruct against 0.100" in flat
    assert "abruptness is 0.900 for smollm2-135m-instruct against 0.100 for " in flat
    assert "qwen2.5-coder-0.5b-instruct (the paper's order)" in flat


@pytest.mark.parametrize(
    ("ci", "word"),
    [
        ((0.021, 0.187), "rose"),
        ((-0.05, 0.187), "did not change measurably"),
        ((-0.3, -0.01), "fell"),
    ],
)
def test_showcase_reward_words_follow_their_intervals(tmp_path, ci, word):
    flat = flat_findings(built_figures(tmp_path / "f", reward_ci=ci))
    reward = (
        f"| reward (mean of per-prompt solve rates) | 0.312 [0.250, 0.375] | 0.417 [0.333, 0.500] "
        f"| +0.104 [{ci[0]:+.3f}, {ci[1]:+.3f}] | 0.312 [0.250, 0.375] | 0.292 [0.200, 0.375] "
        "| -0.021 [-0.100, +0.050] |"
    )
    assert reward in flat
    assert f"the reward {word} under BuPO and did not change measurably under GRPO;" in flat


@pytest.mark.parametrize(
    ("ci", "word"),
    [
        ((0.02, 0.23), "higher after BuPO"),
        ((-0.1, 0.23), "not measurably different (CI includes 0)"),
        ((-0.3, -0.02), "higher after GRPO"),
    ],
)
def test_bupo_minus_grpo_is_worded_from_its_paired_interval(tmp_path, ci, word):
    flat = flat_findings(built_figures(tmp_path / "f", paired_ci=ci))
    assert (
        "BuPO − GRPO after training, paired by prompt over the 9 trained prompts (4 responses "
        f"each from each trained model): +0.125 [{ci[0]:+.3f}, {ci[1]:+.3f}]; the reward is "
        f"{word}."
    ) in flat


def test_showcase_section_states_settings_screen_layer_and_entropies(tmp_path):
    figures = built_figures(tmp_path / "f")
    text = findings.render_findings(figures)
    flat = " ".join(text.split())
    assert "### BuPO against GRPO" in text and "BuPO before and after" not in text
    assert (
        "BuPO against plain GRPO at equal budget, both from qwen2.5-coder-0.5b-instruct, "
        "whose weights here are the packaged GGUF file, Q4_K_M (dequantised to float32), "
        "not the original checkpoint"
    ) in flat
    assert (
        "Both runs take 10 rollouts with the same settings and seed (0) and differ in "
        "s_inter only: BuPO trains the internal policy π^k of layer k in its first "
        "s_inter = 3 rollouts (IPA), then π_θ; GRPO (s_inter = 0) trains π_θ"
    ) in flat
    assert "2 prompts × G = 4 responses of at most 160 tokens at T = 1" in flat
    assert "2 optimizer steps (lr 1e-05); training took 25 min and 23 min on the CPU" in flat
    assert "by math-verify 0.9.0, else 0" in flat and "earlier reward" not in flat
    assert "24 of the built-in arithmetic" in flat and "the 9 it solves sometimes" in flat
    assert "never 50%, always 12% of the prompts" in flat
    assert (
        "Layer k = 6 of 24 (given: --layer 6): on the MATH-500 responses above, its ΔH_mlp "
        "regions are E1 I2-16 E17-24 and the boundary-layer rule gives k = 1, whose "
        "raw-readout policy is nearly uniform: H = 11.520 nats against ln|V| = 11.931"
    ) in flat
    assert (
        "| H(π_θ) | 1.900 [1.800, 2.000] | 1.500 [1.400, 1.600] | -0.400 [-0.550, -0.250] "
        "| 1.900 [1.800, 2.000] | 1.700 [1.600, 1.800] | -0.200 [-0.450, +0.050] |"
    ) in flat
    assert (
        "| H(π^k), resid entropy at k = 6 | 0.600 [0.500, 0.700] | 0.900 [0.800, 1.000] "
        "| +0.300 [+0.100, +0.500] | 0.600 [0.500, 0.700] | 0.900 [0.800, 1.000] "
        "| -0.300 [-0.500, -0.100] |"
    ) in flat
    assert (
        "H(π_θ) fell under BuPO and did not change measurably under GRPO; H(π^k) rose under "
        "BuPO and fell under GRPO; ΔH_mlp did not change measurably under BuPO and rose "
        "under GRPO; ΔH_attn did not change measurably under BuPO and did not change "
        "measurably under GRPO."
    ) in flat
    for name in (
        "showcase_reward",
        *(
            f"showcase_{kind}_{run}"
            for kind in ("difference", "dynamics")
            for run in ("bupo", "grpo")
        ),
    ):
        assert f'src="figures/{name}.png"' in text
    assert (
        f"layerpolicy train --model {QWEN} --inter-steps 3 --layer 6\n"
        f"layerpolicy train --model {QWEN} --inter-steps 0 --layer 6\n```" in text
    )
    files = findings_files.render_figures_readme(json.loads((figures / "record.json").read_text()))
    assert "## BuPO against GRPO" in files and "- `showcase.csv`: per run" in files
    record = json.loads((figures / "record.json").read_text())
    record["showcase"]["runs"]["grpo"]["settings"]["lr"] = 1e-6
    (figures / "record.json").write_text(json.dumps(record))
    assert "and differ in lr besides s_inter:" in flat_findings(figures)


def test_quick_tour_blocks_cut_long_outputs_where_marked(tmp_path):
    figures = built_figures(tmp_path / "figures")
    entropy = tour.render_entropy_tour(figures)
    flat = " ".join(entropy.split())
    assert flat.startswith("One model's profile (8 min to sample and score 24 MATH-500 problems")
    assert "```bash\nlayerpolicy entropy --model m --limit 24\n```" in entropy
    body = [line for line in entropy.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in body] == ["0", "1", "2", "3", "4", "…", "8",
                                                              "9", "10", "11"]  # fmt: skip
    assert len({len(line) for line in body}) == 1  # the marked row is as wide as the others
    compare = tour.render_compare_tour(figures).splitlines()
    text = compare[compare.index("```text") + 1 : -1]
    assert text[0].startswith("note: qwen ->") and text[-3:] == [
        "…",
        "results in runs/compare-qwen-llama (comparison.csv, comparison.md, figures/) in",
        "1.5 s",
    ]
    assert text[-6:-3] == ["reading line 1", "reading line 2", "reading line 3"]
    assert "`runs/cache/`" in compare[0]


def test_short_outputs_are_not_cut():
    lines = rich_table(3)
    assert tour.cut_table(lines, 5, 4) == lines
    assert tour.keep_ends(["a", "b", "c"], 1, 1) == ["a", "b", "c"]
    assert tour.keep_ends(list("abcdef"), 2, 1) == ["a", "b", "…", "f"]


# ------------------------------------------------------------------------------ make_figures


def readme_spec(**changes) -> RunSpec:
    """make_figures' raw-readout spec of the README's analyses, on the builtin prompts."""
    parsed = make_figures._parser().parse_args(["--prompts", "builtin"])
    return make_figures.raw_spec(SimpleNamespace(**{**vars(parsed), **changes}))


def test_compare_command_loads_the_runs_family_runs_caches():
    spec, runs_dir = readme_spec(), REPO / "runs"
    sha256 = spec.prompts.load().sha256
    runs = {}
    for family in make_figures.FAMILIES:
        one = spec.replace(model=family)
        source = one.model.resolve()
        name = cache_name(one, source.name, source.location, sha256)
        runs[source.name] = runs_dir / "cache" / name
    families = make_figures.FAMILIES
    argv = tour.compare_argv(spec, runs_dir, families)
    assert argv[: 2 + len(families)] == ["layerpolicy", "compare", *families]
    assert "--cache" not in argv  # the repository's runs/: the command as a user types it
    tour.check_loads_cached(argv, SimpleNamespace(runs=runs))
    changed = readme_spec(generate=make_figures.GENERATE + 1)
    other = tour.compare_argv(changed, runs_dir, families)
    with pytest.raises(LayerpolicyError, match="would not load the cached runs"):
        tour.check_loads_cached(other, SimpleNamespace(runs=runs))


def test_entropy_command_has_the_settings_of_the_run_it_shows(tmp_path):
    spec = readme_spec()
    settings = spec.settings(spec.prompts.load().sha256, model_name=SMOL)
    write_json({"settings": settings}, tmp_path / "run" / "run.json")
    argv = tour.entropy_argv(spec, "llama")
    assert argv[:4] == ["layerpolicy", "entropy", "--model", "llama"]
    tour.check_same_run(argv, tmp_path / "run")
    write_json({"settings": {**settings, "generate": 7}}, tmp_path / "run" / "run.json")
    with pytest.raises(
        LayerpolicyError, match=r"would not reproduce: .*other settings \(generate\)"
    ):
        tour.check_same_run(argv, tmp_path / "run")


# The commands that trained the README's showcase runs, as typed (make_figures.SHOWCASE must
# record the same settings; its own command line may order the flags otherwise).
TYPED = (
    "layerpolicy train --model qwen2.5-coder-0.5b-instruct --offline --prompts builtin --limit 24 "
    "--screen 4 --steps 10 --inter-steps {inter} --layer 6 --group-size 4 --prompts-per-step 2 "
    "--mini-batches 2 --max-new-tokens 160 --lr 1e-05 --eval-samples 4 --analyse "
    "--analysis-prompts 4 --monitor-every 6 --save-every 2 --seed 0 --device cpu "
    "--out runs/showcase-{label}"
)


def cli_spec(argv: list[str], monkeypatch) -> tuple[RunSpec, Path]:
    """The RunSpec and run directory `layerpolicy train` builds from `argv` (stopped before
    training)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(spec, *, out, **kwargs):
        seen.update(spec=spec, out=out)
        raise Stop

    monkeypatch.setattr(layerpolicy.bupo, "train", fake_train)
    result = CliRunner().invoke(app, argv[1:])
    assert isinstance(result.exception, Stop), result.output
    return seen["spec"], Path(seen["out"])


@pytest.mark.end_to_end
@pytest.mark.parametrize(("label", "inter"), [("bupo", 3), ("grpo", 0)])
def test_showcase_commands_train_the_showcase_specs(tmp_path, monkeypatch, label, inter):
    wanted = make_figures.SHOWCASE[label]
    out = make_figures.showcase_dir(tmp_path, label)
    spec, where = cli_spec(make_figures.train_argv(wanted, out), monkeypatch)
    typed, _ = cli_spec(TYPED.format(inter=inter, label=label).split(), monkeypatch)
    sha256 = wanted.prompts.load().sha256
    for built in (spec, typed):
        assert built.settings(sha256) == wanted.settings(sha256)
        assert (built.train, built.model, built.prompts) == (wanted.train, wanted.model,
                                                             wanted.prompts)  # fmt: skip
    assert wanted.train.s_inter == inter and (wanted.model.device, wanted.model.offline) == (
        "cpu", True
    )  # fmt: skip
    assert where == tmp_path / f"showcase-{label}"
    assert json.loads(json.dumps(dataclasses.asdict(spec.train)))  # a plain config
    other = make_figures.SHOWCASE["grpo" if label == "bupo" else "bupo"]
    assert other.settings(sha256) != wanted.settings(sha256)


def test_cli_params_parses_without_running():
    params = tour.cli_params(["entropy", "--model", "tiny-llama", "--limit", "3"])
    assert (params["model"], params["limit"], params["generate"]) == ("tiny-llama", 3, 0)
    with pytest.raises(typer.TyperException, match="greater than or equal to 1"):
        tour.cli_params(["entropy", "--limit", "0"])


def train_settings(path: Path, spec: RunSpec, monkeypatch) -> dict:
    """The settings train() records when make_figures trains `spec` into `path` (stopped before
    training: no model loaded, nothing sampled)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_open_run(run, settings, resume, **kwargs):
        seen.update(settings)
        raise Stop

    monkeypatch.setattr(layerpolicy.bupo.run, "model_depth", lambda *a, **k: (24, QWEN))
    monkeypatch.setattr(layerpolicy.bupo.run, "open_run", fake_open_run)
    with pytest.raises(Stop):
        make_figures.trained_run(path, spec, "auto")
    return seen


@pytest.mark.parametrize("label", ["bupo", "grpo"])
def test_a_finished_showcase_run_with_other_settings_is_refused(tmp_path, monkeypatch, label):
    path, spec = tmp_path / label, make_figures.SHOWCASE[label]
    settings = train_settings(path, spec, monkeypatch)
    assert settings["model"] == QWEN and settings["steps"] == 10
    assert settings["inter_steps"] == spec.train.inter_steps
    write_json({"status": "complete", "settings": settings}, path / "run.json")
    assert make_figures.finished_record(path, spec)["settings"] == settings  # reused as it is
    other = {**settings, "steps": 12, "lr": 1e-6}
    write_json({"status": "complete", "settings": other}, path / "run.json")
    with pytest.raises(RunDirectoryError, match=r"\(lr, steps\); delete or move it") as raised:
        make_figures.finished_record(path, spec)
    assert "\n" not in str(raised.value)
    write_json({"status": "running", "settings": other}, path / "run.json")
    assert make_figures.finished_record(path, spec)["status"] == "running"  # checked on resume


def make_dynamics(k: int = 2, n_layers: int = 4, inter_steps: int = 2) -> pd.DataFrame:
    """A dynamics.parquet frame: per step the resid entropy of every layer, KL(π^k || π^j) and
    cos(H^k, H^j) for j > k, and the perplexity of π_θ."""
    rows = []
    for step in range(0, 6, 2):
        phase = "inter" if step < inter_steps else "full"
        cells = [("resid", j, "entropy", 5.0 - j - 0.1 * step) for j in range(1, n_layers + 1)]
        cells += [
            ("resid", j, m, 0.5)
            for j in range(k + 1, n_layers + 1)
            for m in ("kl_from_k", "cos_with_k")
        ]
        cells.append(("final", n_layers, "perplexity", 3.0 - 0.1 * step))
        rows += [{"step": step, "phase": phase, "k": k, "site": site, "layer": layer,
                  "metric": metric, "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
                 for site, layer, metric, mean in cells]  # fmt: skip
    return pd.DataFrame(rows)


def test_readme_figure_set_is_named_by_family_and_written_as_png(tmp_path):
    raw = {"m-a": make_summary("m-a"), "m-b": make_summary("m-b", n_layers=6)}
    lens = {name: make_summary(name, readout="logit-lens") for name in raw}
    vocab = {"m-a": 1000, "m-b": 2000}
    paths = family_figures(("qwen", "llama"), raw, lens, vocab, tmp_path)
    assert [p.name for p in paths] == [
        *(f"{kind}_{family}.png" for family in ("qwen", "llama")
          for kind in ("entropy_profile", "entropy_change")),
        "compare_entropy.png", "compare_entropy_logit_lens.png", "compare_entropy_change.png",
    ]  # fmt: skip
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError):  # one family label per model
        family_figures(("qwen",), raw, lens, vocab, tmp_path)
    before, after = make_summary("m-b"), make_summary("m-b", shift=1.0)
    runs = {
        label: TrainedTables(
            {"method": method, "model": {"name": "m-b"}, "layer": {"k": 2}},
            make_log(n_inter=inter), before, after, make_dynamics(inter_steps=inter),
        )
        for label, method, inter in (("bupo", "BuPO", 4), ("grpo", "GRPO", 0))
    }  # fmt: skip
    paths = showcase_figures(runs, tmp_path / "showcase")
    assert [p.name for p in paths] == [
        "showcase_reward.png",
        *(f"showcase_{kind}_{label}.png" for label in ("bupo", "grpo")
          for kind in ("difference", "dynamics")),
    ]  # fmt: skip
    assert all(p.stat().st_size > 0 for p in paths)
    assert {p.stem for p in paths} == set(SHOWCASE_FIGURE_TEXT)  # figures/README.md names each


# ------------------------------------------------------------------------------ three families


def test_a_model_without_chat_template_is_named_as_reading_plain_text():
    qwen = {"name": "qwen-x", "thinking": False, "chat_template": True}
    gemma = {"name": "gemma-x", "thinking": None, "chat_template": False}
    phrase = findings_format.thinking_phrase([qwen, gemma])
    assert phrase.startswith("chat template in its no-thinking mode; gemma-x without one")
    assert "plain text" in phrase
    assert "gemma" not in findings_format.thinking_phrase([qwen])  # only the templated model
    assert findings_format.thinking_phrase([gemma]).startswith("gemma-x without one")


def test_three_families_get_three_sides_and_their_own_figures():
    record = {
        "families": ["qwen", "llama", "gemma"],
        "models": {f: {"name": f"{f}-model"} for f in ("qwen", "llama", "gemma")},
    }
    intro, rows, changes = findings._profiles(record)
    assert "qwen-model left, llama-model middle, gemma-model right" in intro
    assert rows.count("entropy_profile_gemma.png") == 1 and 'width="32%"' in rows
    assert changes.startswith("The three models' module entropy changes")
    record["families"] = ["qwen", "llama"]
    assert findings._profiles(record)[2].startswith("Both models'")


def test_the_protocol_says_the_logit_lens_read_the_raw_responses_only_when_it_did():
    models = [{"lens_reads_raw_responses": True}, {"lens_reads_raw_responses": True}]
    assert "same responses" in findings._lens_tokens(models)
    assert findings._lens_tokens([*models, {"lens_reads_raw_responses": False}]) == ""
    assert findings._lens_tokens([{}]) == ""  # a record from before the flag


def test_a_family_the_paper_does_not_measure_gets_its_own_sentence():
    raw = pd.DataFrame(
        {"abruptness": [0.5, float("nan")], "mean_abs_dh_mlp": [0.25, 1.5]},
        index=["gemma-x", "other-x"],
    )
    record = {"families": ["qwen", "gemma", "llama", "other"]}
    assert findings._others(record) == ["gemma", "other"]
    sentence = findings._unmeasured("gemma-x", raw)
    assert sentence.startswith("gemma-x, a family the paper does not measure, has abruptness")
    assert findings.num(0.5, "") in sentence and findings.num(0.25, "") in sentence
    assert "abruptness undefined" in findings._unmeasured("other-x", raw)
    assert findings._unmeasured("absent-x", raw) == ""
