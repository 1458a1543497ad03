"""Top tokens of internal policies at one position."""

from __future__ import annotations

import pytest
import torch

from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.sites import Site
from layerpolicy.readout.top_tokens import top_tokens


def test_final_top_tokens_are_the_models_top_tokens(tiny):
    encoded = encode_prompt(PromptItem("x", None, "What is 6 * 8?"), tiny.tokenizer)
    position = 3
    table = top_tokens(tiny, encoded, position, [Site("final", tiny.n_layers), Site("mlp", 2)], k=4)
    with torch.no_grad():
        logits = tiny.hf_model(torch.tensor([encoded.input_ids])).logits[0, position]
    expected_p, expected_ids = torch.softmax(logits, -1).topk(4)
    final = table[table.site == "final"]
    assert final.token_id.tolist() == expected_ids.tolist()
    assert final.prob.to_numpy() == pytest.approx(expected_p.numpy(), abs=1e-5)
    assert (table.groupby("site").prob.apply(lambda p: p.is_monotonic_decreasing)).all()
    assert len(table) == 8


def test_position_outside_prompt_is_refused(tiny):
    encoded = encode_prompt(PromptItem("x", None, "hi"), tiny.tokenizer)
    with pytest.raises(ValueError, match="outside the prompt"):
        top_tokens(tiny, encoded, 99, [Site("resid", 1)])
