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
from layerpolicy.report.figures import bupo_figures, family_figures
from layerpolicy.runs import write_csv, write_json
from layerpolicy.spec import RunSpec
from layerpolicy.tables.schema import (
    COMPARISON_COLUMNS,
    COMPARISON_INT_COLUMNS,
    DIFFERENCE_COLUMNS,
    SUMMARY_COLUMNS,
)
from scripts import findings, findings_files, make_figures, readme_blocks, tour
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


def built_figures(
    directory: Path, *, reward_ci=(0.021, 0.187), abruptness=(0.38, 0.006), screen=True
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
    write_csv(summary, directory / "summary.csv")
    diff = pd.DataFrame(
        [
            ("final", 30, 30, 1.0, "entropy", 1.9, 1.5, -0.4, -0.55, -0.25),
            ("resid", 4, 30, 0.133, "entropy", 0.6, 0.9, 0.3, 0.1, 0.5),
            ("mlp", 4, 30, 0.133, "entropy_change", -2.4, -2.3, 0.1, -0.2, 0.4),
            ("attn", 4, 30, 0.133, "entropy_change", -1.2, -1.3, -0.1, -0.3, 0.1),
        ],
        columns=DIFFERENCE_COLUMNS,
    )
    write_csv(diff, directory / "bupo_difference.csv")
    reward = {
        "before": {"prompt_mean": 0.3125, "ci_low": 0.25, "ci_high": 0.375},
        "after": {"prompt_mean": 0.4167, "ci_low": 0.3333, "ci_high": 0.5},
        "difference": {"mean": 0.1042, "ci_low": reward_ci[0], "ci_high": reward_ci[1],
                       "n_prompts": 12},
        "samples": 8,
        "seed": 1,
    }  # fmt: skip
    at_k = {
        when: {"policy_entropy": h, "policy_entropy_ci": [h - 0.1, h + 0.1],
               "entropy_resid": r, "entropy_resid_ci": [r - 0.1, r + 0.1],
               "dh_mlp": -2.4, "dh_mlp_ci": [-2.6, -2.2], "dh_attn": -1.2,
               "dh_attn_ci": [-1.4, -1.0], "eic_mlp": "C1-30"}
        for when, h, r in (("before", 1.9, 0.6), ("after", 1.5, 0.9))
    }  # fmt: skip
    model = {"thinking": None, "dtype": "float32", "device": "cpu", "responses": 24}
    record = {
        "families": ["qwen", "llama"],
        "prompts": {"source": "math500", "title": "MATH-500", "dataset": "HuggingFaceH4/MATH-500",
                    "split": "test", "local_copy": True, "sha256": "279b2a0322e3" + "0" * 52,
                    "n_problems": 24},
        "sampling": {"max_new_tokens": 192, "temperature": 1.0, "seed": 0,
                     "distribution": "softmax(z / T), nothing else"},
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
        "bupo": {
            "method": "BuPO",
            "model": {"name": SMOL, "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "quantisation": "Q4_1 (dequantised to float32)", "device": "cpu",
                      "n_layers": 30},
            "prompts": {"source": "builtin", "n_prompts": 32},
            "screen": {"samples": 8, "n_kept": 12,
                       "summary": {"never": 0.5, "sometimes": 0.375, "always": 0.125}}
            if screen else None,
            "settings": {"steps": 40, "inter_steps": 4, "prompts_per_step": 4, "group_size": 8,
                         "max_new_tokens": 96, "temperature": 1.0, "mini_batches": 2, "lr": 1e-5},
            "layer": {"k": 4, "reason": "given: --layer 4"},
            "train_s": 1500.0,
            "reward": reward,
            "entropy_at_k": at_k,
            "analyses": {"before": {"n_prompts": 8, "n_tokens": 612},
                         "after": {"n_prompts": 8, "n_tokens": 588}},
            "command": "layerpolicy train --model smollm2-135m-instruct --layer 4",
        },
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
        ((-0.05, 0.187), "did not change measurably (CI includes 0)"),
        ((-0.3, -0.01), "fell"),
    ],
)
def test_bupo_reward_word_follows_its_paired_interval(tmp_path, ci, word):
    flat = flat_findings(built_figures(tmp_path / "f", reward_ci=ci))
    reward = (
        f"| reward (mean of per-prompt solve rates) | 0.312 [0.250, 0.375] | 0.417 [0.333, 0.500] "
        f"| +0.104 [{ci[0]:+.3f}, {ci[1]:+.3f}] | {word} |"
    )
    assert reward in flat
    assert f"Over the 12 trained prompts the reward {word}: 0.312 before, 0.417 after" in flat


