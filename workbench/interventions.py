"""Interventions on the refusal direction: ablation, addition, angular rotation, weight edits.

Every hook factory returns ``list[tuple[str, Callable]]`` of plain closures
``fn(activation, hook) -> activation``, so any number compose under one context::

    with model.hooks(fwd_hooks=ablation_hooks(model, r) + rotation_hooks(model, plane, 200.0)):
        model.generate(...)

Hooks are position-free (KV-cached decode steps see ``[batch, 1, d_model]``), compute in float32
and cast back, and move their direction to the activation's device/dtype once (``OnDevice``).
Per-row settings (a ``[batch]`` tensor or a :class:`PerRow`) let K settings × N prompts run as one
forward; see :func:`location_sweep_hooks`, :func:`candidate_sweep_hooks`, :func:`addition_sweep_hooks`.
The pure math lives in :mod:`workbench.steering_math` and is re-exported here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .families import norm_placement
from .sites import GATES, LOCATIONS, ROTATION_SITES, check_hook_names, check_layers, check_site, hook_name
from .steering_math import (
    Adaptive,
    OnDevice,
    PerRow,
    _ablate_kernel,
    _plane_update,
    _post_gain_frame,
    _setting,
    ablate,
    add,
    angle_settings,
    as_basis,
    as_vector,
    check_finite,
    compute_dtype,
    gate_mode,
    per_token_plane_angle,
    plane_angle,
    rotate,
    rotate_by,
    special_cases,
    unit_vector,
)

__all__ = [
    "layer_subsets",
    "PerRow",
    "ablate",
    "add",
    "rotate",
    "rotate_by",
    "plane_angle",
    "per_token_plane_angle",
    "special_cases",
    "LOCATIONS",
    "first_k",
    "last_k",
    "window",
    "location_hook_names",
    "ablation_hooks",
    "addition_hooks",
    "rotation_hooks",
    "ROTATION_SITES",
    "GATES",
    "gate_mode",
    "location_sweep_hooks",
    "candidate_sweep_hooks",
    "addition_sweep_hooks",
    "orthogonalize_weights",
    "orthogonalization_caveats",
]

Hook = tuple[str, Callable[[Tensor, Any], Tensor]]
_SITE_ALIASES = {"normalized": "pre_gain"}  # deprecated spelling


# ----------------------------------------------------------------------------------------------
# Layer selections and hook names


def first_k(n_layers: int, k: int) -> list[int]:
    """The first ``k`` layers ``[0, k)``."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"k={k} must be in 1..{n_layers}")
    return list(range(k))


