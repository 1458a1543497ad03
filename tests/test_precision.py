"""Readout precisions against float64, the TF32 rounding they are built from, and the setting
through the engine, the run specification and the command line."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from layerpolicy.cli.app import spec_from_argv

from layerpolicy.config import AnalysisConfig
from layerpolicy.engine import Engine, EngineConfig
from layerpolicy.errors import LayerpolicyError
from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.precision import (
    PRECISIONS,
    _float32_matmuls,
    default_precision,
    prepare_weight,
    readout_matmul,
    round_tf32,
    split_tf32,
)
from layerpolicy.readout.unembed import Unembedding
from layerpolicy.spec import RunSpec

TEXTS = ("What is 12 + 7? Let's think step by step.", "Solve for x: 3x + 2 = 11.")


def bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def from_bits(pattern: int) -> float:
    return struct.unpack("<f", struct.pack("<I", pattern))[0]


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@pytest.fixture(scope="module")
def readout_inputs(tiny_models) -> tuple[torch.Tensor, torch.Tensor]:
    """A tiny model's W_U [vocab, 64] and 256 inputs whose logits span entropies from near 0 to
    near log(vocab) (row scales 1/8 to 64 times a unit-logit-scale vector)."""
    weight = Unembedding(tiny_models["qwen2"].hf_model).weight32
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, weight.shape[1], generator=generator)
    unit = x / (x @ weight.T).std(dim=-1, keepdim=True)
    scales = 2.0 ** torch.linspace(-3, 6, 256).unsqueeze(-1)
    return weight, unit * scales


def entropy_errors(weight: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """max |H(precision) - H(float64)| over rows, nats, per precision."""
    want = entropy64(x.double() @ weight.double().T)
    return {
        precision: float(
            (entropy64(readout_matmul(x, prepare_weight(weight, precision))) - want).abs().max()
        )
        for precision in PRECISIONS
    }


def test_entropies_of_float32_and_split_match_float64(readout_inputs):
    """Logits reach about 200 here, so float32 rounds each by up to ~1e-5 (2^-24 * 200)."""
    errors = entropy_errors(*readout_inputs)
    assert errors["float32"] < 5e-5
    assert errors["split"] < 5e-5


def test_tf32_and_bfloat16_are_measurably_worse_than_split(readout_inputs):
    errors = entropy_errors(*readout_inputs)
    assert errors["tf32"] > 30 * errors["split"]
    assert errors["bfloat16"] > 3 * errors["tf32"]


def test_split_logits_within_the_three_product_bound(readout_inputs):
    """|z_split - z| <= (d + 2) 2^-22 sum_k |x_k w_k|: the dropped lo*lo term and the low parts'
    rounding are 2^-22 relative each, float32 accumulation d 2^-24."""
    weight, x = readout_inputs
    exact = x.double() @ weight.double().T
    magnitude = x.double().abs() @ weight.double().abs().T
    split = readout_matmul(x, prepare_weight(weight, "split")).double()
    bound = (weight.shape[1] + 2) * 2.0**-22 * magnitude
    assert bool(((split - exact).abs() <= bound).all())
    tf32 = readout_matmul(x, prepare_weight(weight, "tf32")).double()
    assert float((tf32 - exact).abs().max()) > 10 * float((split - exact).abs().max())


@pytest.mark.parametrize(
    "value, pattern",
    [
        (1.0 + 2.0**-11, 0x3F800000),  # tie between 1 and 1 + 2^-10: to even (1)
        (1.0 + 3 * 2.0**-11, 0x3F804000),  # tie between 1 + 2^-10 and 1 + 2^-9: to even
        (1.0 + 2.0**-11 + 2.0**-20, 0x3F802000),  # past the tie: up
        (1.0 + 2.0**-11 - 2.0**-20, 0x3F800000),  # short of the tie: down
        (-(1.0 + 3 * 2.0**-11), 0xBF804000),  # the sign is kept
        (from_bits(0x7F7FFFFF), 0x7F800000),  # float32's largest rounds past TF32's: infinity
        (float("inf"), 0x7F800000),
        (0.0, 0x00000000),
    ],
)
def test_round_tf32_keeps_ten_mantissa_bits_to_nearest_even(value, pattern):
    assert bits(float(round_tf32(torch.tensor([value]))[0])) == pattern


def test_round_tf32_and_split_on_random_values():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 1e3
    rounded = round_tf32(x)
    assert bool(((rounded.view(torch.int32) & 0x1FFF) == 0).all())
    assert bool(((rounded - x).abs() <= 2.0**-11 * x.abs()).all())
    assert torch.equal(round_tf32(rounded), rounded)
    assert bool(torch.isnan(round_tf32(torch.tensor([float("nan")]))).all())
    hi, lo = split_tf32(x)
    assert torch.equal(hi, rounded)
    assert bool(((hi.double() + lo.double() - x.double()).abs() <= 2.0**-22 * x.abs()).all())


def test_float32_weight_is_not_copied_and_out_is_filled(readout_inputs):
    weight, x = readout_inputs
    prepared = prepare_weight(weight, "float32")
    assert prepared.parts[0] is weight
    out = torch.empty(x.shape[0], weight.shape[0])
    assert readout_matmul(x, prepared, out=out) is out
    assert torch.equal(out, x @ weight.T)


def test_rows_of_a_prepared_weight_give_those_logits(readout_inputs):
    weight, x = readout_inputs
    prepared = prepare_weight(weight, "split")
    whole = readout_matmul(x, prepared)
    part = readout_matmul(x, prepared.rows(10, 50))
    torch.testing.assert_close(part, whole[:, 10:50], rtol=0, atol=1e-5)


def test_unknown_precision_is_one_line_naming_the_choices(readout_inputs):
    with pytest.raises(LayerpolicyError) as error:
        prepare_weight(readout_inputs[0], "float16")
    message = str(error.value)
    assert "\n" not in message
    assert "'float16'" in message
    assert all(name in message for name in PRECISIONS)


def test_default_precision_is_float32_off_cuda():
    assert default_precision("cpu") == "float32"
    assert default_precision(torch.device("meta")) == "float32"


def test_cuda_tf32_setting_is_scoped_and_restored():
    """The CUDA matmul setting is torch's process-wide one (settable without a GPU): on inside
    the block, back to what it was after it, an error included, without mixing torch's APIs."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with _float32_matmuls("tf32", emulate=False):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    with pytest.raises(RuntimeError, match="inside"), _float32_matmuls("ieee", emulate=False):
        assert matmul.fp32_precision == "ieee"
        raise RuntimeError("inside")
    assert matmul.fp32_precision == before
    assert torch.get_float32_matmul_precision() in ("highest", "high", "medium")


