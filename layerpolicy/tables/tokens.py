"""The token table: one scored batch's metric columns -> tokens.parquet rows (docs/tables.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..models import LoadedModel
from ..prompts import EncodedPrompt
from .schema import SAMPLE_COLUMN, TOKEN_FLOAT_METRICS, TOP_K_COLUMNS


def batch_frame(
    model: LoadedModel, encoded: list[EncodedPrompt], columns: dict[str, np.ndarray], readout: str
) -> pd.DataFrame:
    """The tokens.parquet rows for one scored batch (`engine.Engine.score` columns).

    With top-k columns, `top_ids` holds int32 arrays (most probable first) and `top_logprobs`
    float32 arrays of log-probs in nats; both are empty on rows of sites without top-k.
    Responses with a sample index (sampled or saved ones) add the `sample` column.
    """
    rows = columns["row"]
    input_ids = [np.asarray(e.input_ids, dtype=np.int32) for e in encoded]
    token_id = np.array(
        [input_ids[r][p] for r, p in zip(rows, columns["position"], strict=True)], np.int32
    )
    vocab_text = _token_texts(model.tokenizer, np.unique(token_id))
    frame = pd.DataFrame(
        {
            "prompt_id": np.array([e.prompt_id for e in encoded], dtype=object)[rows],
            "position": columns["position"],
            "token_id": token_id,
            "token": pd.Series(token_id).map(vocab_text).to_numpy(dtype=object),
            "target_id": columns["target_id"],
            "model": model.info.name,
            "readout": readout,
            "site": columns["site"],
            "layer": columns["layer"],
            "n_layers": np.int16(model.n_layers),
        }
    )
    if encoded and encoded[0].sample is not None:  # sampled or saved responses
        samples = np.array([e.sample for e in encoded], dtype=np.int32)[rows]
        frame.insert(1, SAMPLE_COLUMN, samples)
    for name in TOKEN_FLOAT_METRICS:
        frame[name] = columns[name].astype(np.float32)
    frame["top1_agree"] = columns["top1_agree"].astype(bool)
    for name in TOP_K_COLUMNS:
        if name in columns:
            frame[name] = columns[name]
    return frame


def _token_texts(tokenizer, token_ids: np.ndarray) -> dict[int, str]:
    return {int(t): tokenizer.decode([int(t)]) for t in token_ids}