def last_k(n_layers: int, k: int) -> list[int]:
    """The last ``k`` layers ``[n_layers − k, n_layers)``."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"k={k} must be in 1..{n_layers}")
    return list(range(n_layers - k, n_layers))


def window(start: int, stop: int) -> list[int]:
    """Layers ``[start, stop)`` (checked against the model by the hook factories)."""
    if not 0 <= start < stop:
        raise ValueError(f"window({start}, {stop}) is empty or negative; need 0 ≤ start < stop")
    return list(range(start, stop))


def layer_subsets(n_layers: int, sizes: Sequence[int]) -> dict[str, list[int]]:
    """Named layer subsets for a sweep: for each size k < ``n_layers``, the first k, the last k and
    the middle k blocks (``first:k``, ``last:k``, ``window:a-b``), then every block (``all:n``)."""
    out = {}
    for k in sizes:
        if k >= n_layers:
            continue
        out[f"first:{k}"] = first_k(n_layers, k)
        out[f"last:{k}"] = last_k(n_layers, k)
        start = (n_layers - k) // 2
        out[f"window:{start}-{start + k - 1}"] = window(start, start + k)
    out[f"all:{n_layers}"] = list(range(n_layers))
    return out


def _cfg(model_or_cfg):
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    if not (hasattr(cfg, "n_layers") and hasattr(cfg, "d_model")):
        raise ValueError(f"expected a HookedTransformer or its cfg; got {type(model_or_cfg).__name__}")
    return cfg


def _checked(model_or_cfg, hooks: list[Hook]) -> list[Hook]:
    """Validate the names against the model when we have one (a bare cfg has no hook_dict)."""
    if hasattr(model_or_cfg, "hook_dict"):
        check_hook_names(model_or_cfg, [name for name, _ in hooks])
    return hooks


def location_hook_names(n_layers: int, location: str, layers=None) -> list[str]:
    """Hook names that ablation at ``location`` writes, over ``layers`` (None = all).

    - ``all``: ``hook_resid_pre`` + ``hook_attn_out`` + ``hook_mlp_out`` of every chosen block
      (Arditi et al.; with all layers the final residual is a sum of ablated terms, so ⊥ r̂).
    - ``resid``: ``hook_resid_pre`` of every chosen block, plus ``blocks.{L−1}.hook_resid_post`` so
      the unembedding never reads r̂ ("the residual stream only"). The final ``resid_post`` is added
      only when layer ``L−1`` is chosen: with a strict subset that stops early, the ablation is a
      local edit and later layers may write r̂ back.
    - ``attn`` / ``mlp``: only ``hook_attn_out`` / ``hook_mlp_out``: a decomposition experiment, not
      an ablation of the feature (the embedding and the other sublayer still write r̂).
    - ``none``: no hooks (a control block in :func:`location_sweep_hooks`).
    """
    if location not in LOCATIONS + ("none",):
        raise ValueError(
            f"unknown location {location!r}; choose one of {', '.join(LOCATIONS)} (or 'none' in a location sweep)"
        )
    chosen = check_layers(layers, n_layers)
    sites = {
        "all": ["resid_pre", "attn_out", "mlp_out"],
        "resid": ["resid_pre"],
        "attn": ["attn_out"],
        "mlp": ["mlp_out"],
        "none": [],
    }[location]
    names = [hook_name(site, layer) for layer in chosen for site in sites]
    if location == "resid" and chosen[-1] == n_layers - 1:
        names.append(hook_name("resid_post", n_layers - 1))
    return names


# ----------------------------------------------------------------------------------------------
# Hook closures


def _check_width(x: Tensor, d_model: int, name: str) -> None:
    if x.shape[-1] != d_model:
        raise ValueError(
            f"hook {name}: activation has last dim {x.shape[-1]}, direction has "
            f"{d_model}; this hook point is not [.., d_model]"
        )


def _ablation_fn(unit: OnDevice | PerRow, rows: PerRow | None = None) -> Callable:
    """``x − m_row·r̂(r̂ᵀx)``: ``unit`` is one r̂ or per-row r̂'s, ``rows`` an optional 0/1 mask."""
    d_model = unit.values.shape[-1] if isinstance(unit, PerRow) else unit.tensor.shape[-1]

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        _check_width(x, d_model, getattr(hook, "name", "?"))
        dt = compute_dtype(x.dtype)
        u = unit.get(x, dt) if isinstance(unit, PerRow) else unit.get(x.device, dt)
        scale = 1.0 if rows is None else rows.get(x, dt)  # masked-out rows: x − 0·r̂ == x exactly
        return _ablate_kernel(x.to(dt), u, scale).to(x.dtype)

    return hook


def _addition_fn(vector: OnDevice | PerRow, alpha) -> Callable:
    """``x + α r`` with one raw r or per-row r's; α a float, or per row (0 = untouched row)."""
    d_model = vector.values.shape[-1] if isinstance(vector, PerRow) else vector.tensor.shape[-1]

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        _check_width(x, d_model, getattr(hook, "name", "?"))
        dt = compute_dtype(x.dtype)
        r = vector.get(x, dt) if isinstance(vector, PerRow) else vector.get(x.device, dt)
        a = _setting(alpha, x, dt)
        return (x.to(dt) + (a[..., None] if isinstance(a, Tensor) else a) * r).to(x.dtype)

    return hook


