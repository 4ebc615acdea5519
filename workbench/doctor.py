"""``workbench models MODEL``: what the workbench makes of a model, as one report.

The family and shape, the norm placement, sliding windows and soft-caps as the loaded
``HookedTransformer`` has them; which fast paths are engaged and why the others are not (from the
same guards :func:`workbench.fastpath.install` uses, see :func:`workbench.fastpath.report`); and,
per intervention kind of :mod:`workbench.intervention`'s registry, whether it is exact on this family
and why. Every answer is computed by the code that decides it (the fast-path guards, each kind's
``exactness``, which builds its hooks), so the report cannot drift from the behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import fastpath
from .families import norm_placement
from .intervention import exactness_table
from .kv import local_layers, sliding_window
from .models import load_model

__all__ = ["model_report", "diagnose", "describe"]


def model_report(spec: str, *, device=None, dtype=None) -> dict:
    """Load ``spec`` (any spec :func:`workbench.models.load_model` takes) and :func:`diagnose` it."""
    return diagnose(load_model(spec, device=device, dtype=dtype), spec)


def _hf_architecture(model, spec: str | None) -> str:
    """The architecture config.json names (a local folder), else TL's ``original_architecture``,
    which the loader copies from the Hugging Face config's ``architectures[0]``."""
    config = Path(spec).expanduser() / "config.json" if spec else None
    if config is not None and config.is_file():
        names = json.loads(config.read_text()).get("architectures") or []
        if names:
            return str(names[0])
    return str(model.cfg.original_architecture)


def _norm(cfg) -> dict:
    return {"type": cfg.normalization_type, "placement": norm_placement(cfg)}


def _sliding_window(model) -> dict | None:
    layers = local_layers(model)  # the same test that decides prefix sharing
    return {"size": sliding_window(model), "layers": layers} if layers else None


def _softcap(cfg) -> dict | None:
    caps = {
        "attn": cfg.attn_scores_soft_cap if (cfg.attn_scores_soft_cap or -1) > 0 else None,
        "final": cfg.output_logits_soft_cap if (cfg.output_logits_soft_cap or -1) > 0 else None,
    }
    return caps if any(v is not None for v in caps.values()) else None


def diagnose(model, spec: str | None = None) -> dict:
    """The report of a loaded model (see the module docs); ``spec`` is what it was loaded from."""
    cfg = model.cfg
    return {
        "model": spec if spec is not None else getattr(model, "workbench_name", None),
        "family": _hf_architecture(model, spec),
        "original_architecture": cfg.original_architecture,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_ctx": cfg.n_ctx,
        "dtype": str(cfg.dtype).removeprefix("torch."),
        "device": str(model.unembed.W_U.device),
        "norm": _norm(cfg),
        "sliding_window": _sliding_window(model),
        "softcap": _softcap(cfg),
        "fast_paths": fastpath.report(model),
        "interventions": exactness_table(model),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def describe(report: dict) -> str:
    """``report`` as a few readable lines (the command's output without ``--json``)."""
    norm, fp = report["norm"], report["fast_paths"]
    window = report["sliding_window"]
    lines = [
        f"model: {report['model']}",
        f"family: {report['family']} (TransformerLens: {report['original_architecture']})",
        f"shape: {report['n_layers']} layers, d_model {report['d_model']}, n_ctx {report['n_ctx']}; "
        f"{report['dtype']} on {report['device']}",
        f"norm: {norm['type']}, {norm['placement']}-norm",
        "sliding window: " + (f"{window['size']} tokens on layers {window['layers']}" if window else "none"),
        "soft-cap: "
        + (", ".join(f"{k} {v:g}" for k, v in report["softcap"].items() if v) if report["softcap"] else "none"),
        f"fast paths (transformer-lens {fp['transformer_lens']['version']}, "
        f"tested: {_yes(fp['transformer_lens']['tested'])}; family on the tested list: "
        f"{_yes(fp['family']['tested'])}):",
        f"  weight layout: {_yes(fp['weight_layout']['engaged'])} ({fp['weight_layout']['why']})",
        f"  attention: {len(fp['attention']['engaged_layers'])}/{fp['attention']['n_layers']} layers"
        + "".join(f"; not {layers}: {why}" for why, layers in fp["attention"]["why_not"].items()),
        f"  chunked unembedding: {_yes(fp['chunked_unembed']['engaged'])} ({fp['chunked_unembed']['why']})",
        "interventions:",
    ]
    lines += [
        f"  {name}: {'exact' if v['exact'] else 'NOT exact'} ({v['why']})"
        for name, v in report["interventions"].items()
    ]
    return "\n".join(lines)
