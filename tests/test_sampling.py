"""The sampler: pure softmax(z / T), nothing from the checkpoint's generation config, batched and
seeded per response, and sampled ids that teacher-forcing scores as the sampler saw them."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest
import torch

from layerpolicy.analysis import analyse
from layerpolicy.config import AnalysisConfig, PromptConfig
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.models.tiny import save_tiny_model
from layerpolicy.prompts import builtin_prompts, encode_generation_prompt
from layerpolicy.sampling import (
    GumbelSampler,
    SamplingConfig,
    prompt_seed,
    sample,
    sample_encoded,
    stop_token_ids,
)

SHORT_PROMPT = "Compute 6 * 8."
# A checkpoint whose generation config would change the distribution if any of it leaked in.
LEAKY_GENERATION = {
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.5,
    "min_p": 0.2,
    "repetition_penalty": 1.8,
    "no_repeat_ngram_size": 1,
}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """A tiny Qwen2 whose generation_config.json sets penalties, n-gram bans, truncations, and
    suppresses the three most likely first tokens after SHORT_PROMPT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = save_tiny_model(tmp_path_factory.mktemp("leaky") / "qwen2", "qwen2")
    hf = AutoModelForCausalLM.from_pretrained(directory)
    ids = AutoTokenizer.from_pretrained(directory)(SHORT_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        top = hf(ids).logits[0, -1].topk(3).indices.tolist()
    path = directory / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**config, **LEAKY_GENERATION, "suppress_tokens": top}))
    model = load_model(str(directory), device="cpu")
    assert model.plain.generation_config.suppress_tokens == top  # the leak is there to be blocked
    return model


def _prompt(model, i: int = 0) -> tuple[int, ...]:
    return encode_generation_prompt(builtin_prompts(i + 1)[i], model.tokenizer)


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value; categories expected below 5 draws are pooled into one."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= 5
    observed = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    wanted = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = wanted > 0
    statistic = ((observed[keep] - wanted[keep]) ** 2 / wanted[keep]).sum()
    dof = torch.tensor(float(keep.sum() - 1), dtype=torch.double)
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


def test_logits_processors_in_use_are_only_the_temperature_sampler(leaky, monkeypatch):
    plain = leaky.plain
    seen = []
    original = type(plain)._get_logits_processor

    def spy(self, *args, **kwargs):
        processors = original(self, *args, **kwargs)
        seen.append([type(p) for p in processors])
        return processors

    monkeypatch.setattr(type(plain), "_get_logits_processor", spy)
    prompts = [("a", _prompt(leaky))]
    sample(leaky, prompts, SamplingConfig(max_new_tokens=3, temperature=0.7))
    sample(leaky, prompts, SamplingConfig(max_new_tokens=3, temperature=0.0))
    assert seen == [[GumbelSampler], []]
    assert plain.generation_config.top_k == 3  # the checkpoint's config is restored afterwards


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_token_follows_softmax_over_temperature(leaky, temperature):
    prompt = tuple(leaky.tokenizer(SHORT_PROMPT)["input_ids"])  # short: 4000 rows of it
    draws = 4000
    rows = [(f"p{i}", prompt) for i in range(draws)]
    config = SamplingConfig(max_new_tokens=1, temperature=temperature, batch_size=draws)
    first = torch.tensor([s.response_ids[0] for s in sample(leaky, rows, config)])
    with torch.no_grad():
        logits = leaky.plain(torch.tensor([prompt])).logits[0, -1].double()
    counts = torch.bincount(first, minlength=logits.numel())
    assert _chi_square_p(counts, torch.softmax(logits / temperature, -1)) > 1e-3
    # the test has power: other temperatures, and the checkpoint's top_k = 3, are rejected
    assert _chi_square_p(counts, torch.softmax(logits / (temperature * 1.5), -1)) < 1e-6
    assert (counts > 0).sum() > 3