def _rotation_fn(frame: OnDevice, angles: tuple, by: bool, gate: str, offset: OnDevice | None = None) -> Callable:
    """Rotate to/by the angle whose ``(cos, sin)`` are ``angles``. ``frame`` is the ``[2, d]`` basis
    (rotate the hooked tensor itself) or ``[4, d]`` post-gain ``(B⊙g; B/g)`` with ``offset = Bb``
    (rotate the norm's output ``g⊙x̂ + b`` through its input x̂; see ``steering_math._post_gain_frame``)."""
    cos_s, sin_s = angles
    d_model = frame.tensor.shape[-1]

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        _check_width(x, d_model, getattr(hook, "name", "?"))
        dt = compute_dtype(x.dtype)
        cos, sin = _setting(cos_s, x, dt), _setting(sin_s, x, dt)
        f = frame.get(x.device, dt)
        read, write = (f, f) if f.shape[0] == 2 else (f[:2], f[2:])
        o = None if offset is None else offset.get(x.device, dt)
        return _plane_update(x.to(dt), read, write, cos, sin, by=by, gate=gate, offset=o).to(x.dtype)

    return hook


def _norm_frame(model, layer: int, ln: str, basis: Tensor) -> tuple[OnDevice, OnDevice | None]:
    """The post-gain frame of ``model.blocks[layer].<ln>`` (its gain ``w`` and bias ``b`` as TL
    stores them, read now). A norm without a gain (LNPre/RMSNormPre: folded weights) is g = 1, b = 0,
    which is the pre-gain rotation."""
    module = getattr(model.blocks[layer], ln)
    name = f"blocks.{layer}.{ln}"
    gain, bias = getattr(module, "w", None), getattr(module, "b", None)
    if not isinstance(gain, Tensor):
        return OnDevice(basis), None
    if gain.shape != basis.shape[-1:]:
        raise ValueError(f"{name}.w has shape {tuple(gain.shape)}, expected [{basis.shape[-1]}] (d_model)")
    n_zero = int((gain == 0).sum())
    if n_zero:
        raise ValueError(
            f"{name}.w has {n_zero} zero entries (of {gain.numel()}): site='post_gain' maps the rotation "
            "back through 1/g, and those channels carry nothing to rotate; use site='pre_gain' "
            f"(rotate {name}.hook_normalized, x/RMS(x), directly)"
        )
    if not torch.isfinite(gain).all() or (isinstance(bias, Tensor) and not torch.isfinite(bias).all()):
        raise ValueError(f"{name} has NaN/inf gain or bias entries; the model's weights are broken")
    frame, offset = _post_gain_frame(basis, gain.detach(), bias.detach() if isinstance(bias, Tensor) else None)
    return OnDevice(frame), None if offset is None else OnDevice(offset)


def _row_mask(row_mask) -> PerRow | None:
    if row_mask is None or isinstance(row_mask, PerRow):
        return row_mask
    mask = torch.as_tensor(row_mask)
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise ValueError(f"row_mask must be a 1-D bool tensor [batch]; got {mask.dtype} {tuple(mask.shape)}")
    return PerRow(mask.float())


# ----------------------------------------------------------------------------------------------
# Hook factories


def ablation_hooks(
    model_or_cfg,
    direction,
    location: str = "all",
    layers=None,
    *,
    row_mask: Bool[Tensor, " batch"] | PerRow | None = None,
) -> list[Hook]:
    """Directional ablation ``x ← x − r̂r̂ᵀx`` at ``location`` (see :func:`location_hook_names`)
    over ``layers`` (None = all; or ``first_k``/``last_k``/``window``/any list), every position.

    ``row_mask``: ablate only the rows where it is True (others pass through bit-identical).
    """
    cfg = _cfg(model_or_cfg)
    unit = OnDevice(unit_vector(direction, cfg.d_model))
    fn = _ablation_fn(unit, _row_mask(row_mask))
    return _checked(model_or_cfg, [(n, fn) for n in location_hook_names(cfg.n_layers, location, layers)])


