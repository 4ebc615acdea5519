"""Edited models leave the workbench: ``workbench export`` as a Hugging Face folder, a PEFT LoRA
adapter, a GGUF file or a llama.cpp control vector, each with a manifest (``workbench-export.json``).

Which interventions each format carries (:func:`check_intervention`):

* ``hf``, ``lora``, ``gguf``: directional ablation everywhere as a weight edit, i.e. ``orthogonalize``
  or its hook form ``ablate:all`` without ``@LAYERS`` (the same model on every family where
  :func:`workbench.interventions.orthogonalization_caveats` is empty). Every matrix that writes into
  the residual stream, in the family's own Hugging Face names and layout
  (:func:`workbench.families.residual_writers`: the token embedding, GPT-2's positions, each
  attention output and MLP output projection, their biases), becomes ``W ← W − r̂(r̂ᵀW)`` along its
  d_model axis, as ``orthogonalize_weights`` does on TransformerLens' unprocessed weights. A tied
  unembedding is untied first (it keeps the original embedding). ``lora`` writes the same edit as
  ΔW = −r̂(r̂ᵀW), exactly rank 1 per matrix (B = −r̂, A = r̂ᵀW, r = lora_alpha = 1). ``gguf``
  converts the ``hf`` folder with :mod:`workbench.gguf_export`.
* ``control-vector``: activation addition ``add[:ALPHA][@LAYERS]``, α·r at the addition's layers.

Before anything is written, every weight export is run on probe tokens and compared with the
workbench's hook ablation (``ablate:all``); the measured max |Δlogit| is in the manifest. A family
where the edit is not exact (sandwich or post norms) is refused unless ``force``; a checkpoint whose
edit differs from hook ablation where it should not is refused as a bug. Folders and files are
written under a temporary name beside ``out`` and renamed into place; a failure leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from . import __version__, families
from .artifacts import atomic_write_text
from .directions import Direction
from .hub import load_hf_path
from .intervention import Ablation, Addition, Intervention, Orthogonalization
from .interventions import ablation_hooks, orthogonalization_caveats
from .models import EMBEDDED_MODELS, load_hf
from .sites import check_layers
from .steering_math import unit_vector

__all__ = [
    "FORMATS",
    "GGUF_TYPES",
    "MANIFEST",
    "is_weight_edit",
    "check_intervention",
    "check_out",
    "check_family",
    "check_folder_family",
    "writer_params",
    "orthogonalize_hf",
    "export",
]

FORMATS = ("hf", "lora", "gguf", "control-vector")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # what workbench.gguf_export writes
MANIFEST = "workbench-export.json"
_BUG_TOL = 1e-3  # beyond this an exact family's export is refused as wrong, never written
_WEIGHT_FORMATS = ("hf", "lora", "gguf")
_PROBE = (2, 12)  # probe batch: 2 rows of 12 random token ids (seed 0)


# --------------------------------------------------------------------------- checks before any load


def is_weight_edit(value: Intervention) -> bool:
    """Whether ``value`` is directional ablation everywhere: ``orthogonalize`` or ``ablate:all``."""
    return isinstance(value, Orthogonalization) or (
        isinstance(value, Ablation) and value.location == "all" and value.layers is None
    )


def check_intervention(value: Intervention, fmt: str) -> None:
    """Raise a ValueError naming what ``fmt`` can carry when it cannot carry ``value``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not an export format; choose one of {', '.join(FORMATS)}")
    if fmt in _WEIGHT_FORMATS and not is_weight_edit(value):
        raise ValueError(
            f"--intervention {value}: --format {fmt} carries only directional ablation everywhere as a weight edit "
            "(orthogonalize, or ablate:all without @LAYERS); rotations, gates, location- or layer-restricted "
            "ablation and additions depend on the activations; export add[:ALPHA][@LAYERS] as --format control-vector"
        )
    if fmt == "control-vector" and not isinstance(value, Addition):
        raise ValueError(
            f"--intervention {value}: --format control-vector carries only activation addition add[:ALPHA][@LAYERS]; "
            "export orthogonalize (directional ablation everywhere) as --format hf, lora or gguf"
        )


