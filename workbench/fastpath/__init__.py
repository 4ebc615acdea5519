"""The workbench's exact speed-ups over TransformerLens, each with its guard.

* :mod:`.layout`: weights stored in the layout TL's forward asks for (no per-call copies);
* :mod:`.attention`: TL's attention without per-step key re-rotation, GQA expansion and cache
  ``torch.cat`` (steps aside whenever a hook looks inside attention);
* :mod:`.unembed`: the CPU unembedding in 1,024-row slices (only over TL's own forward);
* :mod:`.gguf`: transformers parses a GGUF file once instead of three times (loading only).

Each one computes what TL computes (bitwise, or to float rounding where matmuls regroup; tested
against TL's own path). They patch TL's internals and assume what TL's converter made of a
family, so :func:`install` engages them only for the TransformerLens releases in :data:`TESTED_TL`
and the families in :data:`TESTED_FAMILIES` (each one a model in ``tests/test_families.py``);
otherwise TL's own forward stays in place, with one warning saying why.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

import torch

from .. import families
from . import attention, layout, unembed

__all__ = ["install", "report", "TESTED_TL", "TESTED_FAMILIES", "tl_version_tested", "family_tested", "why_off"]

TESTED_TL = ("3.9",)  # major.minor releases of transformer-lens the fast paths are tested on

# Hugging Face architectures (``cfg.original_architecture``, the family ``workbench models``
# reports) whose tiny model in tests/test_families.py checks the fast paths against TL's own path:
# the families whose record (workbench.families.FAMILIES) has ``fast_paths``.
TESTED_FAMILIES = families.fast_path_families()


def tl_version_tested() -> bool:
    """Whether the installed transformer-lens is a release the fast paths are tested on."""
    try:
        return ".".join(version("transformer-lens").split(".")[:2]) in TESTED_TL
    except PackageNotFoundError:
        return False


def family_tested(model) -> bool:
    """Whether ``model``'s family (``cfg.original_architecture``) is in :data:`TESTED_FAMILIES`."""
    return getattr(model.cfg, "original_architecture", None) in TESTED_FAMILIES


def _tl_version() -> str:
    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "not installed"


def why_off(model) -> str | None:
    """Why every fast path stays off on ``model`` (an untested TransformerLens release, or a family
    off the allow-list), or None when their own guards decide."""
    reasons = []
    if not tl_version_tested():
        reasons.append(f"transformer-lens {_tl_version()} is not a tested release ({', '.join(TESTED_TL)}.x)")
    if not family_tested(model):
        reasons.append(
            f"family {getattr(model.cfg, 'original_architecture', None)!r} is not on the tested list "
            "(workbench.fastpath.TESTED_FAMILIES)"
        )
    return "; ".join(reasons) or None


def install(model) -> dict[str, int | bool]:
    """Engage every fast path on ``model`` that its guard allows; returns what was engaged
    (``{"layout": bool, "attention": blocks, "unembed": bool}``)."""
    off = why_off(model)
    if off is not None:
        warnings.warn(
            f"{off}: the workbench's fast paths stay off and TransformerLens' own forward runs",
            stacklevel=2,
        )
        return {"layout": False, "attention": 0, "unembed": False}
    layout.fast_weight_layout(model)
    return {"layout": True, "attention": attention.install(model), "unembed": unembed.install(model)}


def report(model) -> dict:
    """Which fast paths are engaged on ``model`` and why the others are not, read from the same
    guards :func:`install` uses (and from the model itself: what was actually installed)."""
    off = why_off(model)  # set: nothing was installed, for this reason
    reasons: dict[str, list[int]] = {}
    engaged: list[int] = []
    for i, block in enumerate(model.blocks):
        if hasattr(block.attn, "_workbench_tl_forward"):
            engaged.append(i)
            continue
        for reason in attention.why_unsupported(block.attn) or [off or "not installed"]:
            reasons.setdefault(reason, []).append(i)
    unembed_on = unembed.installed(model)
    w_u = model.unembed.W_U
    slicing = unembed.slices_apply(torch.empty(0, device=w_u.device), w_u.T)
    return {
        "transformer_lens": {
            "version": _tl_version(),
            "tested": tl_version_tested(),
            "tested_releases": list(TESTED_TL),
        },
        "family": {
            "name": getattr(model.cfg, "original_architecture", None),
            "tested": family_tested(model),
            "tested_families": sorted(TESTED_FAMILIES),
        },
        "weight_layout": {
            "engaged": off is None,
            "why": off or "MLP, W_Q/K/V/O and W_U stored in the layout TL's forward copies them into",
        },
        "attention": {
            "engaged_layers": engaged,
            "n_layers": len(model.blocks),
            "why_not": reasons,
            "note": "steps aside to TL's forward while a hook is attached inside attention "
            f"({', '.join(attention.INNER_HOOKS)})",
        },
        "chunked_unembed": {
            "engaged": unembed_on,
            "slices_here": unembed_on and slicing,
            "why": (
                unembed.why_not(model)
                or off
                or (
                    f"CPU only: on {w_u.device.type} TL's one matmul runs"
                    if not slicing
                    else "the CPU unembedding runs in 1,024-row slices"
                )
            ),
        },
    }
