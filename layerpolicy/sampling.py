"""The one sampler: responses from pi_theta = softmax(z / T) and nothing else, batched, seeded.

Pure sampling: temperature is the only change to the logits. `generate` runs under a fresh
generation config with the checkpoint's own `generation_config` switched off for the call, because
transformers fills every unset field of a passed config from it (hub checkpoints set
repetition_penalty, top_k, top_p, ...). No top-k, top-p, min-p, penalties or n-gram bans.

Seeding: each response has its own seed, `prompt_seed(seed, prompt_id, index)`, and its own
random stream: a token is argmax(z / T + g) with Gumbel noise g drawn from that stream, which is
an exact draw from softmax(z / T) (the Gumbel-max trick). So a response does not depend on which
other prompts share its batch, on the batch size, or on sharding, as long as the model's logits
are bitwise equal (padding can change the last float bits; a response can then differ where two
tokens tie to those bits). Same seeds and same batches always give the same ids.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .config import SAMPLERS, check_choice
from .errors import LayerpolicyError
from .models import LoadedModel
from .prompts import EncodedPrompt, PromptItem, encode_generation_prompt, encode_ids
from .vllm_sampling import vllm_responses

Row = tuple[str, int, tuple[int, ...], int]  # prompt id, response index, prompt ids, seed


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled; validated when built.

    max_new_tokens: the most tokens per response (EOS included). temperature: T of
    softmax(z / T), 0 for greedy. seed: run seed (each response's own seed derives from it).
    batch_size: prompts per `generate` call. n: responses per prompt. sampler: hf | vllm.
    """

    max_new_tokens: int
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 8
    n: int = 1
    sampler: str = "hf"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "n"):
            if getattr(self, name) < 1:
                raise LayerpolicyError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise LayerpolicyError(f"temperature must be >= 0, got {self.temperature}")
        check_choice("sampler", self.sampler, SAMPLERS)

    def record(self, thinking: bool | None = None) -> dict[str, Any]:
        """What run.json records about the sampling (with the thinking mode prompts used)."""
        return {
            **asdict(self),
            "thinking": thinking,
            "distribution": "greedy" if self.temperature == 0 else "softmax(z / T), nothing else",
            "seeding": "per response: prompt_seed(seed, prompt_id, index), Gumbel-max",
        }


@dataclass(frozen=True)
class Sample:
    """One response: `response_ids` end with the stop token when the model stopped.

    `logprobs[t]` = log softmax(z / T) of response token t, as sampled (HF sampler, on request).
    """

    prompt_id: str
    index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    seed: int
    logprobs: tuple[float, ...] | None = None


def prompt_seed(seed: int, prompt_id: str, index: int = 0) -> int:
    """The seed of response `index` to a prompt: a pure function, so reruns sample the same."""
    key = f"{seed}:{prompt_id}" if index == 0 else f"{seed}:{prompt_id}:{index}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def stop_token_ids(tokenizer: Any, hf_model: torch.nn.Module) -> list[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(hf_model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def sample(
    model: LoadedModel,
    prompts: Sequence[tuple[str, Sequence[int]]],
    config: SamplingConfig,
    *,
    logprobs: bool = False,
) -> list[Sample]:
    """`config.n` responses to each (prompt_id, prompt token ids), in prompt order then index."""
    rows = [
        (prompt_id, index, tuple(int(i) for i in ids), prompt_seed(config.seed, prompt_id, index))
        for prompt_id, ids in prompts
        for index in range(config.n)
    ]
    if config.sampler == "vllm":
        if logprobs:
            raise LayerpolicyError("sampling log-probs come from the hf sampler; use sampler hf")
        stops = stop_token_ids(model.tokenizer, model.hf_model)
        responses = vllm_responses(
            model.info.location,
            model.info.dtype,
            [(ids, seed) for _, _, ids, seed in rows],
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            stops=stops,
        )
        return [
            Sample(prompt_id, index, ids, _cut(tokens, stops), seed)
            for (prompt_id, index, ids, seed), tokens in zip(rows, responses, strict=True)
        ]
    samples: list[Sample] = []
    for start in range(0, len(rows), config.batch_size):
        samples += _hf_batch(model, rows[start : start + config.batch_size], config, logprobs)
    return samples


def sample_items(
    model: LoadedModel,
    items: Sequence[PromptItem],
    config: SamplingConfig,
    *,
    chat_template: bool = True,
    thinking: bool | None = None,
) -> list[Sample]:
    """Encode each item's generation prompt (template, thinking mode) and sample responses."""
    options = {"chat_template": chat_template, "thinking": thinking}
    prompts = [(i.id, encode_generation_prompt(i, model.tokenizer, **options)) for i in items]
    return sample(model, prompts, config)