def addition_hooks(
    direction, alpha=1.0, layers: int | list[int] | None = None, site: str = "resid_pre", *, model=None
) -> list[Hook]:
    """Activation addition ``x ← x + α r`` (raw r, Arditi's actadd) at ``site`` of each layer in
    ``layers``, every position. ``alpha``: float or per-row ``[batch]`` tensor / PerRow.

    Pass ``model`` (or its cfg) to check layers, d_model and hook names; without it the negative
    layer indices cannot be resolved and must not be used.
    """
    check_site(site)
    if layers is None:
        raise ValueError("addition needs explicit layers (Arditi: the direction's own layer l*), e.g. layers=[l]")
    if model is not None:
        cfg = _cfg(model)
        layers = check_layers(layers, cfg.n_layers)
        vector = as_vector(direction, cfg.d_model)
    else:
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not layers or min(layers) < 0:
            raise ValueError(f"layers={layers}: pass model= to use negative indices; need ≥ 1 layer")
        vector = as_vector(direction)
    check_finite(alpha, "alpha")
    if isinstance(alpha, Tensor) and alpha.ndim > 0:
        alpha = PerRow(alpha)  # one device cache shared by all hooks
    fn = _addition_fn(OnDevice(vector), alpha)
    hooks = [(hook_name(site, layer), fn) for layer in sorted(set(layers))]
    return _checked(model, hooks) if model is not None else hooks


def _norm_hooks(model_or_cfg, chosen: list[int], basis, angles: tuple, site: str, by: bool, gate: str) -> list[Hook]:
    """Rotation hooks on the norm outputs of the chosen blocks (``site`` post_gain or pre_gain).

    The points are ``blocks.{l}.ln1.hook_normalized`` (layers ≥ 1, like the reference) and
    ``blocks.{l}.ln2.hook_normalized`` (every chosen layer): 2L − 1 with all layers. TL 3.9 calls
    ``ln1`` three times per layer (the q, k and v inputs, even without ``use_split_qkv_input``), so
    ln1's hook fires thrice with identical results; the fast attention path replaces only the
    attention after ln1, so the hooks act the same on it. Gemma-2 (sandwich norms): TL's ``ln2`` is
    HF's ``pre_feedforward_layernorm`` (the MLP input); the reference instead hooks HF's
    ``post_attention_layernorm``, which normalises the attention *output* (TL's ``ln1_post``).
    """
    cfg = _cfg(model_or_cfg)
    if norm_placement(cfg) == "post":
        raise ValueError(
            f"{cfg.original_architecture} is post-norm: ln1/ln2 normalise sublayer outputs, not inputs; "
            "use site='resid'"
        )
    points = [(layer, ln) for layer in chosen for ln in ("ln1", "ln2") if not (layer == 0 and ln == "ln1")]
    if not points:
        raise ValueError(f"layers=[0] with site={site!r} leaves only the MLP input; choose more layers")
    names = [f"blocks.{layer}.{ln}.hook_normalized" for layer, ln in points]
    if site == "pre_gain":
        fn = _rotation_fn(OnDevice(basis), angles, by, gate)
        return _checked(model_or_cfg, [(n, fn) for n in names])
    if not hasattr(model_or_cfg, "blocks"):
        raise ValueError(
            "site='post_gain' needs the model, not its cfg: the norm gains g (and LayerNorm biases) it "
            "rotates through live in model.blocks[l].ln1/ln2; pass the HookedTransformer, or use "
            "site='pre_gain' to rotate TL's hook_normalized (pre-gain x/RMS(x))"
        )
    hooks = []
    for name, (layer, ln) in zip(names, points):
        frame, offset = _norm_frame(model_or_cfg, layer, ln, basis)
        hooks.append((name, _rotation_fn(frame, angles, by, gate, offset)))
    return _checked(model_or_cfg, hooks)


