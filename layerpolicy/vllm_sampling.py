"""The sampler's vLLM backend: the same pure softmax(z / T) contract, one seed per response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import LayerpolicyError

VLLM_MEMORY_SHARE = 0.5  # of the GPU, for vLLM's engine beside the analysed model

_ENGINES: dict[str, Any] = {}


def vllm_responses(
    location: str,
    dtype: str,
    rows: Sequence[tuple[Sequence[int], int]],
    *,
    temperature: float,
    max_new_tokens: int,
    stops: Sequence[int],
) -> list[list[int]]:
    """Token ids sampled by vLLM for each (prompt ids, seed), in one call.

    Every sampling parameter is set to its neutral value (no top-k/p, min-p or penalties), and
    the engine uses vLLM's defaults rather than the checkpoint's generation config. A response
    that stopped on a stop token ends with it, as with the transformers sampler.
    """
    try:
        import vllm
    except ImportError as exc:
        raise LayerpolicyError(
            "sampler vllm needs vLLM (pip install vllm, on a GPU machine); or use sampler hf"
        ) from exc
    if location not in _ENGINES:
        _ENGINES[location] = vllm.LLM(
            model=location,
            dtype=dtype,
            generation_config="vllm",
            gpu_memory_utilization=VLLM_MEMORY_SHARE,
        )
    params = [
        vllm.SamplingParams(
            n=1,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            repetition_penalty=1.0,
            seed=seed,
            max_tokens=max_new_tokens,
            stop_token_ids=list(stops),
            detokenize=False,
        )
        for _, seed in rows
    ]
    prompts = [{"prompt_token_ids": [int(i) for i in ids]} for ids, _ in rows]
    outputs = _ENGINES[location].generate(prompts, params, use_tqdm=False)
    responses = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = [int(t) for t in completion.token_ids]
        if completion.finish_reason == "stop" and not any(t in stops for t in tokens):
            reason = completion.stop_reason
            tokens.append(reason if isinstance(reason, int) else stops[0])
        responses.append(tokens)
    return responses
