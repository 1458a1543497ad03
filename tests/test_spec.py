"""The run specification: the settings record, cache key, settings check, header, presets and the
command line that reproduces a spec (checked against the CLI's own parser)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from layerpolicy.cli.app import app, spec_from_argv

from layerpolicy.bupo.config import RESUMABLE, TrainConfig
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.spec import FORMAT_VERSION, PRESETS, RunSpec

ENTROPY_KEYS = [
    "format_version", "model", "dtype", "prompts_sha256", "readout", "sites", "top_k", "n_boot",
    "seed", "lens", "readout_precision", "chat_template", "thinking", "max_tokens", "generate",
    "temperature", "sampler", "samples", "responses",
]  # fmt: skip


def test_settings_record_every_result_changing_field_and_nothing_else():
    spec = RunSpec(ModelConfig("m"), PromptConfig(), AnalysisConfig())
    settings = spec.settings("abc", model_name="resolved/m")
    assert list(settings) == ENTROPY_KEYS
    assert settings["format_version"] == FORMAT_VERSION == 2
    assert settings["model"] == "resolved/m" and settings["prompts_sha256"] == "abc"
    assert spec.settings()["model"] == "m" and "prompts_sha256" not in spec.settings()
    # batch and chunk sizes, the device and the prompt source's spelling never change results
    same = RunSpec(
        ModelConfig("m", device="cpu", offline=True),
        PromptConfig(limit=3, column="x"),
        AnalysisConfig(batch_size=9, chunk_tokens=7),
    )
    assert same.settings("abc", model_name="resolved/m") == settings
    assert json.loads(json.dumps(settings)) == settings


@pytest.mark.parametrize(
    "change",
    [
        {"readout": "logit-lens"}, {"sites": "resid"}, {"top_k": 0}, {"n_boot": 10},
        {"seed": 1}, {"chat_template": False}, {"thinking": True}, {"max_tokens": 9},
        {"generate": 4}, {"temperature": 0.5}, {"dtype": "bfloat16"},
        {"readout_precision": "split"},
    ],
)  # fmt: skip
def test_every_recorded_setting_changes_the_key_and_is_named_when_it_differs(change):
    spec = RunSpec(ModelConfig("m"))
    other = spec.replace(**change)
    assert other.key("abc") != spec.key("abc")
    (name,) = change
    with pytest.raises(
        RunDirectoryError, match=rf"runs/x holds a run with other settings \({name}\)"
    ):
        other.check_against(
            {"settings": spec.settings("abc")}, where="runs/x", prompts_sha256="abc"
        )
    spec.check_against({"settings": spec.settings("abc")}, prompts_sha256="abc")


def test_key_depends_on_prompts_model_and_location_not_on_batch_size():
    spec = RunSpec(ModelConfig("m"))
    key = spec.key("abc", model_name="m", location="/a")
    assert (
        spec.replace(batch_size=1, chunk_tokens=3).key("abc", model_name="m", location="/a") == key
    )
    assert spec.key("abd", model_name="m", location="/a") != key
    assert spec.key("abc", model_name="n", location="/a") != key
    assert spec.key("abc", model_name="m", location="/b") != key


def test_a_record_of_another_format_is_refused_with_the_fix():
    spec = RunSpec(ModelConfig("m"))
    old = {k: v for k, v in spec.settings("abc").items() if k != "format_version"}
    with pytest.raises(RunDirectoryError) as error:
        spec.check_against({"settings": old}, where="runs/x", prompts_sha256="abc")
    assert str(error.value) == (
        "runs/x holds a run of format 1 (this layerpolicy reads format 2); rerun the command "
        "that made it with --force"
    )


def test_a_resumed_training_run_may_change_only_the_resumable_settings():
    spec = RunSpec(ModelConfig("m"), train=TrainConfig(steps=10, inter_steps=1))
    recorded = {"settings": spec.settings("abc")}
    longer = spec.replace(steps=20, save_every=5, analyse=True)
    assert {"steps", "save_every", "analyse"} <= set(RESUMABLE)
    longer.check_against(recorded, resume=True, prompts_sha256="abc")
    with pytest.raises(RunDirectoryError, match=r"other settings \(analyse, save_every, steps\)"):
        longer.check_against(recorded, prompts_sha256="abc")
    with pytest.raises(RunDirectoryError, match=r"other settings \(lr\); resume with the same"):
        spec.replace(lr=1e-5).check_against(recorded, resume=True, prompts_sha256="abc")


def test_training_settings_are_the_train_config_with_the_model():
    spec = RunSpec(ModelConfig("m", dtype="bfloat16"), train=TrainConfig(steps=50))
    settings = spec.settings("abc")
    assert settings == {
        "format_version": 2, "model": "m", "dtype": "bfloat16", "prompts_sha256": "abc",
        **json.loads(json.dumps(TrainConfig(steps=50).recorded())),
    }  # fmt: skip
    assert settings["inter_steps"] == 5  # the paper's share, resolved


def test_header_names_the_format_kind_command_and_versions():
    spec = RunSpec(ModelConfig("m"), PromptConfig("math500", limit=4))
    header = spec.header("abc", model_name="resolved/m")
    assert header["format_version"] == 2 and header["kind"] == "entropy"
    assert header["settings"] == spec.settings("abc", model_name="resolved/m")
    assert header["argv"] == ["layerpolicy", "entropy", "--model", "m", "--prompts", "math500",
                              "--limit", "4"]  # fmt: skip
    assert {"python", "torch", "transformers"} <= set(header["versions"])
    loaded = spec.replace(prompts=PromptConfig(PromptConfig().load()))
    assert loaded.header("abc")["argv"] is None  # loaded items: reproducible from Python only


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(),
        RunSpec(ModelConfig(device_map="auto", max_memory="cpu=2GB,disk=1TB")),
        RunSpec(
            ModelConfig("qwen", dtype="bfloat16", device="cpu", offline=True),
            PromptConfig(
                "math500", limit=3, column="problem", chat_template=False, thinking=True,
                max_tokens=64, generate=8, temperature=0.5,
            ),
            AnalysisConfig(readout="logit-lens", sites="resid", batch_size=2, chunk_tokens=16,
                           top_k=0, seed=3),
        ),
    ],
)  # fmt: skip
def test_to_argv_is_what_the_entropy_command_parses_back(spec):
    argv = spec.to_argv()
    assert argv[:2] == ["layerpolicy", "entropy"]
    assert spec_from_argv(argv[1:]) == spec


def test_to_argv_of_a_training_spec_parses_as_the_train_command():
    spec = RunSpec.from_preset("paper-qwen3-4b", prompts="math500", lora_rank=8, layer_stats=False)
    argv = spec.to_argv()
    assert argv[:2] == ["layerpolicy", "train"]
    import typer

    group = typer.main.get_command(app)
    params = group.get_command(typer.Context(group), "train").make_context("train", argv[2:]).params
    assert params["model"] == "Qwen/Qwen3-4B" and params["prompts"] == "math500"
    assert params["lora"] == 8 and params["layer_stats"] is False
    for name, value in PRESETS["paper-qwen3-4b"]["train"].items():
        assert str(params[name]) == str(value), name


def test_settings_without_a_flag_are_refused_by_to_argv():
    with pytest.raises(LayerpolicyError, match="n_boot = 10 has no `layerpolicy` flag"):
        RunSpec(analysis=AnalysisConfig(n_boot=10)).to_argv()
    with pytest.raises(LayerpolicyError, match=r"weight_decay = 0\.1 has no `layerpolicy` flag"):
        RunSpec(train=TrainConfig(weight_decay=0.1)).to_argv()


def test_presets_work_from_python_with_overrides():
    spec = RunSpec.from_preset("paper-qwen3-4b", steps=20, inter_steps=2, model="qwen")
    assert spec.kind == "train" and spec.model.spec == "qwen"
    assert spec.train == TrainConfig(**{**PRESETS["paper-qwen3-4b"]["train"], "steps": 20,
                                        "inter_steps": 2})  # fmt: skip
    with pytest.raises(
        LayerpolicyError, match="unknown preset 'nope'; choose one of paper-qwen3-4b"
    ):
        RunSpec.from_preset("nope")
    with pytest.raises(LayerpolicyError, match="'stepz' is no setting of a run"):
        RunSpec.from_preset("paper-qwen3-4b", stepz=3)


def test_from_record_rebuilds_the_spec_a_header_records():
    spec = RunSpec(ModelConfig("m", dtype="bfloat16"), analysis=AnalysisConfig(top_k=2, seed=4))
    record = {**spec.header("abc"), "prompts": {"source": "math500"}}
    assert RunSpec.from_record(record) == spec.replace(prompts="math500")
    train = RunSpec(ModelConfig("m"), train=TrainConfig(steps=7, layer=2))
    rebuilt = RunSpec.from_record(train.header("abc"))
    assert dataclasses.replace(rebuilt.train, inter_steps=None) == train.train


def test_a_compare_command_line_gives_the_spec_its_models_are_analysed_with():
    spec = spec_from_argv(["compare", "qwen", "llama", "--readout", "logit-lens", "--limit", "3"])
    assert spec == RunSpec(prompts=PromptConfig(limit=3), analysis=AnalysisConfig("logit-lens"))
    with pytest.raises(LayerpolicyError, match="not a `layerpolicy entropy` or `compare`"):
        spec_from_argv(["view", "runs/x"])