def rotation_hooks(
    model_or_cfg,
    plane,
    theta_deg,
    *,
    site: str = "post_gain",
    adaptive: Adaptive = "off",
    layers=None,
    mode: str = "to",
) -> list[Hook]:
    """Angular steering: rotate TO θ (``mode="by"``: by θ) in ``plane`` at every chosen layer.

    Sites (``theta_deg``: degrees, a float or a per-row ``[batch]`` tensor / PerRow):

    - ``"post_gain"`` (default; the angular-steering study): the *outputs* of the norms feeding
      attention and the MLP, ``y = g⊙x̂ (+ b)`` with ``x̂ = x/RMS(x)`` (LayerNorm: centred ``x/σ``),
      i.e. what attention and the MLP read (HF's ``input_layernorm`` / ``post_attention_layernorm``
      outputs on Llama/Qwen), hooked at ln1/ln2 ``hook_normalized`` (:func:`_norm_hooks`). TL's
      hook sees the pre-gain x̂, so each hook returns ``x̂' = x̂ + Δ/g`` with ``Δ = k1 b1 + k2 b2``
      computed on y's coordinates ``c = By`` (O(d) per token), so that ``g⊙x̂' + b = rotate(y)`` up
      to float rounding. g and b are read from ``model.blocks[l].ln1.w`` / ``.b`` (ln2 likewise)
      when the hooks are built (rebuild them after editing those); a norm without a gain
      (LNPre/RMSNormPre) counts as g = 1, b = 0. Needs the model; a zero gain entry raises.
    - ``"pre_gain"``: the same hook points, rotating TL's ``hook_normalized`` itself (the pre-gain
      ``x̂``): angles agree with post_gain only up to the gain. ``"normalized"``: a deprecated alias.
    - ``"resid"``: ``hook_resid_pre`` of every chosen block (norm-preserving, but it writes the
      residual stream itself, so each edit persists into later layers).

    ``adaptive``: ``"off"``/False rotates every token; ``"b1"``/True only tokens with ``b1ᵀh > 0``
    (the paper's AAS), ``"b2"`` only tokens with ``b2ᵀh > 0``: strict, per token and per hook, on
    the rotated vector h (post_gain: y); gated-off tokens pass through bit-identical.
    """
    cfg = _cfg(model_or_cfg)
    if mode not in ("to", "by"):
        raise ValueError(f"unknown rotation mode {mode!r}; use 'to' (absolute angle) or 'by' (offset)")
    gate = gate_mode(adaptive)
    site = _SITE_ALIASES.get(site, site)
    if site not in ROTATION_SITES:
        raise ValueError(
            f"unknown rotation site {site!r}; use 'post_gain' (norm outputs, the study), 'pre_gain' "
            "(TL's hook_normalized) or 'resid' (hook_resid_pre)"
        )
    chosen = check_layers(layers, cfg.n_layers)
    basis = as_basis(plane, cfg.d_model)
    if isinstance(theta_deg, Tensor) and theta_deg.ndim > 0:
        theta_deg = PerRow(theta_deg)
    angles = angle_settings(theta_deg)  # one PerRow device cache shared by every hook
    if site == "resid":
        fn = _rotation_fn(OnDevice(basis), angles, mode == "by", gate)
        return _checked(model_or_cfg, [(hook_name("resid_pre", layer), fn) for layer in chosen])
    return _norm_hooks(model_or_cfg, chosen, basis, angles, site, mode == "by", gate)


def location_sweep_hooks(model_or_cfg, direction, locations: list[str], layers=None) -> list[Hook]:
    """Ablation at several locations in ONE forward. The batch is ``len(locations)`` consecutive
    blocks of N rows (same prompts in each block); block k is ablated at ``locations[k]``
    (``"none"`` = unsteered control). Each hook ablates only the rows whose location includes it,
    so row block k equals a separate run with ``ablation_hooks(..., locations[k])``.
    """
    cfg = _cfg(model_or_cfg)
    if not locations:
        raise ValueError("locations is empty; e.g. ['none', 'all', 'resid', 'attn', 'mlp']")
    per_loc = [set(location_hook_names(cfg.n_layers, loc, layers)) for loc in locations]
    unit = OnDevice(unit_vector(direction, cfg.d_model))
    hooks = []
    for name in sorted(set().union(*per_loc), key=lambda n: (int(n.split(".")[1]), n)):
        flags = torch.tensor([float(name in s) for s in per_loc])
        hooks.append((name, _ablation_fn(unit, PerRow(flags, layout="blocks"))))
    return _checked(model_or_cfg, hooks)