def test_batched_sampling_is_reproducible_and_independent_of_batching(tiny_models):
    model = tiny_models["qwen3"]
    prompts = [(f"q{i}", _prompt(model, i)) for i in range(4)]  # different lengths: padding
    assert len({len(ids) for _, ids in prompts}) > 1
    config = SamplingConfig(max_new_tokens=12, seed=7, batch_size=4)

    def by_id(samples):
        return {s.prompt_id: s.response_ids for s in samples}

    together = by_id(sample(model, prompts, config))
    assert by_id(sample(model, prompts, config)) == together
    one_by_one = SamplingConfig(max_new_tokens=12, seed=7, batch_size=1)
    assert by_id(sample(model, prompts, one_by_one)) == together
    assert by_id(sample(model, prompts[::-1][:3], SamplingConfig(12, seed=7, batch_size=2))) == {
        k: together[k] for k in ("q3", "q2", "q1")
    }
    other_seed = by_id(sample(model, prompts, SamplingConfig(max_new_tokens=12, seed=8)))
    assert other_seed != together


def test_responses_stop_at_the_first_stop_token(tiny_models):
    model = tiny_models["llama"]
    stops = stop_token_ids(model.tokenizer, model.hf_model)
    rows = [(f"r{i}", _prompt(model, i % 3)) for i in range(24)]
    samples = sample(model, rows, SamplingConfig(max_new_tokens=10, temperature=1.5))
    for s in samples:
        assert 1 <= len(s.response_ids) <= 10
        assert not any(t in stops for t in s.response_ids[:-1])
        assert len(s.response_ids) == 10 or s.response_ids[-1] in stops
        assert s.seed == prompt_seed(0, s.prompt_id)


def test_n_responses_per_prompt_have_their_own_seeds(tiny_models):
    model = tiny_models["qwen2"]
    samples = sample(model, [("x", _prompt(model))], SamplingConfig(max_new_tokens=6, n=3))
    assert [(s.prompt_id, s.index) for s in samples] == [("x", 0), ("x", 1), ("x", 2)]
    assert len({s.seed for s in samples}) == 3
    assert samples[0].seed == prompt_seed(0, "x")


def test_sampling_log_probs_equal_teacher_forcing_one_prompt_at_a_time(tiny):
    """Left-padded, KV-cached batched sampling sees exactly the unpadded model's policy."""
    prompts = [(f"t{i}", _prompt(tiny, i)) for i in range(3)]
    samples = sample(tiny, prompts, SamplingConfig(max_new_tokens=8), logprobs=True)
    for s in samples:
        ids = torch.tensor([[*s.prompt_ids, *s.response_ids]])
        with torch.no_grad():
            logits = tiny.plain(ids).logits[0].float()
        start = len(s.prompt_ids)
        targets = ids[0, start:]
        forced = logits[start - 1 : -1].log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        # float32 under other padding/shapes: differences of ~1e-5 nats; a padding bug gives ~1
        torch.testing.assert_close(torch.tensor(s.logprobs), forced, rtol=1e-4, atol=1e-4)


