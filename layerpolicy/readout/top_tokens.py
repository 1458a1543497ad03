"""Token-level inspection: the top tokens of chosen internal policies at one position."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..models import LoadedModel
from ..prompts import EncodedPrompt
from .capture import capture, make_batch
from .jacobian import lens_transport
from .sites import Site
from .unembed import Unembedding


def top_tokens(
    model: LoadedModel,
    encoded: EncodedPrompt,
    position: int,
    sites: Sequence[Site],
    *,
    k: int = 5,
    readout: str = "raw",
    lens: str | None = None,
) -> pd.DataFrame:
    """The k most probable tokens of each site's policy at `position` (which predicts position+1).

    Returns one row per (site, rank): site, layer, rank (1 = most probable), token_id, token,
    prob. `Site("final", L)` gives the model's own policy pi_theta. `lens`: the Jacobian lens of
    readout "jacobian-lens" (None: the newest one fitted for the model).
    """
    if not 0 <= position < len(encoded.input_ids):
        raise ValueError(
            f"position {position} is outside the prompt (0..{len(encoded.input_ids) - 1})"
        )
    one_position = EncodedPrompt(
        encoded.prompt_id,
        encoded.input_ids,
        tuple(t == position for t in range(len(encoded.input_ids))),
        encoded.response_start,
        encoded.truncated,
    )
    batch = make_batch([one_position], model.tokenizer.pad_token_id or 0, model.device)
    last = Site("resid", model.n_layers)
    wanted = {site if site.name != "final" else last for site in sites}
    vectors = capture(model, batch, sorted(wanted, key=lambda s: (s.layer, s.name)))
    jacobian = lens_transport(model, lens)[0] if readout == "jacobian-lens" else None
    unembed = Unembedding(model.hf_model, jacobian)
    rows = []
    with torch.inference_mode():
        for site in sites:
            if site.name == "final":
                logits = unembed.final(vectors[last])
            else:
                logits = unembed.readout(vectors[site], readout, site.layer)
            probs, ids = torch.softmax(logits[0].float(), dim=-1).topk(k)
            for rank, (p, token_id) in enumerate(zip(probs.tolist(), ids.tolist(), strict=True)):
                rows.append(
                    {
                        "site": site.name,
                        "layer": site.layer,
                        "rank": rank + 1,
                        "token_id": token_id,
                        "token": model.tokenizer.decode([token_id]),
                        "prob": p,
                    }
                )
    return pd.DataFrame(rows)