def _row_vectors(directions, d_model: int, name: str) -> Float[Tensor, "k d_model"]:
    vectors = getattr(directions, "vector", directions)
    if isinstance(vectors, (list, tuple)):
        vectors = torch.stack([as_vector(v, d_model, f"{name}[{i}]") for i, v in enumerate(vectors)])
    if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[1] != d_model:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"{name} must be [batch, d_model={d_model}]; got {shape}")
    vectors = vectors.detach().to(compute_dtype(vectors.dtype))
    norms = vectors.norm(dim=-1)
    bad = torch.nonzero(~torch.isfinite(norms) | (norms == 0)).flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} rows {bad[:10]} have zero or non-finite norm; drop those candidates (e.g. layer 0) before sweeping"
        )
    return vectors


def candidate_sweep_hooks(
    model_or_cfg,
    directions: Float[Tensor, "batch d_model"],
    location: str = "all",
    layers=None,
    *,
    layout: str = "rows",
) -> list[Hook]:
    """Ablation with a DIFFERENT r̂ per row, to score many candidate directions in one forward.

    ``directions[i]`` is ablated from row i (``layout="rows"``), or from block i of N consecutive
    rows (``layout="blocks"``, batch = K·N). Each row is normalised here.
    """
    cfg = _cfg(model_or_cfg)
    vectors = _row_vectors(directions, cfg.d_model, "directions")
    fn = _ablation_fn(PerRow(vectors / vectors.norm(dim=-1, keepdim=True), layout))
    return _checked(model_or_cfg, [(n, fn) for n in location_hook_names(cfg.n_layers, location, layers)])


def addition_sweep_hooks(
    model_or_cfg,
    directions: Float[Tensor, "batch d_model"],
    layers: Int[Tensor, " batch"] | list[int],
    alpha=1.0,
    site: str = "resid_pre",
    *,
    layout: str = "rows",
) -> list[Hook]:
    """Per-row activation addition ``x + α_i r_i`` at row i's own layer ``layers[i]`` (raw r_i).

    One hook per distinct layer; at layer l, rows whose layer differs get ``+0·r`` (unchanged).
    ``alpha``: float or ``[batch]`` tensor; ``layout`` as in :func:`candidate_sweep_hooks`.
    """
    cfg = _cfg(model_or_cfg)
    check_site(site)
    vectors = _row_vectors(directions, cfg.d_model, "directions")
    row_layers = torch.as_tensor(layers).reshape(-1)
    alphas = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if len(row_layers) != len(vectors) or len(alphas) not in (1, len(vectors)):
        raise ValueError(
            f"{len(vectors)} directions need as many layers (got {len(row_layers)}) and "
            f"alphas (got {len(alphas)}; or one float)"
        )
    row_layers = torch.tensor([check_layers(int(layer), cfg.n_layers)[0] for layer in row_layers])
    shared = PerRow(vectors, layout)
    hooks = [
        (hook_name(site, layer), _addition_fn(shared, PerRow(alphas * (row_layers == layer), layout)))
        for layer in sorted(set(row_layers.tolist()))
    ]
    return _checked(model_or_cfg, hooks)


# ----------------------------------------------------------------------------------------------
# Weight orthogonalization

_WRITES = ("W_O", "b_O", "W_out", "b_out")  # per-block parameters that write the residual stream
# TL's MoE experts are nn.Linear modules: ``experts.{e}.W_out.weight`` is [d_model, d_mlp] (out, in)
_LINEAR_WRITES = ("W_out.weight", "W_out.bias")


