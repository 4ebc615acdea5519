"""Where a generation's responses came from: the provenance record each ``workbench generate`` row
carries, the default output name it gives, and the check that keeps another run from overwriting
that file.

The record holds the model key, the intervention's canonical spec, the token budget and, for the
parts the intervention reads, the direction's (site, layer, position, method) and the plane's (b1,
b2's variant, candidates) with the analysis they came from: its run folder ``<model_key>/<config_key>``
(the key hashes the analysis config and, for your own prompt files, the prompt sets), the prompts'
source and fingerprint, and a hash of the analysis config. It holds no float and no time, so a
rerun of the same command gives the same record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .artifacts import sha256_text
from .directions import Direction
from .pipeline import Analysis, model_key
from .planes import Plane

__all__ = ["generation_provenance", "direction_provenance", "default_output", "check_overwrite"]


def _origin(analysis: Analysis) -> dict:
    """The analysis a direction or plane came from: run folder, prompts, config hash."""
    config = (analysis.dir / "config.json").read_text()
    return {
        "analysis": f"{analysis.dir.parent.name}/{analysis.dir.name}",
        "prompts": analysis.prompts.source,
        "prompts_key": analysis.prompts.key(),
        "config_sha256_16": sha256_text(json.dumps(json.loads(config), sort_keys=True))[:16],
    }


def _direction_record(direction: Direction, analysis: Analysis) -> dict:
    return {
        "site": direction.site,
        "layer": direction.layer,
        "pos": direction.pos,
        "method": direction.method,
        "train_prompt_hash": direction.prompt_hash,  # the direction_train prompts its means came from
        **_origin(analysis),
    }


def direction_provenance(direction: Direction, analysis: Analysis) -> dict:
    """Where ``direction`` came from (site, layer, position, method, train prompts' hash, the analysis
    run, its prompt sets and config hash), JSON-ready: what ``workbench export``'s manifest records."""
    return json.loads(json.dumps(_direction_record(direction, analysis)))


def _plane_record(plane: Plane, analysis: Analysis) -> dict:
    b1 = plane.b1_key
    return {
        "b1": None if b1 is None else {"site": b1.site, "layer": b1.layer, "pos": b1.pos},
        "b1_method": analysis.config.plane_b1_method,
        "b2": plane.variant,  # pc1: the first principal component of the candidates, made orthogonal to b1
        "candidate_norm": plane.report.get("candidate_norm"),
        "candidate_sites": plane.report.get("candidate_sites"),
        "train_prompt_hash": plane.prompt_hash,
        **_origin(analysis),
    }


def generation_provenance(
    analysis: Analysis,
    intervention: str,
    *,
    direction: Direction | None = None,
    plane: Plane | None = None,
    max_new_tokens: int,
    controls: dict | None = None,
) -> dict:
    """The provenance record of one ``workbench generate`` run (JSON-ready, the same on a rerun).
    ``direction`` / ``plane``: those the intervention reads (None: not used, and not recorded).
    ``controls``: ``{"direction" | "plane": {"kind", "seed"}}`` when a causal control
    (:mod:`workbench.controls`) stands in for the real direction or plane; recorded only then."""
    record = {
        "model": model_key(analysis.model),
        "intervention": intervention,
        "max_new_tokens": int(max_new_tokens),
        "direction": None if direction is None else _direction_record(direction, analysis),
        "plane": None if plane is None else _plane_record(plane, analysis),
    }
    if controls:
        record["controls"] = controls
    return json.loads(json.dumps(record))  # tuples as lists: equal to what a JSONL row reads back


def _where(site, layer, pos) -> str:
    return "mean" if site is None else f"{site}-L{layer}-p{pos}"


def identity(provenance: dict) -> str:
    """The direction's and the plane's part of the default output name ("" when neither is used):
    ``dir-SITE-LLAYER-pPOS`` / ``plane-B1SITE-LB1LAYER-pPOS-VARIANT``, then the analysis run's key."""
    parts: list[str] = []
    key = ""
    if (d := provenance.get("direction")) is not None:
        parts.append("dir-" + _where(d["site"], d["layer"], d["pos"]))
        key = d["analysis"].rsplit("/", 1)[-1]
    if (p := provenance.get("plane")) is not None:
        b1 = p["b1"] or {"site": None, "layer": None, "pos": None}
        parts.append("plane-" + _where(b1["site"], b1["layer"], b1["pos"]) + f"-{p['b2']}")
        key = p["analysis"].rsplit("/", 1)[-1]
    for what, control in (provenance.get("controls") or {}).items():  # a control never shares the real one's file
        parts.append(f"{what}-{control['kind']}{control['seed']}")
    return ".".join([*parts, key]) if parts else ""


def default_output(prompts: str | Path, model: str, dtype: str, provenance: dict) -> Path:
    """``PROMPTS.MODEL-DTYPE.SPEC[.IDENTITY].jsonl`` next to the prompts: the intervention's
    canonical spec and, where it reads them, the direction's and the plane's :func:`identity`."""
    parts = [f"{Path(model).name}-{dtype}", provenance["intervention"], identity(provenance)]
    tag = re.sub(r"[^A-Za-z0-9.@-]+", "_", ".".join(p for p in parts if p)).strip("_")
    return Path(prompts).with_suffix(f".{tag}.jsonl")


def _recorded(path: Path) -> dict | None:
    """The provenance of an existing output's first row, or None (no such record, or not JSONL)."""
    try:
        with path.open(encoding="utf-8") as fh:
            row = json.loads(fh.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    found = row.get("provenance") if isinstance(row, dict) else None
    return found if isinstance(found, dict) else None


def check_overwrite(path: Path, provenance: dict, *, overwrite: bool = False) -> None:
    """Refuse to replace ``path`` when it holds another run's responses (another provenance, or
    none recorded); the same provenance is a rerun and may replace it, as may ``overwrite``."""
    if overwrite or not path.exists():
        return
    old = _recorded(path)
    if old == provenance:
        return
    if old is None:
        why = "holds no provenance record (not written by this version of workbench generate)"
    else:
        keys = sorted(k for k in {*old, *provenance} if old.get(k) != provenance.get(k))
        why = f"was written by a different run (its {', '.join(keys)} differ)"
    raise ValueError(f"{path} exists and {why}; pass --out NEW.jsonl to keep both, or --overwrite to replace it")
