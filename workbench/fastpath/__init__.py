"""The workbench's exact speed-ups over TransformerLens, each with its guard.

* :mod:`.layout`: weights stored in the layout TL's forward asks for (no per-call copies);
* :mod:`.attention`: TL's attention without per-step key re-rotation, GQA expansion and cache
  ``torch.cat`` (steps aside whenever a hook looks inside attention);
* :mod:`.unembed`: the CPU unembedding in 1,024-row slices (only over TL's own forward);
* :mod:`.gguf`: transformers parses a GGUF file once instead of three times (loading only).

Each one computes what TL computes (bitwise, or to float rounding where matmuls regroup; tested
against TL's own path). They patch TL's internals, so :func:`install` engages them only for the
TransformerLens versions the tests cover and otherwise leaves TL's own forward in place, with a
warning.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from . import attention, layout, unembed

__all__ = ["install", "TESTED_TL", "tl_version_tested"]

TESTED_TL = ("3.9",)  # major.minor releases of transformer-lens the fast paths are tested on


def tl_version_tested() -> bool:
    """Whether the installed transformer-lens is a release the fast paths are tested on."""
    try:
        return ".".join(version("transformer-lens").split(".")[:2]) in TESTED_TL
    except PackageNotFoundError:
        return False


def install(model) -> dict[str, int | bool]:
    """Engage every fast path on ``model`` that its guard allows; returns what was engaged
    (``{"layout": bool, "attention": blocks, "unembed": bool}``)."""
    if not tl_version_tested():
        warnings.warn(
            f"transformer-lens is not a tested release ({', '.join(TESTED_TL)}.x): the "
            "workbench's fast paths stay off and TransformerLens' own forward runs",
            stacklevel=2,
        )
        return {"layout": False, "attention": 0, "unembed": False}
    layout.fast_weight_layout(model)
    return {"layout": True, "attention": attention.install(model), "unembed": unembed.install(model)}
