"""Bad input on the command line and in the configs: one clear line, exit code 2, no traceback,
before any model is loaded; and the thin commands' wiring (configs, run names, summaries)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main

from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.errors import LayerpolicyError

NO_MODEL = "no-such-model-anywhere"  # loading it would fail with another message
MISSING_GPU = f"cuda:{torch.cuda.device_count()}"


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI on `argv`; assert exit 2 and exactly one line on stderr; return that line."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out, err)
    assert err.count("\n") == 0, err
    assert "Traceback" not in err and err.startswith("error:"), err
    return err


COMMANDS = {
    "entropy": ["entropy", "--model", NO_MODEL],
    "compare": ["compare", NO_MODEL, "another-" + NO_MODEL],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("option", "value", "names"),
    [
        ("--readout", "bogus", ("raw", "logit-lens", "jacobian-lens")),
        ("--sites", "foo", ("resid", "modules", "paper")),
        ("--dtype", "float8", ("float32", "bfloat16", "float16")),
        ("--device-map", "everywhere", ("auto", "balanced", "sequential")),
        ("--sampler", "beam", ("hf", "vllm")),
    ],
)
def test_unknown_choice_is_one_line_naming_the_choices(
    capsys, tmp_path, command, option, value, names
):
    out = tmp_path / "run"
    err = one_line_error(capsys, [*COMMANDS[command], option, value, "--out", str(out)])
    assert option in err and repr(value) in err
    assert all(repr(name) in err for name in names), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "option"), [("entropy", "--out"), ("compare", "--out"), ("compare", "--cache")]
)
def test_out_naming_a_file_is_refused_before_loading(capsys, tmp_path, command, option):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    err = one_line_error(capsys, [*COMMANDS[command], option, str(target)])
    assert f"{option} {target} is a file" in err
    assert target.read_text() == "keep me"


def test_train_unknown_dtype_is_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    err = one_line_error(
        capsys, ["train", "--model", NO_MODEL, "--dtype", "float8", "--out", str(out)]
    )
    assert "--dtype" in err and "'float8'" in err and "'bfloat16'" in err
    assert not out.exists()


def test_train_out_naming_a_file_is_refused_before_loading(capsys, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    err = one_line_error(capsys, ["train", "--model", NO_MODEL, "--out", str(target)])
    assert str(target) in err and "is a file" in err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--device-map", "auto", "--device", "cpu"], "drop --device cpu"),
        (["--max-memory", "cpu=20GiB"], "--max-memory needs --device-map"),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], "20GiB"),
        (["--device", "gpu"], "unknown device 'gpu'; choose one of auto, cpu"),
        (
            ["--device-map", "auto", "--max-memory", f"{MISSING_GPU}=20GiB,cpu=8GiB"],
            f"{MISSING_GPU}, which is not a visible device",
        ),
    ],
)
def test_placement_conflicts_are_one_line(capsys, tmp_path, command, extra, expected):
    out = tmp_path / "run"
    err = one_line_error(capsys, [*COMMANDS[command], *extra, "--out", str(out)])
    assert expected in err
    assert not out.exists()


def test_limit_below_one_is_a_usage_line(capsys):
    err = one_line_error(capsys, ["entropy", "--limit", "0"])
    assert "--limit" in err and "layerpolicy entropy --help" in err


# ------------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AnalysisConfig(readout="bogus"), "unknown readout 'bogus'; choose one of raw"),
        (lambda: AnalysisConfig(sites="foo"), "unknown site set 'foo'; choose one of resid"),
        (lambda: AnalysisConfig(batch_size=0), "batch_size must be at least 1, got 0"),
        (lambda: AnalysisConfig(chunk_tokens=0), "chunk_tokens must be at least 1"),
        (lambda: AnalysisConfig(top_k=-1), "top_k must be at least 0"),
        (lambda: AnalysisConfig(n_boot=0), "n_boot must be at least 1"),
        (lambda: ModelConfig(dtype="float8"), "unknown dtype 'float8'"),
        (lambda: ModelConfig(device="tpu"), "unknown device 'tpu'"),
        (lambda: ModelConfig(device_map="everywhere"), "unknown device map 'everywhere'"),
        (lambda: ModelConfig(device="cuda:1", device_map="auto"), "drop --device cuda:1"),
        (lambda: ModelConfig(max_memory={"cpu": "2GiB"}), "--max-memory needs --device-map"),
        (lambda: PromptConfig(limit=0), "limit must be at least 1, got 0"),
        (lambda: PromptConfig(max_tokens=1), "max_tokens must be at least 2"),
        (lambda: PromptConfig(temperature=-1.0), "temperature must be at least 0"),
        (lambda: PromptConfig(sampler="beam"), "unknown sampler 'beam'; choose one of hf, vllm"),
    ],
)
def test_configs_refuse_bad_values_at_construction(build, message):
    with pytest.raises(LayerpolicyError, match=message) as caught:
        build()
    assert "\n" not in str(caught.value)


def test_max_memory_text_becomes_accelerate_form_and_names_missing_gpus():
    config = ModelConfig(spec="qwen", device_map="balanced", max_memory="cpu=2GB, disk=1TB")
    assert config.max_memory == {"cpu": "2GB", "disk": "1TB"}
    with pytest.raises(LayerpolicyError, match=f"{MISSING_GPU}, which is not a visible device"):
        ModelConfig(device_map="auto", max_memory=f"{MISSING_GPU}=20GiB")
    for bad in ("0:20GiB", "cpu=twenty"):
        with pytest.raises(LayerpolicyError, match="--max-memory"):
            ModelConfig(device_map="auto", max_memory=bad)


def test_model_config_takes_a_torch_dtype_by_name():
    assert ModelConfig(dtype=torch.bfloat16).dtype == "bfloat16"
    with pytest.raises(LayerpolicyError, match="unknown dtype 'int8'; choose one of float32"):
        ModelConfig(dtype=torch.int8)


def test_vllm_sampler_without_vllm_is_refused_at_construction():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(LayerpolicyError, match="--sampler vllm needs vLLM"):
        PromptConfig(generate=8, sampler="vllm")
    assert PromptConfig(sampler="vllm").sampler == "vllm"  # nothing is sampled: nothing needed


def test_prompt_config_applies_limit_to_a_loaded_prompt_set():
    from layerpolicy.prompts import load_prompts, prompts_sha256

    loaded = load_prompts(None, limit=5)
    cut = PromptConfig(source=loaded, limit=2).load()
    assert [item.id for item in cut.items] == [item.id for item in loaded.items[:2]]
    assert cut.sha256 == prompts_sha256(loaded.items[:2]) != loaded.sha256
    assert PromptConfig.of(loaded).load() is loaded
    with pytest.raises(LayerpolicyError, match="limit is given twice"):
        PromptConfig.of(PromptConfig(limit=2), limit=3)


# ----------------------------------------------------------------------------- thin commands


@pytest.mark.slow
def test_console_module_imports_nothing_from_the_app():
    code = (
        "import sys, layerpolicy.cli.console, layerpolicy.cli.entropy, layerpolicy.cli.compare; "
        "print('layerpolicy.cli.app' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_help_lists_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["entropy", "--help"]) == 0
    text = capsys.readouterr().out
    for choice in ("raw|logit-lens", "resid|modules|paper", "auto|balanced|sequential", "hf|vllm"):
        assert choice in text
    assert "--thinking" in text and "--no-thinking" in text and "--top-k" in text


@pytest.mark.end_to_end
def test_entropy_rerun_of_a_finished_run_loads_no_model(tiny_dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["entropy", "--model", str(tiny_dirs["qwen2"]), "--limit", "2", "--out", str(out)]
    placed = ["--device-map", "sequential", "--max-memory", "cpu=4GiB", "--no-thinking"]
    assert main([*argv, *placed, "--sites", "resid", "--top-k", "2"]) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["device_map"] == "sequential"
    assert record["settings"]["top_k"] == 2 and record["settings"]["sites"] == "resid"
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert {len(ids) for ids in tokens.loc[tokens.site.isin(["resid", "final"]), "top_ids"]} == {2}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not load the model")

    import layerpolicy.analysis
    import layerpolicy.models

    for module in (layerpolicy.models, layerpolicy.analysis):
        monkeypatch.setattr(module, "load_model", refuse, raising=False)
    monkeypatch.setattr(ModelConfig, "load", refuse)
    assert main([*argv, "--sites", "resid", "--top-k", "2"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == first.strip()
    # other settings in the same directory: one line, still nothing loaded
    err = one_line_error(capsys, [*argv, "--sites", "paper", "--top-k", "2"])
    assert "sites" in err


@pytest.mark.end_to_end
def test_entropy_summary_prints_the_summary_tables_values(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["entropy", "--model", str(tiny_dirs["llama"]), "--limit", "2", "--out", str(out)]
    assert main([*argv, "--batch-size", "2"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    rows = {
        cells[0]: cells[1:]
        for line in printed.splitlines()
        if line.startswith("│")
        and len(cells := [c.strip() for c in line.strip("│").split("│")]) == 5
    }
    summary = pd.read_csv(out / "summary.csv").set_index(["metric", "site", "layer"])

    def with_ci(site: str, layer: int) -> str:
        row = summary.loc[("entropy", site, layer)]
        return f"{row['mean']:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"

    assert rows["0"][0] == with_ci("embed", 0)
    assert rows["final (pi_theta)"][0] == with_ci("final", 4)
    for layer in range(1, 5):
        attn, mlp = (summary.loc[("entropy_change", s, layer), "mean"] for s in ("attn", "mlp"))
        kl = summary.loc[("kl_to_final", "resid", layer), "mean"]
        assert rows[str(layer)] == [
            with_ci("resid", layer),
            f"{attn:+.2f}",
            f"{mlp:+.2f}",
            f"{kl:.2f}",
        ]


def test_the_shape_table_keeps_long_model_names_whole_at_100_columns():
    from layerpolicy.cli import compare as cli_compare
    from layerpolicy.cli.console import console

    names = ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"]
    comparison = pd.DataFrame({column: ["7"] * 3 for column in cli_compare._SHOWN})
    comparison["model"] = names
    comparison["eic_attn"] = ["I1 C2-3 I4-8 C9-12 E13 I14-15 C16-30"] * 3
    width = console.width
    console.width = 100
    try:
        with console.capture() as captured:
            cli_compare.print_comparison(comparison)
    finally:
        console.width = width
    lines = captured.get().splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(line for line in lines if "smollm2-135m-instruct" in line)
    assert all(name in header for name in names)  # one header line, no name folded
