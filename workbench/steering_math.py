"""Pure steering math: directional ablation, activation addition and angular rotation.

Every function acts on the last axis of ``x: [..., d_model]``, so it takes ``[batch, pos, d]`` from
a hook, ``[n, d]`` from a cache, or a single ``[d]`` vector. The math runs in float32 (float64 stays
float64) and the result is cast back to ``x.dtype``. Each token costs at most two dot products: no
``d×d`` projector is ever built (at d=3584 that is 51 MB per hook).

Conventions (those of the angular-steering paper, Vu & Nguyen 2025):

- A *direction* is a ``[d_model]`` tensor or any object with a ``.vector`` tensor (``Direction``).
- A *plane* is a ``[2, d_model]`` orthonormal basis ``(b1, b2)`` or any object with ``.basis``
  (``Plane``). Angles are in degrees, 0° = b1, counter-clockwise toward b2.
- A per-row setting (an angle, a coefficient, a mask) is a float, a ``[batch]`` tensor (row ``i`` of
  ``x`` gets entry ``i``, broadcast over positions), or a :class:`PerRow`.
- An adaptive gate (``adaptive=``) is ``"off"``/False, ``"b1"``/True or ``"b2"`` (:func:`gate_mode`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from .sites import GATES

__all__ = [
    "PerRow",
    "GATES",
    "Adaptive",
    "gate_mode",
    "angle_settings",
    "check_finite",
    "as_vector",
    "unit_vector",
    "as_basis",
    "OnDevice",
    "ablate",
    "orthonormal_rows",
    "ablate_subspace",
    "add",
    "rotate",
    "rotate_by",
    "plane_angle",
    "per_token_plane_angle",
    "special_cases",
]

_BASIS_ATOL = 1e-3  # Gram-matrix tolerance (loosened to 4·eps for half-precision bases)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _detached_copy(t: Tensor, dtype: torch.dtype, device=None) -> Tensor:
    # Outside inference mode so tensors made under torch.inference_mode() (e.g. directions computed
    # from cached activations) can still be used by hooks in a forward that records gradients.
    with torch.inference_mode(False), torch.no_grad():
        return t.detach().to(device=device or t.device, dtype=dtype, copy=True)


def as_vector(direction, d_model: int | None = None, name: str = "direction") -> Float[Tensor, " d_model"]:
    """The raw ``[d_model]`` vector of ``direction`` (tensor or ``.vector``) as a float32/64 copy.

    Raises ValueError for a non-tensor, a wrong shape, a d_model mismatch, non-finite entries or a
    zero norm.
    """
    v = getattr(direction, "vector", direction)
    if not isinstance(v, Tensor):
        raise ValueError(
            f"{name} must be a [d_model] tensor or have a .vector tensor attribute; got {type(direction).__name__}"
        )
    if v.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D [d_model], got shape {tuple(v.shape)}; for one direction "
            "per batch row use candidate_sweep_hooks / addition_sweep_hooks"
        )
    if d_model is not None and v.shape[0] != d_model:
        raise ValueError(
            f"{name} has d_model={v.shape[0]} but the model has d_model={d_model}; "
            "was it extracted from a different model?"
        )
    v = _detached_copy(v, compute_dtype(v.dtype))
    if not torch.isfinite(v).all():
        raise ValueError(
            f"{name} has NaN/inf entries; recompute it (degenerate candidates, e.g. "
            "layer 0 or near-EOS positions, give NaN)"
        )
    if v.norm() == 0:
        raise ValueError(
            f"{name} has zero norm, so it defines no direction; pick another candidate "
            "(layer-0 mean differences are often exactly zero)"
        )
    return v


def unit_vector(direction, d_model: int | None = None, name: str = "direction") -> Float[Tensor, " d_model"]:
    """``r̂ = r/‖r‖`` (exact normalisation: zero norm raises instead of Arditi's ``+1e-8``)."""
    v = as_vector(direction, d_model, name)
    return v / v.norm()


def as_basis(plane, d_model: int | None = None) -> Float[Tensor, "2 d_model"]:
    """The ``[2, d_model]`` basis ``(b1, b2)`` of ``plane`` (tensor or ``.basis``), orthonormal.

    A basis whose Gram matrix is within ``max(1e-3, 4·eps(dtype))`` of the identity (bf16: 0.03) is
    re-orthonormalised (Gram–Schmidt in float64, keeping b1's direction) so the rotation preserves
    norms to rounding; a worse one raises ValueError.
    """
    b = getattr(plane, "basis", plane)
    if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[0] != 2:
        shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
        raise ValueError(f"plane must be a [2, d_model] tensor or have a .basis of that shape; got {shape}")
    if not b.is_floating_point():
        raise ValueError(f"plane basis must be floating point; got {b.dtype}")
    if d_model is not None and b.shape[1] != d_model:
        raise ValueError(f"plane has d_model={b.shape[1]} but the model has d_model={d_model}")
    b64 = _detached_copy(b, torch.float64)
    if not torch.isfinite(b64).all():
        raise ValueError("plane basis has NaN/inf entries (a degenerate b2 from Gram–Schmidt?)")
    err = (b64 @ b64.T - torch.eye(2, dtype=torch.float64, device=b64.device)).abs().max().item()
    if err > max(_BASIS_ATOL, 4 * torch.finfo(b.dtype).eps):
        raise ValueError(
            f"plane basis is not orthonormal (max |BBᵀ − I| = {err:.2e}); normalise b1 and "
            "Gram–Schmidt b2 against it (or build a Plane) before steering"
        )
    b1 = b64[0] / b64[0].norm()
    b2 = b64[1] - (b1 @ b64[1]) * b1
    return torch.stack([b1, b2 / b2.norm()]).to(compute_dtype(b.dtype))


class OnDevice:
    """A tensor and its copies per (device, dtype), each made once: hooks call :meth:`get` every
    forward pass, and the transfer/cast happens only on the first call for that device and dtype."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self._copies: dict[tuple, Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = _detached_copy(self.tensor, dtype, device)
        return self._copies[key]


class PerRow:
    """Settings that differ between batch rows, so K settings × N prompts run as one forward.

    ``values`` is ``[K]`` (angles, coefficients, 0/1 masks) or ``[K, d_model]`` (one vector per
    setting). With ``layout="rows"`` (default) K must equal the batch size and row ``i`` gets
    ``values[i]``. With ``layout="blocks"`` the batch is K consecutive blocks of ``N = batch/K``
    rows and block ``k`` gets ``values[k]``. Values are broadcast over positions, so the same object
    works for the prompt pass ``[batch, pos, d]`` and for KV-cached decode steps ``[batch, 1, d]``.
    """

    def __init__(self, values: Tensor | list, layout: str = "rows"):
        if layout not in ("rows", "blocks"):
            raise ValueError(f"unknown PerRow layout {layout!r}; use 'rows' or 'blocks'")
        values = torch.as_tensor(values)
        if values.ndim not in (1, 2) or values.shape[0] == 0:
            raise ValueError(f"per-row values must be [K] or [K, d_model] with K ≥ 1; got {tuple(values.shape)}")
        self.values, self.layout = values, layout
        self._copies: dict[tuple, Tensor] = {}

    def __len__(self) -> int:
        return self.values.shape[0]

    def get(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Values for activation ``x: [batch, ..., d]``, shaped ``[batch, 1.., (d)]`` to broadcast
        against ``x.shape[:-1]`` (scalars) or ``x`` (vectors)."""
        if x.ndim < 2:
            raise ValueError("per-row settings need a batch axis; x has shape " + str(tuple(x.shape)))
        batch, k = x.shape[0], len(self)
        if (self.layout == "rows" and batch != k) or (self.layout == "blocks" and batch % k):
            need = f"exactly {k} rows" if self.layout == "rows" else f"a multiple of {k} rows"
            raise ValueError(
                f"per-row setting has {k} entries ({self.layout} layout) but the batch has "
                f"{batch} rows; the batch needs {need} (one per setting, in order)"
            )
        dtype = dtype or self.values.dtype
        key = (x.device, dtype, batch, x.ndim)
        if key not in self._copies:
            v = _detached_copy(self.values, dtype, x.device).repeat_interleave(batch // k, dim=0)
            self._copies[key] = v.reshape(batch, *([1] * (x.ndim - 2)), *self.values.shape[1:])
        return self._copies[key]


def _setting(value, x: Tensor, dtype: torch.dtype) -> Tensor | float:
    """A float, or a per-row tensor/PerRow shaped to broadcast against ``x.shape[:-1]``."""
    if isinstance(value, (list, tuple)):
        value = torch.as_tensor(value)
    if isinstance(value, Tensor):
        value = float(value) if value.ndim == 0 else PerRow(value)
    return value.get(x, dtype) if isinstance(value, PerRow) else float(value)


def check_finite(value, name: str, hint: str = ""):
    """``value`` (a number, tensor, list or PerRow) unchanged, or a ValueError: a NaN or infinite
    angle or coefficient turns every activation into NaN, i.e. empty responses, not an error."""
    values = value.values if isinstance(value, PerRow) else torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite, got {value!r}{hint}")
    return value


def angle_settings(theta_deg) -> tuple:
    """``(cos θ, sin θ)`` as floats, or as PerRows with θ's layout, computed once in float64
    (so cos 90° is 6e-17, not fp32's −4e-8). Any finite angle is valid (taken mod 360)."""
    check_finite(theta_deg, "theta_deg", "; any finite angle in degrees works (taken mod 360)")
    if isinstance(theta_deg, Tensor) and theta_deg.ndim == 0:
        theta_deg = float(theta_deg)
    if isinstance(theta_deg, (int, float)):
        rad = math.radians(theta_deg)
        return math.cos(rad), math.sin(rad)
    per_row = theta_deg if isinstance(theta_deg, PerRow) else PerRow(theta_deg)
    if per_row.values.ndim != 1:
        raise ValueError(f"per-row angles must be [K]; got {tuple(per_row.values.shape)}")
    rads = torch.deg2rad(per_row.values.to(torch.float64))
    return PerRow(rads.cos(), per_row.layout), PerRow(rads.sin(), per_row.layout)


Adaptive = bool | str  # False/"off", True/"b1" or "b2"; checked at run time by gate_mode


def gate_mode(adaptive: Adaptive) -> str:
    """The adaptive gate as one of :data:`GATES`: ``False``/``"off"`` rotates every token;
    ``True``/``"b1"`` only tokens with ``b1ᵀh > 0`` (strict; the paper's AAS, reference mode 1);
    ``"b2"`` only tokens with ``b2ᵀh > 0`` (strict; the reference's exploratory mode 2).
    Raises ValueError for anything else."""
    if isinstance(adaptive, bool):
        return "b1" if adaptive else "off"
    if isinstance(adaptive, str) and adaptive in GATES:
        return adaptive
    raise ValueError(
        f"unknown adaptive gate {adaptive!r}; use False/'off' (every token), True/'b1' (tokens with "
        "b1ᵀh > 0, the paper's AAS) or 'b2' (tokens with b2ᵀh > 0)"
    )


# ----------------------------------------------------------------------------------------------
# Kernels: inputs already in the compute dtype and on x's device. Shared by functions and hooks.


def _ablate_kernel(xf: Tensor, u: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """``x − s·r̂(r̂ᵀx)``; ``u`` is ``[d]`` or per-row ``[batch, 1.., d]``; ``s`` masks rows (0/1)."""
    proj = xf @ u if u.ndim == 1 else (xf * u).sum(-1)
    return xf - (proj * scale)[..., None] * u


def _ablate_subspace_kernel(xf: Tensor, q: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """``x − s·Qᵀ(Qx)`` for orthonormal rows ``q: [k, d]`` (k dot products per token, no d×d matrix)."""
    return xf - ((xf @ q.T) * (scale[..., None] if isinstance(scale, Tensor) else scale)) @ q


def _plane_update(
    xf: Tensor,
    read: Tensor,
    write: Tensor,
    cos,
    sin,
    *,
    by: bool,
    gate: str,
    offset: Tensor | None = None,
) -> Tensor:
    """``x + k1·w1 + k2·w2`` where ``(k1, k2)`` rotate the plane coordinates ``c = R x (+ o)``.

    ``read`` (R) and ``write`` (w1, w2) are ``[2, d]``; both equal the basis for a plain rotation.
    For a post-gain rotation behind a norm ``y = g⊙x̂ + b`` they are ``B⊙g`` and ``B/g`` with
    ``o = Bb``, so the coordinates and the gate are those of y and ``g⊙x̂' + b = rotate(y)``.
    to θ: ``k1 = ρcosθ − c1, k2 = ρsinθ − c2`` with ``ρ = ‖c‖``.
    by δ: ``k1 = c1cosδ − c2sinδ − c1, k2 = c1sinδ + c2cosδ − c2``.
    Gate ``"b1"``/``"b2"``: only tokens with ``c1 > 0`` / ``c2 > 0`` (strict) change; the others are
    returned bit-identical (selected, not ``x + 0·w``, which would turn −0.0 into +0.0).
    """
    c = xf @ read.T  # [..., 2]
    if offset is not None:
        c = c + offset
    c1, c2 = c[..., 0], c[..., 1]
    if by:
        k1, k2 = c1 * cos - c2 * sin - c1, c1 * sin + c2 * cos - c2
    else:
        rho = torch.hypot(c1, c2)  # ρ = 0 ⇒ k = 0: untouched, no ε needed
        k1, k2 = rho * cos - c1, rho * sin - c2
    out = xf + k1[..., None] * write[0] + k2[..., None] * write[1]
    if gate == "off":
        return out
    on = (c1 if gate == "b1" else c2) > 0  # per token, strict
    return torch.where(on[..., None], out, xf)


def _rotate_kernel(xf: Tensor, basis: Tensor, cos, sin, *, by: bool = False, adaptive: Adaptive = "off") -> Tensor:
    """Rank-2 update ``x + k1·b1 + k2·b2`` in the plane of ``basis`` (two dot products per token);
    see :func:`_plane_update` for ``k`` and :func:`gate_mode` for ``adaptive``."""
    return _plane_update(xf, basis, basis, cos, sin, by=by, gate=gate_mode(adaptive))


def _post_gain_frame(basis: Tensor, gain: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``(read, write)`` stacked ``[4, d]`` and the offset ``[2]`` (None without a bias), in float64,
    that make :func:`_plane_update` on ``x̂`` rotate ``y = g⊙x̂ + b``: with ``c = (B⊙g)x̂ + Bb = By``
    and ``x̂' = x̂ + (k1 b1 + k2 b2)/g`` we get ``g⊙x̂' + b = y + k1 b1 + k2 b2``. ``gain`` must have no
    zero entry (checked by the caller, which can name the module)."""
    b64, g = basis.to(torch.float64), gain.to(torch.float64)
    frame = torch.cat([b64 * g, b64 / g])
    return frame, None if bias is None else b64 @ bias.to(torch.float64)


# ----------------------------------------------------------------------------------------------
# Public pure functions


def ablate(x: Float[Tensor, "... d_model"], r_hat) -> Float[Tensor, "... d_model"]:
    """Directional ablation ``x − r̂(r̂ᵀx)`` (``r_hat`` is normalised here, so any scale works)."""
    dt = compute_dtype(x.dtype)
    u = unit_vector(r_hat, x.shape[-1]).to(x.device, dt)
    return _ablate_kernel(x.to(dt), u).to(x.dtype)


def orthonormal_rows(vectors, d_model: int | None = None) -> Float[Tensor, "k d_model"]:
    """An orthonormal basis ``Q: [k, d_model]`` of the span of ``vectors`` (``[k, d_model]``, or an
    object with ``.basis`` such as a ``Plane``), by QR in float64, in the compute dtype of the input.
    Rows must be finite and linearly independent (else a ValueError: ablating a rank-deficient
    "k-dimensional" subspace would silently ablate fewer dimensions)."""
    v = getattr(vectors, "basis", vectors)
    if not isinstance(v, Tensor) or v.ndim != 2 or v.shape[0] == 0 or not v.is_floating_point():
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"a subspace needs [k, d_model] floating-point vectors with k ≥ 1; got {shape}")
    if d_model is not None and v.shape[1] != d_model:
        raise ValueError(f"subspace vectors have d_model={v.shape[1]} but the model has d_model={d_model}")
    v64 = _detached_copy(v, torch.float64)
    if not torch.isfinite(v64).all():
        raise ValueError("subspace vectors have NaN/inf entries; recompute them")
    q, r = torch.linalg.qr(v64.T)  # [d, k], [k, k]
    diag = r.diagonal().abs()
    if bool((diag <= 1e-6 * diag.max()).any()):
        raise ValueError(f"the {v.shape[0]} subspace vectors are linearly dependent; drop the redundant ones")
    return q.T.contiguous().to(compute_dtype(v.dtype))


def ablate_subspace(x: Float[Tensor, "... d_model"], vectors) -> Float[Tensor, "... d_model"]:
    """Ablation of a k-dimensional subspace, ``x − QᵀQx`` with ``Q`` an orthonormal basis of the span
    of ``vectors`` (:func:`orthonormal_rows`). With one vector it is :func:`ablate`; with a plane's
    basis it removes both b1 and b2 (every angle of the rotation's plane)."""
    dt = compute_dtype(x.dtype)
    q = orthonormal_rows(vectors, x.shape[-1]).to(x.device, dt)
    return _ablate_subspace_kernel(x.to(dt), q).to(x.dtype)


def add(x: Float[Tensor, "... d_model"], r, alpha=1.0) -> Float[Tensor, "... d_model"]:
    """Activation addition ``x + α r`` with the *raw* ``r`` (Arditi's actadd; its norm matters).
    ``alpha``: float or per-row ``[batch]`` tensor / :class:`PerRow`."""
    dt = compute_dtype(x.dtype)
    v = as_vector(r, x.shape[-1]).to(x.device, dt)
    a = _setting(alpha, x, dt)
    return (x.to(dt) + (a[..., None] if isinstance(a, Tensor) else a) * v).to(x.dtype)


def rotate(
    x: Float[Tensor, "... d_model"], basis, theta_deg, *, adaptive: Adaptive = "off"
) -> Float[Tensor, "... d_model"]:
    """Angular steering, "rotate TO θ" (Vu & Nguyen Eq. 2).

    With ``c1 = b1ᵀx``, ``c2 = b2ᵀx`` and ``ρ = √(c1² + c2²)``::

        x' = x + (ρ cosθ − c1) b1 + (ρ sinθ − c2) b2

    sets the in-plane angle to θ (0° = b1, counter-clockwise toward b2) while keeping ``ρ``, the
    orthogonal complement and hence ``‖x‖``. Idempotent; ``ρ = 0`` leaves x untouched; no θ is the
    identity ("0°" is not "off"). ``theta_deg``: float or per-row ``[batch]`` tensor / PerRow.
    ``adaptive``: ``"b1"`` (or True) rotates only tokens with ``b1ᵀx > 0``, ``"b2"`` only tokens
    with ``b2ᵀx > 0`` (strict, decided per token; the others come back bit-identical); ``"off"``
    (or False) rotates every token.
    """
    gate = gate_mode(adaptive)  # fail before any work
    dt = compute_dtype(x.dtype)
    b = as_basis(basis, x.shape[-1]).to(x.device, dt)
    cos, sin = (_setting(s, x, dt) for s in angle_settings(theta_deg))
    return _rotate_kernel(x.to(dt), b, cos, sin, adaptive=gate).to(x.dtype)


def rotate_by(
    x: Float[Tensor, "... d_model"], basis, delta_deg, *, adaptive: Adaptive = "off"
) -> Float[Tensor, "... d_model"]:
    """ "Rotate BY δ" (Selective Steering / AISteer360 "offset"): ``x' = x − Px + B R_δ Bᵀ x`` with
    ``R_δ`` the counter-clockwise 2×2 rotation. Linear in x; δ = 0 is exactly the identity.
    ``adaptive`` as in :func:`rotate`."""
    gate = gate_mode(adaptive)
    dt = compute_dtype(x.dtype)
    b = as_basis(basis, x.shape[-1]).to(x.device, dt)
    cos, sin = (_setting(s, x, dt) for s in angle_settings(delta_deg))
    return _rotate_kernel(x.to(dt), b, cos, sin, by=True, adaptive=gate).to(x.dtype)


def plane_angle(x: Float[Tensor, "... d_model"], basis) -> Float[Tensor, ...]:
    """The natural in-plane angle ``φ = atan2(b2ᵀx, b1ᵀx)`` of each token, in degrees [0, 360)."""
    dt = compute_dtype(x.dtype)
    c = x.to(dt) @ as_basis(basis, x.shape[-1]).to(x.device, dt).T
    return torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360.0


def _own_plane(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coordinates of x in its own plane ``Π_x = span(r̂, x)``: ``a = r̂ᵀx``, ``n⊥ = ‖x⊥‖`` and the
    in-plane unit vector ``û = x⊥/‖x⊥‖`` (0 where x ∥ r̂ and the plane is undefined)."""
    a = x @ u
    x_perp = x - a[..., None] * u
    n_perp = x_perp.norm(dim=-1)
    return a, n_perp, x_perp / n_perp.clamp_min(torch.finfo(x.dtype).tiny)[..., None]


def per_token_plane_angle(x: Float[Tensor, "... d_model"], r) -> Float[Tensor, ...]:
    """Angle of each token in its own plane ``span(r̂, x)``: ``φ = atan2(‖x⊥‖, r̂ᵀx)`` in degrees,
    in [0°, 180°] (0° = along r̂, 90° = orthogonal, 180° = along −r̂)."""
    dt = compute_dtype(x.dtype)
    a, n_perp, _ = _own_plane(x.to(dt), unit_vector(r, x.shape[-1]).to(x.device, dt))
    return torch.rad2deg(torch.atan2(n_perp, a))


def special_cases(x: Float[Tensor, "... d_model"], r, alphas) -> dict[str, Tensor]:
    """Show numerically that ablation and addition are rotations in each token's own plane.

    Derivation. Let ``r̂ = r/‖r‖``, ``a = r̂ᵀx``, ``x⊥ = x − a r̂``,
    ``n⊥ = ‖x⊥‖``, ``û = x⊥/n⊥``. In the token-dependent plane ``Π_x = span(r̂, û)`` x has coordinates
    ``(a, n⊥)`` and angle ``φ = atan2(n⊥, a) ∈ [0°, 180°]``.

    (a) Ablation: ``x − r̂r̂ᵀx = x⊥ = 0·r̂ + n⊥·û`` has coordinates ``(0, n⊥)``: angle exactly 90°
        in ``Π_x``, norm ``n⊥``. Rotating x TO 90° in ``Π_x`` (basis ``(r̂, û)``, ``ρ = ‖x‖``, since
        x lies entirely in ``Π_x``) gives ``‖x‖·û``; rescaled by ``n⊥/‖x‖`` that is ``n⊥û = x⊥``.
        So ablation = "rotate to 90°" up to a scale, which the next (scale-invariant) norm removes:
        a binary rotation with no strength knob.
    (b) Addition: ``x + αr = (a + α‖r‖)·r̂ + n⊥·û`` stays in ``Π_x`` (no out-of-plane part) with
        angle ``ψ(α) = atan2(n⊥, a + α‖r‖) ∈ (0°, 180°)`` for ``n⊥ > 0``, strictly decreasing in α
        and only *tending* to 0° (α→+∞) or 180° (α→−∞): a rotation by ``ψ − φ``, less than 180°
        in magnitude, that never crosses the r̂ axis. The norm becomes
        ``√(‖x‖² + 2α‖r‖a + α²‖r‖²)``; reaching angle θ needs ``α‖r‖ = n⊥ cotθ − a``, which
        depends on the token — hence the brittle coefficient.

    Computed in float64. ``x``: real activations ``[..., d_model]``; ``alphas``: ``[n_alpha]``.
    Returns per-token tensors (shape ``x.shape[:-1]``, or ``[n_alpha, ...]``):

    - ``angle_before``: φ; ``ablation_angle``: angle of ``ablate(x)`` in ``Π_x`` (90°);
    - ``ablation_residual``: ``‖ablate(x) − (n⊥/‖x‖)·rotate_Πx(x, 90°)‖`` (≈ 0);
    - ``alphas``; ``addition_angle``: ψ(α); ``addition_rotation``: ψ(α) − φ;
    - ``addition_residual``: norm of the part of ``x + αr`` outside ``Π_x`` (≈ 0);
    - ``addition_norm_ratio``: ``‖x + αr‖/‖x‖``.
    """
    x64 = x.detach().to(torch.float64)
    v = as_vector(r, x.shape[-1]).to(x.device, torch.float64)
    u = v / v.norm()
    a, n_perp, u_perp = _own_plane(x64, u)
    norm = x64.norm(dim=-1)
    abl = _ablate_kernel(x64, u)
    rot90 = x64 + (norm * 0.0 - a)[..., None] * u + (norm * 1.0 - n_perp)[..., None] * u_perp
    scale = n_perp / norm.clamp_min(torch.finfo(torch.float64).tiny)
    angle_before = torch.rad2deg(torch.atan2(n_perp, a))
    alphas = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)
    angles, offs, ratios = _addition_in_plane(x64, v, alphas, u, u_perp, norm)
    return {
        "angle_before": angle_before,
        "ablation_angle": _in_plane(abl, u, u_perp)[0],
        "ablation_residual": (abl - scale[..., None] * rot90).norm(dim=-1),
        "alphas": alphas,
        "addition_angle": angles,
        "addition_rotation": angles - angle_before,
        "addition_residual": offs,
        "addition_norm_ratio": ratios,
    }


def _in_plane(y: Tensor, u: Tensor, u_perp: Tensor) -> tuple[Tensor, Tensor]:
    """Angle (degrees) of ``y`` ``[..., d]`` in ``span(u, u_perp)`` and the norm of its part outside
    that plane, both ``[...]`` (``u``: ``[d]``, ``u_perp``: ``[..., d]``, orthonormal per token)."""
    p1, p2 = y @ u, (y * u_perp).sum(-1)
    off = (y - p1[..., None] * u - p2[..., None] * u_perp).norm(dim=-1)
    return torch.rad2deg(torch.atan2(p2, p1)), off


def _addition_in_plane(
    x64: Tensor, v: Tensor, alphas: Tensor, u: Tensor, u_perp: Tensor, norm: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """For each α of ``alphas`` ``[n_alpha]``, ``y = x64 + α·v``: its angle in ``Π_x``, its norm
    outside ``Π_x`` and ``‖y‖/‖x‖`` (``norm`` = ``‖x‖``), each stacked to ``[n_alpha, ...]``."""
    angles, offs, ratios = [], [], []
    for alpha in alphas.tolist():  # a loop keeps memory at one copy of x
        y = x64 + alpha * v
        ang, off = _in_plane(y, u, u_perp)
        angles.append(ang)
        offs.append(off)
        ratios.append(y.norm(dim=-1) / norm)
    return torch.stack(angles), torch.stack(offs), torch.stack(ratios)
