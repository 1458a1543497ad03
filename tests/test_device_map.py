"""Placements and dtypes: device maps equal the default load, bad choices are one line, early."""

from __future__ import annotations

import pytest
import torch

from layerpolicy.devices import check_placement, choose_dtype, parse_max_memory
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model

MISSING_GPU = f"cuda:{torch.cuda.device_count() + 3}"
IDS = torch.tensor([[1, 40, 77, 263, 290, 5, 300, 12]])


@pytest.fixture(scope="module")
def default_logits(tiny_dirs) -> torch.Tensor:
    model = load_model(str(tiny_dirs["qwen2"]), device="cpu", progress=False)
    with torch.no_grad():
        return model.bridge(IDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares against a CPU-only default")
@pytest.mark.parametrize("strategy", ["auto", "balanced", "sequential"])
def test_a_device_map_on_one_cpu_equals_the_default_load(tiny_dirs, default_logits, strategy):
    model = load_model(str(tiny_dirs["qwen2"]), device_map=strategy, progress=False)
    with torch.no_grad():
        logits = model.bridge(IDS)
    torch.testing.assert_close(logits, default_logits, rtol=1e-6, atol=1e-6)
    assert model.unembed_device == model.device == torch.device("cpu")
    info = model.info.to_dict()
    assert (info["device_map"], info["devices"], info["device"]) == (strategy, ["cpu"], "cpu")


def test_the_default_load_records_one_device(tiny):
    info = tiny.info.to_dict()
    assert (info["device_map"], info["devices"], info["quantisation"]) == (None, ["cpu"], None)
    assert tiny.unembed_device == tiny.hf_model.lm_head.weight.device == tiny.device


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device_map": "auto", "device": "cpu"}, r"drop --device cpu"),
        ({"device_map": "bogus"}, r"unknown device map 'bogus'; choose one of auto, balanced"),
        ({"device_map": "auto", "max_memory": {MISSING_GPU: "1GiB"}}, r"visible: cpu"),
        ({"device_map": {"": MISSING_GPU}}, rf"{MISSING_GPU}, which is not a visible device"),
        ({"max_memory": {"cpu": "1GiB"}}, r"--max-memory needs --device-map"),
        ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, r"cpu=lots is not a size"),
        ({"dtype": "fp8"}, r"unknown dtype 'fp8'; choose one of float32, bfloat16, float16, auto"),
    ],
)
def test_bad_placements_are_one_line_before_anything_loads(options, message):
    # an unknown spec: were the options checked after resolving, the error would be about it
    with pytest.raises(LayerpolicyError, match=message) as info:
        load_model("no-such-model-anywhere", progress=False, **options)
    assert "\n" not in str(info.value)


def test_an_explicit_missing_gpu_names_the_visible_devices():
    if not torch.cuda.is_available():
        pytest.skip("without CUDA, --device cuda:N says that no GPU is visible")
    with pytest.raises(LayerpolicyError, match=rf"{MISSING_GPU}.*visible: cpu, cuda:0"):
        load_model("no-such-model-anywhere", device=MISSING_GPU)


def test_a_model_offloaded_to_disk_is_refused(tiny_dirs):
    with pytest.raises(LayerpolicyError, match=r"does not fit in --max-memory") as info:
        load_model(
            str(tiny_dirs["llama"]), device_map="auto", max_memory={"cpu": "1KB"}, progress=False
        )
    assert "\n" not in str(info.value)


def test_max_memory_text_parses_to_accelerate_keys():
    assert parse_max_memory("cpu=64GiB") == {"cpu": "64GiB"}
    assert check_placement("auto", "auto", {"cpu": 10**9}) == {"cpu": 10**9}
    if torch.cuda.is_available():
        assert parse_max_memory("0=20GiB, cuda:0=10GiB,cpu=1GB") == {0: "10GiB", "cpu": "1GB"}
    for text, message in [
        ("x", r"'x' is not DEVICE=SIZE"),
        ("0=", r"'0=' is not DEVICE=SIZE"),
        ("gpu=1GiB", r"'gpu', which is not a device"),
        (f"{MISSING_GPU}=1GiB", r"not a visible device"),
        (" , ", r"--max-memory is empty"),
    ]:
        with pytest.raises(LayerpolicyError, match=message):
            parse_max_memory(text)


def test_dtype_names_and_auto():
    assert choose_dtype("float32", on_cuda=False) is torch.float32
    assert choose_dtype("bfloat16", on_cuda=False) is torch.bfloat16
    assert choose_dtype(torch.float16, on_cuda=False) is torch.float16
    assert choose_dtype("auto", on_cuda=False) is torch.float32
    with pytest.raises(LayerpolicyError, match=r"unsupported dtype torch\.int8"):
        choose_dtype(torch.int8, on_cuda=False)


def test_a_dtype_name_loads_that_dtype(tiny_dirs):
    model = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="bfloat16", progress=False)
    assert model.hf_model.lm_head.weight.dtype is torch.bfloat16
    assert model.info.dtype == "bfloat16" and "slower than float32" in model.info.note