def sample_encoded(
    model: LoadedModel,
    items: Sequence[PromptItem],
    config: SamplingConfig,
    *,
    chat_template: bool = True,
    thinking: bool | None = None,
    max_tokens: int | None = None,
) -> list[EncodedPrompt]:
    """Each item's prompt plus one sampled response, ready to score: the sampled ids as they are."""
    if config.n != 1:
        raise LayerpolicyError("scoring takes one response per prompt; set n=1")
    samples = sample_items(model, items, config, chat_template=chat_template, thinking=thinking)
    return [
        encode_ids(s.prompt_id, s.prompt_ids, s.response_ids, max_tokens=max_tokens)
        for s in samples
    ]


# ----------------------------------------------------------------------------- transformers


class GumbelSampler:
    """A logits processor that makes greedy decoding a draw from softmax(z / T), per-row seeded.

    Returns z / T + g, g = -log(E) with E ~ Exp(1) from row r's own generator; the argmax of that
    is distributed as softmax(z / T). Keeps log softmax(z / T) of the chosen tokens on request.
    """

    def __init__(
        self, temperature: float, seeds: Sequence[int], device: torch.device, keep: bool
    ) -> None:
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.keep = keep
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scaled = scores.float() / self.temperature
        noise = torch.stack(
            [
                torch.empty(scaled.shape[-1], device=scaled.device).exponential_(generator=g)
                for g in self.generators
            ]
        )
        perturbed = scaled - noise.log()
        if self.keep:
            chosen = perturbed.argmax(dim=-1, keepdim=True)
            self.logprobs.append(scaled.log_softmax(dim=-1).gather(-1, chosen).squeeze(-1))
        return perturbed


def pure_generation_config(max_new_tokens: int, stops: Sequence[int], pad_id: int) -> Any:
    """A fresh GenerationConfig with no logits processor at all (greedy: the sampler adds T).

    Every processor field is at its neutral value, except top_k, left unset because greedy
    decoding ignores it: a caller who turns on do_sample must set top_k=0 (transformers' own
    default is 50).
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stops),
        pad_token_id=pad_id,
        temperature=1.0,
        top_p=1.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        min_length=0,
        use_cache=True,
    )


@contextlib.contextmanager
def checkpoint_defaults_off(hf_model: torch.nn.Module, config: Any) -> Iterator[None]:
    """Run `generate` with `config` as the model's own generation config, restored afterwards.

    transformers (5.x `_prepare_generation_config`) copies every unset field of the passed config
    from `model.generation_config`; with the passed config in its place nothing else leaks in.
    """
    saved = hf_model.generation_config
    hf_model.generation_config = copy.deepcopy(config)
    try:
        yield
    finally:
        hf_model.generation_config = saved


def _hf_batch(
    model: LoadedModel,
    rows: Sequence[Row],
    config: SamplingConfig,
    keep_logprobs: bool,
) -> list[Sample]:
    """One left-padded `generate` call for a batch of rows (prompt_id, index, ids, seed)."""
    from transformers import LogitsProcessorList

    plain = model.plain
    tokenizer = model.tokenizer
    stops = stop_token_ids(tokenizer, plain)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(ids) for _, _, ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (_, _, ids, _) in enumerate(rows):
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, width - len(ids) :] = 1
    device = model.device
    processors = LogitsProcessorList()
    sampler = None
    if config.temperature > 0:
        sampler = GumbelSampler(config.temperature, [s for *_, s in rows], device, keep_logprobs)
        processors.append(sampler)
    generation = pure_generation_config(config.max_new_tokens, stops, pad)
    with checkpoint_defaults_off(plain, generation), torch.inference_mode():
        out = plain.generate(
            input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=generation,
            logits_processor=processors,
        )
    steps = torch.stack(sampler.logprobs, dim=1).tolist() if sampler and keep_logprobs else None
    samples = []
    for r, (prompt_id, index, ids, seed) in enumerate(rows):
        response = _cut(out[r, width:].tolist(), stops)
        kept = tuple(steps[r][: len(response)]) if steps is not None else None
        samples.append(Sample(prompt_id, index, ids, response, seed, kept))
    return samples


def _cut(tokens: Sequence[int], stops: Sequence[int]) -> tuple[int, ...]:
    """Tokens up to and including the first stop token (the rest is padding)."""
    end = next((i + 1 for i, token in enumerate(tokens) if token in stops), len(tokens))
    return tuple(int(t) for t in tokens[:end])
