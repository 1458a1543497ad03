"""Named readout sites, their TransformerLens hook names, and the two readout modes.

The only module that knows hook names. With 0-based block index b and 1-based layer l = b + 1:

    embed    H^0                     blocks.0.hook_resid_pre
    attn_in  LN1_l(H^{l-1})          blocks.{b}.ln1.hook_out
    attn     A^l                     blocks.{b}.hook_attn_out
    mlp_in   LN2_l(H^{l-1} + A^l)    blocks.{b}.ln2.hook_out
    mlp      F^l                     blocks.{b}.hook_mlp_out
    resid    H^l                     blocks.{b}.hook_resid_post
    final    pi_theta = LN_final(H^L) W_U (+ the model's logit soft-cap, if any)

Readout modes: `raw` = x W_U (the paper's internal policies, no norm); `logit-lens` =
LN_final(x) W_U (tuned-lens / Entropy-Lens). Both need unprocessed weights.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

READOUT_MODES = ("raw", "logit-lens")
SITE_NAMES = ("embed", "attn_in", "attn", "mlp_in", "mlp", "resid", "final")
SITE_SETS = {
    "resid": ("embed", "resid", "final"),
    "modules": ("embed", "attn", "mlp", "resid", "final"),
    "paper": SITE_NAMES,
}
_BLOCK_HOOKS = {
    "attn_in": "ln1.hook_out",
    "attn": "hook_attn_out",
    "mlp_in": "ln2.hook_out",
    "mlp": "hook_mlp_out",
    "resid": "hook_resid_post",
}


@dataclass(frozen=True)
class Site:
    """One readout: a site name and its 1-based layer (embed: 0, final: L)."""

    name: str
    layer: int

    def hook_name(self) -> str | None:
        """The hook that carries this site's vector; None for `final` (computed from H^L)."""
        if self.name == "embed":
            return "blocks.0.hook_resid_pre"
        if self.name == "final":
            return None
        return f"blocks.{self.layer - 1}.{_BLOCK_HOOKS[self.name]}"


def readout_order(n_layers: int, site_set: str | tuple[str, ...] = "paper") -> list[Site]:
    """Sites in the order the engine reads them: embed, then per layer attn_in, attn, mlp_in,
    mlp, resid, then final. H^L (resid at L) is always captured: `final` is computed from it."""
    names = SITE_SETS[site_set] if isinstance(site_set, str) else site_set
    unknown = set(names) - set(SITE_NAMES)
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}; choose from {SITE_NAMES}")
    order: list[Site] = [Site("embed", 0)] if "embed" in names else []
    for layer in range(1, n_layers + 1):
        order += [Site(name, layer) for name in SITE_NAMES[1:6] if name in names]
    if "final" in names:
        order.append(Site("final", n_layers))
    return order


def captured_sites(order: list[Site], n_layers: int) -> list[Site]:
    """Sites whose vectors must be captured by hooks (H^L always, for the final policy)."""
    sites = [site for site in order if site.name != "final"]
    if Site("resid", n_layers) not in sites:
        sites.append(Site("resid", n_layers))
    return sites


class Unembedding:
    """Projects d_model vectors onto the vocabulary: raw, logit-lens, and the model's final policy.

    Uses the Hugging Face modules themselves (lm_head, final norm), so readouts are faithful to
    the checkpoint. Inputs [n, d_model], outputs float32 logits [n, vocab]. Readouts run in
    float32 whatever the model's dtype: a bf16/fp16 model gets float32 copies of W_U, its bias
    and the final norm (made once, on first use). Only `raw` with gradients enabled uses the
    model's own weight (so training reaches it), in the model's dtype.
    """

    def __init__(self, hf_model: torch.nn.Module):
        head = _unwrap(hf_model.get_output_embeddings())
        self.weight = head.weight
        bias = getattr(head, "bias", None)
        self.bias = bias if bias is not None and bool(bias.detach().any()) else None
        self._norm = _unwrap(_final_norm(hf_model))
        self.softcap = getattr(hf_model.config, "final_logit_softcapping", None)

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @functools.cached_property
    def weight32(self) -> torch.Tensor:
        """W_U [vocab, d_model] in float32, without autograd (the weight itself if float32)."""
        return self.weight.detach().float()

    @functools.cached_property
    def bias32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.detach().float()

    @functools.cached_property
    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """LN_final with float32 parameters (the module itself if it already is float32)."""
        params = list(self._norm.parameters())
        if all(p.dtype == torch.float32 for p in params):
            return self._norm
        return copy.deepcopy(self._norm).float()

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """x W_U (+ bias) as float32 logits. With gradients enabled it runs on the model's own
        weight in the model's dtype, so a training loss reaches W_U."""
        if torch.is_grad_enabled():
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).float()
        return F.linear(x.float(), self.weight32, self.bias32)

    def logit_lens(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw(self.normed(x))

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """LN_final(x) in float32 (the final norm's float32 copy)."""
        return self.final_norm(x.float())

    def final(self, h_last: torch.Tensor) -> torch.Tensor:
        """The model's own logits from H^L (final norm, unembedding, soft-cap)."""
        return self.cap(self.logit_lens(h_last))

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's final-logit soft-cap (Gemma-2 style tanh), identity without one."""
        if self.softcap:
            return torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def readout(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "raw":
            return self.raw(x)
        if mode == "logit-lens":
            return self.logit_lens(x)
        raise ValueError(f"unknown readout mode {mode!r}; choose from {READOUT_MODES}")

    def prepared(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """The float32 vector that W_U multiplies for readout `mode`: x, or LN_final(x)."""
        if mode == "raw":
            return x.float()
        if mode == "logit-lens":
            return self.normed(x)
        raise ValueError(f"unknown readout mode {mode!r}; choose from {READOUT_MODES}")

    def block(self, x32: torch.Tensor, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Logits of vocabulary entries start..stop-1 for prepared float32 x [n, d] into `out`
        [n, stop - start] (contiguous): one matmul, no temporaries."""
        torch.mm(x32, self.weight32[start:stop].t(), out=out)
        if self.bias32 is not None:
            out.add_(self.bias32[start:stop])
        return out

    def entries(self, x32: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits of one vocabulary entry per row, x[i] . W_U[ids[i]] (+ bias); [n]."""
        picked = (x32 * self.weight32[ids]).sum(dim=-1)
        if self.bias32 is not None:
            picked = picked + self.bias32[ids]
        return picked


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module inside a TransformerLens bridge component (hook-free)."""
    return getattr(module, "original_component", module)


def _final_norm(hf_model: torch.nn.Module) -> torch.nn.Module:
    base = getattr(hf_model, "base_model", hf_model)
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(
        f"cannot find the final norm of {type(hf_model).__name__}; "
        "this architecture is not supported yet"
    )