def _manifest_path(out: Path, fmt: str) -> Path:
    return out / MANIFEST if fmt in ("hf", "lora") else out.with_name(out.name + ".json")


def check_out(out: Path, fmt: str) -> None:
    """Refuse an existing output (export never overwrites) or manifest beside a file output."""
    for path in (out, _manifest_path(out, fmt)):
        if path.exists() or path.is_symlink():
            raise ValueError(f"--out {path} exists; export never overwrites: pass a new path (or remove it)")


def check_family(architecture: str | None, fmt: str, caveats: list[str], *, force: bool) -> None:
    """Refuse a family ``fmt`` does not support, or (unless ``force``) whose weight edit is not exact."""
    if fmt == "control-vector":
        return
    name = architecture or "this model"
    if not families.residual_writers(architecture):
        known = ", ".join(a for a, f in families.FAMILIES.items() if f.residual_writers)
        raise ValueError(f"--format {fmt}: export knows no residual-stream parameters of {name}; it exports {known}")
    record = families.family(architecture)
    if fmt == "gguf" and record is not None and not record.gguf_verified:
        why = record.gguf_refused or "its GGUF loading is not verified here"
        raise ValueError(f"--format gguf: {name} is refused for GGUF ({why}); use --format hf")
    if caveats and not force:
        raise ValueError(
            f"--format {fmt}: {name} is refused because weight orthogonalization is not exact on it ({caveats[0]}); "
            "pass --force to write it anyway with its measured difference from hook ablation"
        )