def test_bupo_section_states_settings_screen_layer_and_entropies(tmp_path):
    flat = flat_findings(built_figures(tmp_path / "f"))
    assert "BuPO on smollm2-135m-instruct, GGUF Q4_1 (dequantised to float32): 40 rollouts" in flat
    assert "the first s_inter = 4 on the internal policy π^k" in flat
    assert "4 prompts × G = 8 responses of at most 96 tokens at T = 1" in flat
    assert "2 optimizer steps (lr 1e-05); 25 min of training on the CPU" in flat
    assert "32 of the built-in arithmetic" in flat and "the 12 it solves sometimes" in flat
    assert "never 50%, always 12% of the prompts" in flat
    assert "Layer k = 4 of 30 (given: --layer 4): on the MATH-500 responses above, its ΔH_mlp " \
           "regions are C1-30 and the boundary-layer rule gives no k" in flat  # fmt: skip
    assert "| H(π_θ) | 1.900 [1.800, 2.000] | 1.500 [1.400, 1.600] | -0.400 [-0.550, -0.250] " \
           "| fell |" in flat  # fmt: skip
    assert "| H(π^k), resid entropy at k = 4 | 0.600 [0.500, 0.700] | 0.900 [0.800, 1.000] " \
           "| +0.300 [+0.100, +0.500] | rose |" in flat  # fmt: skip
    assert "| ΔH_mlp at k = 4 | -2.400 [-2.600, -2.200] | -2.400 [-2.600, -2.200] | +0.100 " \
           "[-0.200, +0.400] | did not change measurably (CI includes 0) |" in flat  # fmt: skip
    assert "```bash\nlayerpolicy train --model smollm2-135m-instruct --layer 4\n```" in (
        findings.render_findings(tmp_path / "f")
    )
    unscreened = built_figures(tmp_path / "g", screen=False)
    assert "the first 32 of the built-in" in flat_findings(unscreened)


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
    return make_figures.analysis_specs(SimpleNamespace(**{**vars(parsed), **changes}))["raw"]


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
    assert argv[:4] == ["layerpolicy", "compare", *families]
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


@pytest.mark.end_to_end
def test_train_command_trains_bupo_spec(tmp_path, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(spec, *, out, **kwargs):
        seen.update(spec=spec, out=out)
        raise Stop

    monkeypatch.setattr(layerpolicy.bupo, "train", fake_train)
    argv = make_figures.train_argv(tmp_path / "bupo")
    result = CliRunner().invoke(app, argv[1:])
    assert isinstance(result.exception, Stop), result.output
    wanted = make_figures.BUPO_SPEC
    assert seen["spec"].train == wanted.train
    assert seen["spec"].settings() == wanted.settings()
    assert (seen["spec"].prompts.source, seen["spec"].prompts.limit) == ("builtin", 48)
    assert Path(seen["out"]) == tmp_path / "bupo"
    assert json.loads(json.dumps(dataclasses.asdict(seen["spec"].train)))  # a plain config


def test_cli_params_parses_without_running():
    params = tour.cli_params(["entropy", "--model", "tiny-llama", "--limit", "3"])
    assert (params["model"], params["limit"], params["generate"]) == ("tiny-llama", 3, 0)
    with pytest.raises(typer.TyperException, match="greater than or equal to 1"):
        tour.cli_params(["entropy", "--limit", "0"])


def train_settings(path: Path, monkeypatch) -> dict:
    """The settings train() records when bupo_run trains into `path` (stopped before training:
    no model loaded, nothing sampled)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_open_run(run, settings, resume, **kwargs):
        seen.update(settings)
        raise Stop

    monkeypatch.setattr(layerpolicy.bupo.run, "model_depth", lambda *a, **k: (30, SMOL))
    monkeypatch.setattr(layerpolicy.bupo.run, "open_run", fake_open_run)
    with pytest.raises(Stop):
        make_figures.bupo_run(path, "cpu")
    return seen


def test_a_finished_bupo_run_with_other_settings_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bupo"
    settings = train_settings(path, monkeypatch)
    assert settings["model"] == make_figures.BUPO_SPEC.model.spec and settings["steps"] == 20
    write_json({"status": "complete", "settings": settings}, path / "run.json")
    assert make_figures.bupo_record(path)["settings"] == settings  # reused as it is
    other = {**settings, "steps": 12, "lr": 1e-6}
    write_json({"status": "complete", "settings": other}, path / "run.json")
    with pytest.raises(RunDirectoryError, match=r"\(lr, steps\); delete or move it") as raised:
        make_figures.bupo_record(path)
    assert "\n" not in str(raised.value)
    write_json({"status": "running", "settings": other}, path / "run.json")
    assert make_figures.bupo_record(path)["status"] == "running"  # train() checks on resume


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
    record = {"method": "BuPO", "model": {"name": "m-b"}, "layer": {"k": 2}}
    before, after = make_summary("m-b"), make_summary("m-b", shift=1.0)
    paths = bupo_figures(record, make_log(), before, after, tmp_path / "bupo")
    assert [p.name for p in paths] == ["bupo_training_log.png", "bupo_difference.png"]


def test_a_bupo_run_graded_before_the_verifier_says_so(tmp_path):
    figures = built_figures(tmp_path / "f")
    assert "graded by the earlier reward" in flat_findings(figures)
    record = json.loads((figures / "record.json").read_text())
    record["bupo"]["reward"]["verifier"] = {"name": "math-verify", "version": "0.9.0"}
    (figures / "record.json").write_text(json.dumps(record))
    assert "earlier reward" not in flat_findings(figures)
