"""Time and memory of fitting a Jacobian lens (TransformerLens's JacobianLens.fit) on this machine.

    python benchmarks/bench_lens_fit.py --model smollm2-135m-instruct --prompts math500 --limit 3
    python benchmarks/bench_lens_fit.py --model qwen2.5-coder-0.5b-instruct --passes 4

Whole prompts: each prompt is fitted on its own (as `layerpolicy lens fit` does) and its seconds
and token count printed. With --passes K only the first prompt is timed, for its forward and its
first K of ceil(d_model / dim_batch) backward passes (TransformerLens's per-prompt estimator
with a backward step that stops after K), and the whole prompt is extrapolated from them. Prints
the peak resident memory of the process and what a 30-minute budget fits.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import resource
import time
import warnings

import torch

from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.readout.jacobian_fit import prompt_text


class _Enough(Exception):
    """Raised by the timed backward step once it has run the passes asked for."""


def time_whole(model, texts: list[str], max_seq_len: int, skip: int, dim_batch: int) -> list:
    """Fit each prompt on its own, printing its time; the one-prompt lenses."""
    from transformer_lens.tools.analysis import JacobianLens

    lenses = []
    for index, text in enumerate(texts):
        tokens = min(max_seq_len, model.bridge.to_tokens(text).shape[1])
        started, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lens = JacobianLens.fit(
                model.bridge, [text], corpus="bench", max_seq_len=max_seq_len,
                skip_first_positions=skip, dim_batch=dim_batch, show_progress=False,
            )  # fmt: skip
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"prompt {index}: {tokens} tokens, {wall:.1f} s ({cpu:.1f} CPU s)", flush=True)
        lenses.append(lens)
    return lenses


def diagnose(lenses: list) -> None:
    """How settled the lens is: per block, ||J - I|| / ||I|| of the merged lens (its distance
    from the logit lens), the prompt-to-prompt spread ||J_a - J_b|| / ||J|| of one-prompt
    lenses, and how much the last prompt moved the running mean."""
    from transformer_lens.tools.analysis import JacobianLens

    merged = JacobianLens.merge(lenses)
    before = JacobianLens.merge(lenses[:-1]) if len(lenses) > 1 else None
    eye = torch.eye(merged.d_model)
    print("block  |J-I|/|I|  spread  last-prompt change", flush=True)
    for block in merged.source_layers:
        J = merged.jacobians[block]
        norm = J.norm()
        spread = [
            (a.jacobians[block] - b.jacobians[block]).norm() / norm
            for i, a in enumerate(lenses) for b in lenses[i + 1 :]
        ]  # fmt: skip
        moved = (J - before.jacobians[block]).norm() / norm if before else float("nan")
        mean_spread = sum(spread) / len(spread) if spread else float("nan")
        print(f"{block:5d}  {(J - eye).norm() / eye.norm():9.3f}  {mean_spread:6.3f}  "
              f"{moved:18.3f}", flush=True)  # fmt: skip
    print(f"metadata: {dict(merged.metadata, model_name=None)}", flush=True)


def time_passes(model, text: str, passes: int, max_seq_len: int, skip: int, dim_batch: int):
    """Seconds of the forward and of each of the first `passes` backward passes of one prompt."""
    from transformer_lens.tools.analysis import jacobian_lens as jl

    seconds: list[float] = []
    mark = [0.0]

    def timed_vjp(target, sources, cotangent, retain_graph):
        if not seconds:
            seconds.append(time.perf_counter() - mark[0])  # the forward, before the first pass
        begun = time.perf_counter()
        grads = jl._ordinary_vjp(target, sources, cotangent, True)
        seconds.append(time.perf_counter() - begun)
        if len(seconds) > passes:
            raise _Enough
        return grads

    tokens = model.bridge.to_tokens(text)[:, :max_seq_len]
    layers = list(range(model.n_layers - 1))
    mark[0], cpu = time.perf_counter(), time.process_time()
    with jl._frozen_parameters(model.bridge), contextlib.suppress(_Enough):
        jl._jacobian_for_prompt(
            model.bridge, tokens, source_layers=layers, dim_batch=dim_batch,
            skip_first_positions=skip, backward_provider=timed_vjp,
        )  # fmt: skip
    cpu = time.process_time() - cpu
    forward, backward = seconds[0], seconds[1:]
    total = forward + math.ceil(model.info.d_model / dim_batch) * sum(backward) / len(backward)
    print(
        f"prompt 0: {tokens.shape[1]} tokens, forward {forward:.1f} s, backward passes "
        f"{', '.join(f'{s:.1f}' for s in backward)} s -> about {total:.0f} s for the prompt "
        f"({math.ceil(model.info.d_model / dim_batch)} passes); 30 minutes fit "
        f"{1800 / total:.1f} such prompts ({cpu:.1f} CPU s for the timed part)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", default="math500")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--skip-first-positions", type=int, default=16)
    parser.add_argument("--dim-batch", type=int, default=8)
    parser.add_argument("--passes", type=int, default=0, help="time K backward passes only")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    started = time.perf_counter()
    model = ModelConfig(args.model, device="cpu").load(progress=False)
    print(f"{model.info.name}: L={model.n_layers}, d_model={model.info.d_model}, "
          f"loaded in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    items = PromptConfig(args.prompts, limit=args.limit).load().items
    texts = [prompt_text(item) for item in items]
    options = (args.max_seq_len, args.skip_first_positions, args.dim_batch)
    if args.passes:
        time_passes(model, texts[0], args.passes, *options)
    else:
        diagnose(time_whole(model, texts, *options))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