def check_folder_family(folder: Path, fmt: str, *, force: bool) -> None:
    """:func:`check_family` from a local folder's ``config.json`` alone, before any weight loads."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # the loader names what is wrong with the folder
    arch = (config.get("architectures") or [None])[0]
    record = families.family(arch)
    norm = record.norm if record is not None else "pre"
    caveats = [] if norm == "pre" else [f"{norm} norms re-scale each sublayer's write, putting r̂ back"]
    check_family(arch, fmt, caveats, force=force)


# --------------------------------------------------------------------------- the weight edit


def _pattern(writer: str) -> re.Pattern:
    return re.compile(re.escape(writer).replace(r"\*", r"\d+"))


def writer_params(hf, architecture: str | None) -> list[tuple[str, torch.nn.Parameter, int]]:
    """``(name, parameter, d_model axis)`` of every residual writer of ``hf`` (a transformers model);
    raises when a non-bias writer of the family record is missing from the checkpoint."""
    params = dict(hf.named_parameters(remove_duplicate=False))
    found = []
    for writer, axis in families.residual_writers(architecture):
        names = [n for n in params if _pattern(writer).fullmatch(n)]
        if not names and not writer.endswith(".bias"):
            raise ValueError(f"{architecture}: no parameter matches its residual writer {writer!r}; export refuses")
        found += [(n, params[n], axis) for n in names]
    return found


def _untie_unembedding(hf) -> bool:
    """Give a tied unembedding its own copy of the (unedited) embedding; whether it was tied."""
    out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out_emb is None or out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
        return False
    out_emb.weight = torch.nn.Parameter(in_emb.weight.detach().clone())
    hf.config.tie_word_embeddings = False
    if hasattr(hf.config, "get_text_config"):
        hf.config.get_text_config().tie_word_embeddings = False
    return True


def _project_out(p: Tensor, unit: Float[Tensor, " d_model"], axis: int) -> Tensor:
    """``p − r̂(r̂ᵀp)`` along ``axis`` (computed in float32 at least)."""
    q = p.detach().movedim(axis, -1).to(torch.promote_types(p.dtype, torch.float32))
    u = unit.to(q.device, q.dtype)
    return (q - (q @ u)[..., None] * u).movedim(-1, axis).to(p.dtype)


@torch.no_grad()
def orthogonalize_hf(hf, direction: Float[Tensor, " d_model"] | Direction) -> list[str]:
    """Edit ``hf`` (a transformers causal LM) in place: ``W ← W − r̂r̂ᵀW`` for every residual writer
    of its family (a tied unembedding untied first); returns the edited parameter names."""
    arch = (getattr(hf.config, "architectures", None) or [None])[0]
    unit = unit_vector(direction, hf.get_input_embeddings().weight.shape[-1])
    _untie_unembedding(hf)
    writers = writer_params(hf, arch)  # after untying: the embedding is its own parameter now
    for _, p, axis in writers:
        p.copy_(_project_out(p, unit, axis))
    return [n for n, _, _ in writers]


# --------------------------------------------------------------------------- checks against hook ablation


def _probe_tokens(vocab: int) -> Tensor:
    return torch.randint(0, vocab, _PROBE, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _gap(model, direction: Direction, logits_of: Callable[[Tensor], Tensor]) -> float:
    """max |Δlogit| between ``logits_of(tokens)`` and ``model`` (TL) under ``ablate:all`` hooks."""
    tokens = _probe_tokens(model.cfg.d_vocab)
    with model.hooks(fwd_hooks=ablation_hooks(model, direction, "all")):
        hooked = model(tokens).float()
    theirs = logits_of(tokens).float()
    # the Hugging Face model runs on the CPU, the TL model wherever it was loaded: compare on the CPU, once
    return float((theirs[..., : hooked.shape[-1]] - hooked.to(theirs.device)).abs().max())


def _checked_gap(model, direction: Direction, logits_of, caveats: list[str]) -> float:
    gap = _gap(model, direction, logits_of)
    if not caveats and model.cfg.dtype == torch.float32 and not gap <= _BUG_TOL:
        raise ValueError(
            f"the exported weights differ from hook ablation by {gap:.3g} in logits on a family where they should "
            "agree; nothing was written (please report this model's architecture)"
        )
    return gap


# --------------------------------------------------------------------------- sources


def _source_hf(spec: str):
    """The Hugging Face ``(model, tokenizer)`` of a model spec, in float32 on the CPU (a hub name: its
    snapshot in the Hugging Face cache, downloaded if missing, as ``load_model`` does)."""
    local = Path(spec).expanduser()
    if spec in EMBEDDED_MODELS or local.suffix == ".gguf" or local.is_dir():
        return load_hf(spec)
    from huggingface_hub import snapshot_download
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return load_hf_path(snapshot_download(get_official_model_name(spec)), dtype=torch.float32)


def _stored_dtype(hf) -> torch.dtype:
    """The dtype the source checkpoint stores (its config.json), float32 where it says none."""
    config = Path(getattr(hf, "name_or_path", "") or "/nonexistent") / "config.json"
    try:
        name = json.loads(config.read_text()).get("dtype") or json.loads(config.read_text()).get("torch_dtype")
    except (OSError, ValueError):
        name = None
    dtype = getattr(torch, str(name), None)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


# --------------------------------------------------------------------------- the formats


def _write_hf(model, direction: Direction, tmp: Path, caveats: list[str]) -> dict:
    """The edited Hugging Face folder in ``tmp``; returns its facts for the manifest."""
    hf, tok = _source_hf(model.workbench_name)
    stored = _stored_dtype(hf)
    edited = orthogonalize_hf(hf, direction)
    gap = _checked_gap(model, direction, lambda t: hf(input_ids=t).logits, caveats)
    hf.to(stored).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return {"edited_parameters": len(edited), "dtype": str(stored).removeprefix("torch."), "gap": gap}


def _lora_modules(hf, writers) -> tuple[str, bool]:
    """The regex of the modules the adapter targets and whether they are GPT-2 Conv1D (fan_in_fan_out);
    raises for what a rank-1 PEFT adapter cannot carry."""
    from transformers.pytorch_utils import Conv1D

    modules = dict(hf.named_modules())
    biases = [n for n, _, _ in writers if n.endswith(".bias")]
    if biases:
        raise ValueError(
            f"--format lora: this model's residual writers have biases ({biases[0]} ...); PEFT carries a bias change "
            "only as lora_bias, which it refuses on the embedding LoRA this edit also needs; use --format hf"
        )
    owners = [n.rsplit(".", 1)[0] for n, _, _ in writers]
    plain = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    odd = [o for o in owners if not isinstance(modules[o], plain)]
    if odd:
        raise ValueError(
            f"--format lora: {odd[0]} ({type(modules[odd[0]]).__name__}, e.g. fused MoE experts) is not a Linear, "
            "Conv1D or Embedding layer, which a rank-1 PEFT LoRA targets; use --format hf"
        )
    return "|".join(re.escape(o) for o in owners), any(isinstance(modules[o], Conv1D) for o in owners)


@torch.no_grad()
def _set_rank_one(peft_model, writers, unit: Tensor) -> None:
    """B = −r̂ and A = r̂ᵀW on each writer's LoRA (the embedding's: A = (E r̂)ᵀ, B = −r̂)."""
    modules = dict(peft_model.base_model.model.named_modules())
    for name, p, axis in writers:
        layer = modules[name.rsplit(".", 1)[0]]
        w = p.detach().movedim(axis, -1).float()  # [..., d_model]: rows are r̂ᵀ-projected below
        coeff = w @ unit.to(w.dtype)  # r̂ᵀW as a vector over the other axis
        if "default" in getattr(layer, "lora_embedding_A", {}):  # every LoRA layer has the (empty) dict
            layer.lora_embedding_A["default"].copy_(coeff[None, :])
            layer.lora_embedding_B["default"].copy_(-unit[:, None])
        else:
            layer.lora_A["default"].weight.copy_(coeff[None, :])
            layer.lora_B["default"].weight.copy_(-unit[:, None])


def _write_lora(model, direction: Direction, tmp: Path, caveats: list[str]) -> dict:
    """The rank-1 PEFT adapter in ``tmp`` for the unedited model; returns its facts."""
    from peft import LoraConfig, get_peft_model

    hf, _ = _source_hf(model.workbench_name)
    arch = (getattr(hf.config, "architectures", None) or [None])[0]
    writers = writer_params(hf, arch)
    target, conv1d = _lora_modules(hf, writers)
    config = LoraConfig(r=1, lora_alpha=1, target_modules=target, fan_in_fan_out=conv1d, lora_dropout=0.0)
    peft_model = get_peft_model(hf, config).eval()
    _set_rank_one(peft_model, writers, unit_vector(direction, model.cfg.d_model))
    gap = _checked_gap(model, direction, lambda t: peft_model(input_ids=t).logits, caveats)
    peft_model.save_pretrained(str(tmp), save_embedding_layers=False)  # the LoRA factors only, not E itself
    return {"edited_parameters": len(writers), "rank": 1, "dtype": "float32", "gap": gap}


def _gguf_module():
    """:mod:`workbench.gguf_export`, or a clear error where this build has none."""
    try:
        from . import gguf_export
    except ImportError as err:
        raise ValueError(f"GGUF export is not available in this build ({err}); use --format hf") from None
    return gguf_export


def _write_gguf(model, direction: Direction, out: Path, caveats: list[str], gguf_type: str) -> dict:
    """The edited model as one GGUF file at ``out``: the ``hf`` folder, converted, then moved in place."""
    gguf = _gguf_module()
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        facts = _write_hf(model, direction, work / "hf", caveats)
        gguf.write_model_gguf(work / "hf", work / out.name, outtype=gguf_type)
        os.replace(work / out.name, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**facts, "dtype": gguf_type, "gap_of": "the Hugging Face weights converted (before GGUF types)"}


def _write_control_vector(model, direction: Direction, value: Addition, out: Path) -> dict:
    """α·r at the addition's layers as a llama.cpp control vector at ``out``."""
    gguf = _gguf_module()
    n_layers = model.cfg.n_layers
    if value.layers is None and direction.layer is None:
        raise ValueError(f"--intervention {value}: the direction has no layer of its own; write add:ALPHA@LAYERS")
    own = [] if direction.layer is None else [direction.layer]
    layers = check_layers(list(value.layers) if value.layers is not None else own, n_layers)
    mapping = gguf.control_vector_layers(layers, n_layers)
    pairs = mapping.items() if isinstance(mapping, Mapping) else zip(layers, mapping)
    cpp_layers = {int(ours): int(theirs) for ours, theirs in pairs}
    vectors = {theirs: value.alpha * direction.vector for theirs in cpp_layers.values()}
    record = families.family(model.cfg.original_architecture)
    hint = (record.gguf if record is not None else None) or str(model.cfg.original_architecture)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        gguf.write_control_vector(vectors, tmp, model_hint=hint)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"alpha": value.alpha, "layers": layers, "llama_cpp_layers": cpp_layers, "model_hint": hint}


