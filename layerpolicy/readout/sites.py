"""Named readout sites and their TransformerLens hook names: the only module that knows them.

With 0-based block index b and 1-based layer l = b + 1:

    embed    H^0                     blocks.0.hook_resid_pre
    attn_in  LN1_l(H^{l-1})          blocks.{b}.ln1.hook_out
    attn     A^l                     blocks.{b}.hook_attn_out
    mlp_in   LN2_l(H^{l-1} + A^l)    blocks.{b}.ln2.hook_out
    mlp      F^l                     blocks.{b}.hook_mlp_out
    resid    H^l                     blocks.{b}.hook_resid_post
    final    pi_theta = LN_final(H^L) W_U (+ the model's logit soft-cap, if any)

In sandwich (post-norm) blocks such as Gemma 2/3's, A^l and F^l are what reaches the stream:
the outputs of the norms after attention and after the MLP. The bridge's hook_attn_out and
hook_mlp_out are those norms' hook_out there (ln1_post, ln2_post), and ln2 is the norm before the
MLP, so the same names hold and H^l = H^{l-1} + A^l + F^l still.

How a site's vector becomes logits (raw, logit lens, the final policy) is `unembed.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LayerpolicyError

READOUT_MODES = ("raw", "logit-lens", "jacobian-lens")  # vector -> logits: see unembed.py
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


def site_names(site_set: str | tuple[str, ...]) -> tuple[str, ...]:
    """The site names of a named set ("resid", "modules", "paper") or of a tuple of names;
    LayerpolicyError naming the choices for anything else."""
    if isinstance(site_set, str):
        if site_set not in SITE_SETS:
            raise LayerpolicyError(
                f"unknown site set {site_set!r}; choose one of {', '.join(SITE_SETS)}"
            )
        return SITE_SETS[site_set]
    unknown = sorted(set(site_set) - set(SITE_NAMES))
    if unknown:
        raise LayerpolicyError(
            f"unknown sites {', '.join(unknown)}; choose from {', '.join(SITE_NAMES)}"
        )
    return tuple(site_set)


def readout_order(n_layers: int, site_set: str | tuple[str, ...] = "paper") -> list[Site]:
    """Sites in the order the engine reads them: embed, then per layer attn_in, attn, mlp_in,
    mlp, resid, then final. H^L (resid at L) is always captured: `final` is computed from it."""
    names = site_names(site_set)
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
