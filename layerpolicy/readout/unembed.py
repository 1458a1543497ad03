"""The only logits path: raw readout, logit lens, final norm, soft-cap and bias, in float32.

Every readout the toolkit reports or trains on goes through `Unembedding` (docs/method.md):
raw = x W_U^T (+ b_U), logit lens = LN_final(x) W_U^T (+ b_U), Jacobian lens =
LN_final(J_l x) W_U^T (+ b_U) (J_l: `jacobian.LensTransport`), and the model's own policy
pi_theta = cap(LN_final(H^L) W_U^T (+ b_U)). The final norm is the module that feeds `lm_head`,
found from the decoder's structure, so a new architecture needs no list of attribute names.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import LayerpolicyError
from .precision import ReadoutWeight, check_precision, prepare_weight, readout_matmul
from .sites import READOUT_MODES


class Unembedding:
    """Projects d_model vectors onto the vocabulary: raw, logit lens, and the model's policy.

    Uses the Hugging Face modules themselves (lm_head, final norm), so readouts are faithful to
    the checkpoint. Inputs [n, d_model] on any device, outputs float32 logits [n, vocab] on the
    unembedding's device. The maths is float32 whatever the model's dtype: without gradients on
    cached float32 copies of W_U, b_U and the final norm; with gradients on float32 casts of the
    model's own parameters, so a training loss reaches them and old and new log-probs agree.
    """

    def __init__(
        self,
        hf_model: torch.nn.Module,
        lens: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        *,
        precision: str = "float32",
    ):
        """lens: J_l x for a vector x [n, d_model] of layer l (float32), for "jacobian-lens".
        precision: how `block` computes its matmul (`readout.precision`)."""
        self.lens = lens
        self.precision = check_precision(precision)
        head = _unwrap(hf_model.get_output_embeddings())
        self.weight = head.weight
        bias = getattr(head, "bias", None)
        self.bias = bias if bias is not None and bool(bias.detach().any()) else None
        self._norm = find_final_norm(hf_model)
        self.softcap = getattr(hf_model.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        """Where W_U lives: every readout is computed there."""
        return self.weight.device

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
    def readout_weight(self) -> ReadoutWeight:
        """W_U prepared once for `block`'s precision (float32: the weight itself)."""
        return prepare_weight(self.weight32, self.precision)

    @functools.cached_property
    def bias32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.detach().float()

    @functools.cached_property
    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """LN_final with float32 parameters on the unembedding's device (the module itself if it
        already is)."""
        params = list(self._norm.parameters())
        if all(p.dtype == torch.float32 and p.device == self.device for p in params):
            return self._norm
        return copy.deepcopy(self._norm).to(device=self.device, dtype=torch.float32)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """x W_U^T (+ b_U) as float32 logits [n, vocab]."""
        x = x.to(self.device, torch.float32)
        if torch.is_grad_enabled():
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x, self.weight.float(), bias)
        return F.linear(x, self.weight32, self.bias32)

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """LN_final(x) in float32 [n, d_model] (differentiable in the norm's gain when
        gradients are enabled)."""
        x = x.to(self.device, torch.float32)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._norm.parameters()):
            params = {
                name: p.to(self.device, torch.float32) for name, p in self._norm.named_parameters()
            }
            return functional_call(self._norm, params, (x,))
        return self.final_norm(x)

    def logit_lens(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw(self.normed(x))

    def final(self, h_last: torch.Tensor) -> torch.Tensor:
        """The model's own logits from H^L before the final norm (norm, unembedding, soft-cap)."""
        return self.cap(self.logit_lens(h_last))

    def from_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """The model's own logits from LN_final(H^L), e.g. Hugging Face's last_hidden_state."""
        return self.cap(self.raw(normed))

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's final-logit soft-cap (Gemma-2 style tanh), identity without one."""
        if self.softcap:
            return torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def readout(self, x: torch.Tensor, mode: str, layer: int | None = None) -> torch.Tensor:
        """Logits of readout `mode` (READOUT_MODES) of x [n, d_model] of `layer` (1-based; the
        Jacobian lens needs it)."""
        return self.raw(self.prepared(x, mode, layer))

    def prepared(self, x: torch.Tensor, mode: str, layer: int | None = None) -> torch.Tensor:
        """The float32 vector that W_U multiplies for readout `mode`: x, LN_final(x), or
        LN_final(J_l x) for a vector of `layer`."""
        if mode == "raw":
            return x.to(self.device, torch.float32)
        if mode == "logit-lens":
            return self.normed(x)
        if mode == "jacobian-lens":
            if self.lens is None or layer is None:
                raise LayerpolicyError("the Jacobian lens readout needs a lens and the layer")
            return self.normed(self.lens(x.to(self.device), layer))
        raise LayerpolicyError(
            f"unknown readout {mode!r}; choose one of {', '.join(READOUT_MODES)}"
        )

    def block(self, x32: torch.Tensor, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Logits of vocabulary entries start..stop-1 for prepared float32 x [n, d] into `out`
        [n, stop - start] (contiguous): one matmul at `precision`, no [n, vocab] temporaries."""
        readout_matmul(x32, self.readout_weight.rows(start, stop), out=out)
        if self.bias32 is not None:
            out.add_(self.bias32[start:stop])
        return out

    def entries(self, x32: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits of one vocabulary entry per row, x[i] . W_U[ids[i]] (+ bias); [n]."""
        picked = (x32 * self.weight32[ids]).sum(dim=-1)
        if self.bias32 is not None:
            picked = picked + self.bias32[ids]
        return picked


def find_final_norm(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The norm that feeds lm_head: the last normalisation module the decoder registers after
    its list of layers (Hugging Face decoders register their children in forward order), or the
    decoder's only normalisation module where it registers that one first (OPT)."""
    decoder = _unwrap(decoder_of(hf_model))
    children = [(name, _unwrap(child)) for name, child in decoder.named_children()]
    layers = [i for i, (_, child) in enumerate(children) if isinstance(child, torch.nn.ModuleList)]
    after = children[layers[-1] + 1 :] if layers else []
    norms = [child for _, child in after if _is_norm(child)]
    if not norms and layers:
        every = [child for _, child in children if _is_norm(child)]
        norms = every if len(every) == 1 else []
    if not norms:
        found = ", ".join(f"{name} ({type(child).__name__})" for name, child in children)
        raise LayerpolicyError(
            f"cannot find the final norm of {type(hf_model).__name__}: no normalisation module "
            f"follows the decoder layers of {type(decoder).__name__} (children: {found}); "
            "this architecture is not supported"
        )
    return norms[-1]


def decoder_of(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder (the stack of layers, `.layers`) of a Hugging Face causal LM: its
    `get_decoder()`, else its base model."""
    get_decoder = getattr(hf_model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, torch.nn.Module) else hf_model.base_model


def _is_norm(module: torch.nn.Module) -> bool:
    norm_types = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module inside a TransformerLens bridge component (hook-free)."""
    return getattr(module, "original_component", module)