# --------------------------------------------------------------------------- the manifest and the entry point


def _direction_record(direction: Direction, provenance: dict | None) -> dict:
    unit = unit_vector(direction).contiguous()
    return {
        "site": direction.site,
        "layer": direction.layer,
        "pos": direction.pos,
        "method": direction.method,
        "train_prompt_hash": direction.prompt_hash,
        "norm": float(direction.vector.norm()),
        "unit_sha256_16": hashlib.sha256(unit.numpy().tobytes()).hexdigest()[:16],
        **(provenance or {}),
    }


def _manifest(model, direction: Direction, value: Intervention, fmt: str, caveats: list[str], facts: dict) -> dict:
    gap = facts.pop("gap", None)
    check = (
        {
            "max_abs_logit_diff_vs_hook_ablation": gap,
            "check": f"float32 logits on {_PROBE[0]}x{_PROBE[1]} random token ids (seed 0) against the workbench's "
            "ablate:all hooks" + (f", {facts.pop('gap_of')}" if "gap_of" in facts else ""),
        }
        if gap is not None
        else {}
    )
    return {
        "format": fmt,
        "intervention": str(value),
        "source": {
            "model": model.workbench_name,
            "key": getattr(model, "workbench_key", None),
            "architecture": model.cfg.original_architecture,
        },
        "direction": _direction_record(direction, facts.pop("provenance", None)),
        "exact": not caveats,
        "caveats": caveats,
        **check,
        **facts,
        "workbench_version": __version__,
    }