# ---------------------------------------------------------------- the engine and the run settings


def engine_entropies(model, precision: str | None) -> tuple[np.ndarray, dict]:
    """Entropies of every readout of two prompts (paper set, raw) and the engine's record."""
    items = [PromptItem(f"p{i}", None, text) for i, text in enumerate(TEXTS)]
    encoded = [encode_prompt(item, model.tokenizer, chat_template=False) for item in items]
    engine = Engine(model, EngineConfig(readout_precision=precision))
    return engine.score(encoded)["entropy"], engine.record


def test_engine_reads_out_at_the_chosen_precision(tiny_models):
    model = tiny_models["qwen2"]
    default, record = engine_entropies(model, None)
    assert record["readout_precision"] == "float32"  # the CPU's default
    errors = {}
    for precision in ("split", "tf32", "bfloat16"):
        got, record = engine_entropies(model, precision)
        assert record["readout_precision"] == precision
        errors[precision] = float(np.abs(got - default).max())
    assert errors["split"] < 1e-4
    assert errors["tf32"] > 10 * errors["split"]
    assert errors["bfloat16"] > errors["tf32"]
    assert errors["bfloat16"] < 0.5


def test_linearity_shortcut_only_for_float32_and_split(tiny_models):
    _, record = engine_entropies(tiny_models["qwen2"], "split")
    assert record["linearity_shortcut"] == "used"
    _, record = engine_entropies(tiny_models["qwen2"], "bfloat16")
    assert record["linearity_shortcut"] == "not applicable"


def test_readout_precision_is_a_recorded_setting_with_a_flag():
    spec = RunSpec(analysis=AnalysisConfig(readout_precision="tf32"))
    assert spec.settings()["readout_precision"] == "tf32"
    assert RunSpec().settings()["readout_precision"] is None  # the device's default
    argv = spec.to_argv()
    assert argv[argv.index("--readout-precision") + 1] == "tf32"
    assert spec_from_argv(argv[1:]) == spec
    assert AnalysisConfig(readout_precision="split").engine().readout_precision == "split"


def test_unknown_readout_precision_setting_is_one_line():
    with pytest.raises(LayerpolicyError) as error:
        AnalysisConfig(readout_precision="fp16")
    assert str(error.value) == (
        "unknown readout precision 'fp16'; choose one of float32, split, tf32, bfloat16"
    )
    with pytest.raises(LayerpolicyError, match="choose one of float32, split, tf32, bfloat16"):
        EngineConfig(readout_precision="fp16")