def _residual_writes(block) -> list[Tensor]:
    """The parameters of ``block`` that write the residual stream, each viewed as ``[..., d_model]``
    (a Linear weight transposed: a view, so editing it edits the parameter)."""
    out = []
    for n, p in block.named_parameters():
        if n.split(".")[0] not in ("attn", "mlp"):
            continue
        if n.split(".")[-1] in _WRITES:
            out.append(p)
        elif n.endswith(_LINEAR_WRITES):
            out.append(p.T if p.ndim == 2 else p)
    return out


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def orthogonalization_caveats(cfg) -> list[str]:
    """Why :func:`orthogonalize_weights` is NOT exactly equivalent to hook ablation at ``all`` for
    a model with this cfg (empty: equivalent); it warns each one."""
    caveats = []
    if norm_placement(cfg) != "pre":
        caveats.append(
            "this model normalises sublayer outputs before the residual add (sandwich/post "
            "norm); the gain re-introduces r̂, so orthogonalized weights are NOT exactly "
            "equivalent to hook ablation"
        )
    if cfg.post_embedding_ln:
        caveats.append("post-embedding LayerNorm re-introduces r̂ after W_E; not exactly equivalent")
    return caveats


def orthogonalize_weights(model, direction, *, inplace: bool = False):
    """A copy of ``model`` with ``W′ = W − r̂r̂ᵀW`` (along d_model) for every residual write.

    Edited in place on the copy's real parameters (not the stacked ``model.W_O`` copies):
    ``embed.W_E``, ``pos_embed.W_pos`` (absolute positions only; shortformer adds it to q/k, not the
    stream), every ``blocks[l].attn.W_O``/``b_O`` and ``blocks[l].mlp.W_out``/``b_out`` (MoE experts
    included). W_O is per query head, so GQA needs nothing more; ``_W_K``/``_W_V`` only read.

    Why this equals ablation at ``all`` (Arditi et al. App. E): with P = r̂r̂ᵀ, both models start
    the stream at (I−P)e. If the streams agree before a sublayer, it reads the same input (norms
    included) and computes the same c; ablation adds (I−P)c and the edited weights write
    W′h + b′ = (I−P)(Wh + b) = (I−P)c, so they still agree, and the final residual is ⊥ r̂. This
    needs linear writes straight into the stream: it breaks with a norm after the sublayer (Gemma-2
    sandwich norms, OLMo-2 post-norm: warned) or after the embedding (BLOOM: warned), and with an
    unembedding tied to W_E (HookedTransformer keeps W_U separate; a tied one is cloned here).

    ``inplace=True`` edits ``model`` itself (saves a copy of the weights on big models). Raises if
    hooks are attached, since a deep copy would carry them.
    """
    cfg = model.cfg
    unit = unit_vector(direction, cfg.d_model)
    if any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values()):
        raise ValueError(
            "model has hooks attached; call orthogonalize_weights outside "
            "`with model.hooks(...)` (or model.reset_hooks(including_permanent=True))"
        )
    for caveat in orthogonalization_caveats(cfg):
        warnings.warn(caveat, stacklevel=2)
    out = model if inplace else copy.deepcopy(model)
    if _shares_storage(out.unembed.W_U, out.embed.W_E):
        warnings.warn("W_U shares storage with W_E; untying it so the unembedding is unchanged", stacklevel=2)
        out.unembed.W_U = torch.nn.Parameter(out.unembed.W_U.detach().clone())
    params = [out.embed.W_E] + ([out.pos_embed.W_pos] if cfg.positional_embedding_type == "standard" else [])
    params += [p for block in out.blocks for p in _residual_writes(block)]
    with torch.no_grad():
        for p in params:
            if p.shape[-1] != cfg.d_model:
                raise ValueError(f"parameter of shape {tuple(p.shape)} does not end in d_model")
            u = unit.to(p.device, compute_dtype(p.dtype))
            pf = p.to(u.dtype)
            p.copy_(pf - (pf @ u)[..., None] * u)  # rows along d_model: one dot each
    assert not _shares_storage(out.unembed.W_U, out.embed.W_E), "W_U must stay unshared"
    return out
