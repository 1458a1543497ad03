"""`layer_readout`: the full forward with H^k fed to the LM head, leaving the model as it was."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerpolicy.readout.layer_policy import layer_readout
from layerpolicy.readout.unembed import find_final_norm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_layer_readout_runs_every_block_and_leaves_no_hook(tiny_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # transformers adds its own output-recording hooks on the first call
        plain = model(ids, output_hidden_states=True)
    modules = [find_final_norm(model), *model.model.layers]
    hooks_before = [set(m._forward_hooks) for m in modules]
    called: list[int] = []
    counters = [
        block.register_forward_hook(lambda m, a, o, i=i: called.append(i))
        for i, block in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        with layer_readout(model, 2):
            internal = model(ids).logits
        assert called == list(range(len(model.model.layers)))  # every block, in order
        with pytest.raises(RuntimeError), layer_readout(model, 2):
            raise RuntimeError("inside")
        again = model(ids).logits
    for handle in counters:
        handle.remove()
    assert [set(m._forward_hooks) for m in modules] == hooks_before  # no hook left behind
    torch.testing.assert_close(internal, model.lm_head(plain.hidden_states[2]), rtol=0, atol=0)
    torch.testing.assert_close(again, plain.logits, rtol=0, atol=0)