def _into_folder(out: Path, fill: Callable[[Path], dict], finish: Callable[[dict], dict]) -> dict:
    """``fill(tmp)`` a temporary folder beside ``out``, add the manifest, rename it to ``out``."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        manifest = finish(fill(tmp))
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export(
    model,
    direction: Direction,
    value: Intervention,
    fmt: str,
    out: str | Path,
    *,
    force: bool = False,
    gguf_type: str = "f32",
    provenance: dict | None = None,
) -> dict:
    """Export ``value`` on ``model`` (a ``load_model`` HookedTransformer; its Hugging Face weights are
    read again from ``model.workbench_name``) with ``direction`` as ``fmt`` to ``out``; returns the
    manifest (also written: in the folder, or beside the file as ``<out>.json``). ``provenance``:
    the direction's analysis record (:func:`workbench.provenance.direction_provenance`)."""
    out = Path(out).expanduser()
    check_intervention(value, fmt)
    check_out(out, fmt)
    if fmt == "gguf" and gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type {gguf_type!r} is not a GGUF type; choose one of {', '.join(GGUF_TYPES)}")
    caveats = orthogonalization_caveats(model.cfg) if fmt in _WEIGHT_FORMATS else []
    check_family(model.cfg.original_architecture, fmt, caveats, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)

    def finish(facts: dict) -> dict:
        return _manifest(model, direction, value, fmt, caveats, {**facts, "provenance": provenance})

    if fmt in ("hf", "lora"):
        write = _write_hf if fmt == "hf" else _write_lora
        return _into_folder(out, lambda tmp: write(model, direction, tmp, caveats), finish)
    if fmt == "gguf":
        manifest = finish({**_write_gguf(model, direction, out, caveats, gguf_type), "gguf_type": gguf_type})
    else:
        assert isinstance(value, Addition)
        manifest = finish(_write_control_vector(model, direction, value, out))
    try:
        atomic_write_text(_manifest_path(out, fmt), json.dumps(manifest, indent=2, sort_keys=True))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return manifest