def test_greedy_with_cache_equals_step_by_step_without_cache(tiny_models):
    model = tiny_models["qwen2"]
    prompt = list(model.tokenizer("What is 6 * 8?")["input_ids"])
    (greedy,) = sample(model, [("g", prompt)], SamplingConfig(max_new_tokens=6, temperature=0))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(greedy.response_ids)):
            ids.append(int(model.hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert list(greedy.response_ids) == ids[len(prompt) :]


def test_sample_encoded_keeps_the_sampled_ids_and_scores_the_response(tiny_models):
    model = tiny_models["llama"]
    items = builtin_prompts(2)
    config = SamplingConfig(max_new_tokens=5, seed=2)
    encoded = sample_encoded(model, items, config)
    rows = [(i.id, encode_generation_prompt(i, model.tokenizer)) for i in items]
    for e, s in zip(encoded, sample(model, rows, config), strict=True):
        assert e.input_ids == s.prompt_ids + s.response_ids
        assert e.response_start == len(s.prompt_ids)
        scored = [t for t, keep in enumerate(e.score_mask) if keep]
        assert [e.input_ids[t + 1] for t in scored] == list(s.response_ids)


def test_generate_analysis_equals_one_prompt_at_a_time(tiny_models):
    """Batched sampling and scoring give the token table of batch size 1."""
    model = tiny_models["qwen2"]
    prompts = PromptConfig(limit=3, generate=6)
    batched, single = (
        analyse(model, prompts, config=AnalysisConfig(batch_size=size, n_boot=10), progress=False)
        for size in (3, 1)
    )
    keys = ["prompt_id", "site", "layer", "position"]
    a = batched.tokens.sort_values(keys).reset_index(drop=True)
    b = single.tokens.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_series_equal(a.target_id, b.target_id)
    numeric = [c for c in a.columns if a[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(a[numeric], b[numeric], rtol=1e-4, atol=1e-4)


def test_record_says_what_was_sampled_and_how() -> None:
    record = SamplingConfig(max_new_tokens=64, temperature=1.0, seed=3, batch_size=16).record(
        thinking=False
    )
    assert {k: record[k] for k in ("sampler", "temperature", "max_new_tokens", "seed")} == {
        "sampler": "hf",
        "temperature": 1.0,
        "max_new_tokens": 64,
        "seed": 3,
    }
    assert (record["batch_size"], record["n"], record["thinking"]) == (16, 1, False)
    assert "nothing else" in record["distribution"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 4, "batch_size": 0}, "batch_size must be at least 1"),
        ({"max_new_tokens": 4, "temperature": -1.0}, "temperature must be >= 0"),
        ({"max_new_tokens": 4, "sampler": "beam"}, "unknown sampler 'beam'; choose one of hf"),
    ],
)
def test_bad_sampling_settings_are_one_line_errors(kwargs, message) -> None:
    with pytest.raises(LayerpolicyError, match=message):
        SamplingConfig(**kwargs)


def test_one_response_per_prompt_for_scoring(tiny_models) -> None:
    with pytest.raises(LayerpolicyError, match="set n=1"):
        sample_encoded(tiny_models["qwen2"], builtin_prompts(1), SamplingConfig(4, n=2))


def test_vllm_requested_but_not_installed(tiny_models, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    config = SamplingConfig(max_new_tokens=4, sampler="vllm")
    with pytest.raises(LayerpolicyError, match=r"needs vLLM \(pip install vllm"):
        sample(tiny_models["qwen2"], [("a", (1, 2))], config)


def test_vllm_is_asked_for_pure_sampling_with_a_seed_per_response(tiny_models, monkeypatch):
    model = tiny_models["qwen2"]
    stops = stop_token_ids(model.tokenizer, model.hf_model)
    calls: dict[str, object] = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def generate(self, prompts, params, use_tqdm):
            calls["prompts"], calls["params"] = prompts, params
            done = types.SimpleNamespace(token_ids=[9, 8], finish_reason="stop", stop_reason=None)
            cut = types.SimpleNamespace(
                token_ids=[9, stops[0], 4], finish_reason="stop", stop_reason=None
            )
            return [types.SimpleNamespace(outputs=[o]) for o in (done, cut)]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr("layerpolicy.vllm_sampling._ENGINES", {})
    config = SamplingConfig(max_new_tokens=5, temperature=0.8, seed=4, sampler="vllm")
    samples = sample(model, [("a", (1, 2)), ("b", (3,))], config)
    assert calls["engine"]["generation_config"] == "vllm"
    assert calls["prompts"] == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    for params, s in zip(calls["params"], samples, strict=True):
        assert {k: params[k] for k in ("temperature", "top_p", "top_k", "min_p")} == {
            "temperature": 0.8,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
        }
        assert (params["repetition_penalty"], params["presence_penalty"]) == (1.0, 0.0)
        assert params["frequency_penalty"] == 0.0 and params["max_tokens"] == 5
        assert params["seed"] == prompt_seed(4, s.prompt_id)
    assert [s.response_ids for s in samples] == [(9, 8, stops[0]), (9, stops[0])]


def test_run_json_records_what_was_sampled_and_how(tiny_models, tmp_path):
    out = tmp_path / "run"
    prompts = PromptConfig(limit=2, generate=4, temperature=0.9)
    analyse(
        tiny_models["llama"], prompts, config=AnalysisConfig(batch_size=2, n_boot=10, seed=5),
        out=out, progress=False,
    )  # fmt: skip
    record = json.loads((out / "run.json").read_text())
    sampling = record["sampling"]
    assert (sampling["sampler"], sampling["temperature"], sampling["max_new_tokens"]) == (
        "hf",
        0.9,
        4,
    )
    assert (sampling["seed"], sampling["batch_size"], sampling["n"]) == (5, 2, 1)
    assert sampling["thinking"] is None  # the tiny template has no thinking switch
    assert record["prompts"]["resolved"] == "builtin" and record["prompts"]["n_prompts"] == 2
