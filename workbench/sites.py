"""The hook vocabulary: which activation a *site* names, and its TransformerLens hook name.

A site is one of the residual-stream read/write points of a pre-norm block::

    resid_pre[l] ──► attn ──(attn_out[l])──► + ──► resid_mid[l] ──► mlp ──(mlp_out[l])──► + ──► resid_post[l]
         │                                  ▲         │                                    ▲
         └──────────────────────────────────┘         └────────────────────────────────────┘

so ``resid_pre[l+1] == resid_post[l] == resid_pre[l] + attn_out[l] + mlp_out[l]``. Every tensor
at these hooks is ``[batch, pos, d_model]``. Two more sites name the *normalised inputs* of the
attention and MLP blocks (``ln1``/``ln2`` ``hook_normalized``), where angular steering rotates.
"""

from __future__ import annotations

from typing import Literal, get_args

Site = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
SITES: tuple[str, ...] = get_args(Site)

_HOOK_SUFFIX = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
FINAL_RESID = "ln_final.hook_normalized"  # not a site: the final residual is read via resid_post[L-1]

# The intervention vocabulary, listed once (config, math, hooks, CLI and notebooks read it from here).
# Where ablation writes (see interventions.location_hook_names); a location sweep also takes "none".
LOCATIONS: tuple[str, ...] = ("all", "resid", "attn", "mlp")
# Where rotation acts: the norm outputs (the study), TL's hook_normalized (pre-gain) or hook_resid_pre.
ROTATION_SITES: tuple[str, ...] = ("post_gain", "pre_gain", "resid")
# Adaptive gates: every token, tokens with b1ᵀh > 0 (the study's AAS), tokens with b2ᵀh > 0.
GATES: tuple[str, ...] = ("off", "b1", "b2")


def check_site(site: str) -> Site:
    """Return ``site`` if it is a known site, else raise a ValueError that lists the valid ones."""
    if site not in _HOOK_SUFFIX:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site  # type: ignore[return-value]


def check_layers(layers: int | list[int] | range | None, n_layers: int) -> list[int]:
    """Normalise a layer selection to a sorted list of distinct in-range indices.

    ``None`` means every layer; negative indices count from the end, as in Python.
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for layer in layers:
        idx = layer + n_layers if layer < 0 else layer
        if not 0 <= idx < n_layers:
            raise ValueError(
                f"layer {layer} is out of range for a model with {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or negative from the end)"
            )
        out.append(idx)
    if not out:
        raise ValueError("empty layer selection; pass None for every layer")
    return sorted(set(out))


def hook_name(site: str, layer: int) -> str:
    """TransformerLens hook name of ``site`` at block ``layer``: ``hook_name("attn_out", 3)`` →
    ``"blocks.3.hook_attn_out"``."""
    return f"blocks.{layer}.{_HOOK_SUFFIX[check_site(site)]}"


def parse_hook_name(name: str) -> tuple[Site, int]:
    """Inverse of :func:`hook_name`: ``"blocks.3.hook_attn_out"`` → ``("attn_out", 3)``."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        for site, suffix in _HOOK_SUFFIX.items():
            if parts[2] == suffix:
                return site, int(parts[1])  # type: ignore[return-value]
    raise ValueError(f"{name!r} is not a site hook; expected blocks.<layer>.<{'|'.join(_HOOK_SUFFIX.values())}>")


def check_hook_names(model, names: list[str]) -> None:
    """Raise a clear error if any hook name does not exist on ``model`` (a ``HookedRootModule``).

    TransformerLens silently ignores unknown names in some paths; we never do.
    """
    known = model.hook_dict
    missing = [n for n in names if n not in known]
    if missing:
        sample = ", ".join(sorted(k for k in known if k.startswith("blocks.0."))[:12])
        raise ValueError(f"hook(s) {missing[:5]} do not exist on this model; block 0 has e.g.: {sample}")
