"""The intervention as a value: one frozen object per setting, one spec string, one registry.

::

    x = parse("rotate:200:b1")              # Rotation(angle=200.0, gate="b1")
    str(x)                                  # "rotate:200:b1"; parse(str(x)) == x for every value
    hooks = x.hooks(model, direction, plane)  # [(TransformerLens hook name, fn), ...]
    with model.hooks(fwd_hooks=hooks):
        ...
    x.label, x.color, x.exactness(model)    # what figures show; whether it is exact on this model

Each kind is one frozen dataclass registered in :data:`KINDS` under its spec word. The CLI's
``--intervention``, notebook 04's panel, the experiments' conditions, ``workbench models``'
exactness table and the figures' names and colours all read from here, so a new kind is one class
in this module (its math in :mod:`workbench.steering_math`), with nothing to edit elsewhere.

Spec grammar: ``KIND[:ARG...][@LAYERS]``; ``LAYERS`` is one block index (negative counts from the
end), a range ``LO-HI`` (inclusive) or a list ``A,B,C``. The hook factories themselves live in
:mod:`workbench.interventions`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from .sites import GATES, LOCATIONS, ROTATION_SITES

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Intervention", "KINDS", "register", "parse", "spec_help", "from_settings", "exactness_table"]

Hook = tuple[str, Callable[[Any, Any], Any]]  # (hook name, fn(activation, hook) -> activation)
Layers = tuple[int, ...] | None
_GATE_WORDS = {"adaptive": "b1", **{g: g for g in GATES}}


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad intervention {spec!r}; {why}")


def _number(text: str, what: str, spec: str) -> float:
    """A finite float, or an error naming the spec and the field (NaN/inf turn activations into NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--intervention {spec!r}: {what} {text!r} is not a number; use {spec_help()}") from None
    if not math.isfinite(value):
        raise ValueError(f"--intervention {spec!r}: {what} must be a finite number, got {text!r}")
    return value


def _num(x: float) -> str:
    """The shortest text that reads back as exactly ``x`` (``1`` for 1.0, ``0.1`` for 0.1)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _parse_layers(text: str, spec: str) -> tuple[int, ...]:
    if re.fullmatch(r"\d+-\d+", text):
        lo, hi = (int(t) for t in text.split("-"))
        if lo > hi:
            raise ValueError(f"--intervention {spec!r}: layer range {text} is reversed; write {hi}-{lo}")
        return tuple(range(lo, hi + 1))
    if re.fullmatch(r"-?\d+(,-?\d+)*", text):
        return tuple(int(t) for t in text.split(","))
    raise ValueError(
        f"--intervention {spec!r}: layer {text!r} after @ must be a block index, e.g. add:1@9 "
        "(or a range LO-HI, or a list A,B,C)"
    )


def _format_layers(layers: Layers) -> str:
    if layers is None:
        return ""
    ls = list(layers)
    contiguous = len(ls) > 1 and min(ls) >= 0 and ls == list(range(ls[0], ls[0] + len(ls)))
    return "@" + (f"{ls[0]}-{ls[-1]}" if contiguous else ",".join(map(str, ls)))


# torch and the hook factories load on first use: `workbench --help` and spec checks answer at once.
def _iv():
    from . import interventions

    return interventions


def _sm():
    from . import steering_math

    return steering_math


def _probes(model) -> tuple[Tensor, Tensor]:
    """A unit direction and an orthonormal plane on the model's device, for checking that hooks build."""
    import torch

    plane = torch.eye(2, model.cfg.d_model, device=model.cfg.device)
    return plane[0], plane


@dataclass(frozen=True)
class Intervention:
    """One intervention with all its settings. Subclasses set the class attributes and override
    :meth:`_args` / :meth:`_from_args` (the spec), :meth:`hooks`, and where needed :meth:`edit`."""

    kind: ClassVar[str] = ""
    syntax: ClassVar[str] = ""  # the spec's form, for help texts
    needs: ClassVar[tuple[str, ...]] = ()  # "direction" and/or "plane": what hooks() reads
    palette: ClassVar[str] = "#2c3e50"  # its colour in figures (a kind may vary it by setting: color)
    takes_layers: ClassVar[bool] = False  # whether "@LAYERS" is allowed

    # --- the spec string
    def _args(self) -> list[str]:
        return []

    @classmethod
    def _from_args(cls, args: list[str], spec: str) -> Intervention:
        if args:
            raise _bad(spec, f"{cls.kind} takes no arguments; use {spec_help()}")
        return cls()

    def __str__(self) -> str:
        return ":".join([self.kind, *self._args()]) + _format_layers(getattr(self, "layers", None))

    @property
    def _layer_list(self) -> list[int] | None:
        """The kind's ``layers`` as the hook factories take them (None: every block, or none set)."""
        layers = getattr(self, "layers", None)
        return None if layers is None else list(layers)

    # --- what it shows and does
    @property
    def label(self) -> str:
        """A short human name (figure axes, legends, panel titles)."""
        return str(self)

    @property
    def color(self) -> str:
        """Its colour in figures."""
        return self.palette

    def params(self, direction=None) -> dict:
        """The settings as JSON-ready fields (``workbench generate --json``)."""
        return {}

    def hooks(self, model, direction=None, plane=None, rows: Tensor | None = None) -> list[Hook]:
        """TransformerLens ``(hook name, fn)`` pairs. ``rows``: a ``[batch]`` bool mask; rows
        where it is False pass through bit-identical (so several values compose in one batch)."""
        return []

    def edit(self, model, direction=None, plane=None):
        """The model this intervention runs on: ``model`` itself, or an edited copy (weight edits)."""
        return model

    def exactness(self, model) -> tuple[bool, str]:
        """``(exact, why)``: whether this intervention does exactly what it says on ``model``."""
        return True, "no change"

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        """The rows this kind contributes to ``workbench models``' exactness table."""
        return {}

    @classmethod
    def from_settings(cls, settings: dict) -> Intervention:
        """A value from a panel's widget settings (``location``, ``alpha``, ``angle``, ``gate``)."""
        return cls()

    def _checked_hooks(self, model) -> tuple[bool, str | None]:
        """Whether the hook factories accept ``model`` (their own checks), and their refusal."""
        direction, plane = _probes(model)
        try:
            self.hooks(self.edit(model, direction, plane), direction, plane)
        except ValueError as err:
            return False, str(err)
        return True, None


KINDS: dict[str, type[Intervention]] = {}


def register(cls: type[Intervention]) -> type[Intervention]:
    """Add a kind to :data:`KINDS` under its spec word (a class decorator)."""
    if not cls.kind or cls.kind in KINDS:
        raise ValueError(f"intervention kind {cls.kind!r} is empty or registered twice")
    KINDS[cls.kind] = cls
    return cls


def spec_help() -> str:
    """Every kind's spec form, for help texts and errors."""
    return ", ".join(cls.syntax for cls in KINDS.values())


def parse(spec: str | Intervention) -> Intervention:
    """The value a spec string names (a value is returned as is); a ValueError names what is wrong."""
    if isinstance(spec, Intervention):
        return spec
    body, at, layer_text = spec.strip().partition("@")
    word, *args = body.split(":")
    cls = KINDS.get(word)
    if cls is None:
        raise _bad(spec, f"use {spec_help()}")
    if at and not cls.takes_layers:
        raise _bad(spec, f"{word} takes no @LAYERS; use {cls.syntax}")
    value = cls._from_args(args, spec)
    return replace(value, layers=_parse_layers(layer_text, spec)) if at else value  # type: ignore[call-arg]


def from_settings(kind: str, settings: dict) -> Intervention:
    """The value of kind ``kind`` for a panel's settings (notebook 04)."""
    if kind not in KINDS:
        raise ValueError(f"unknown intervention kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind].from_settings(settings)


def exactness_table(model) -> dict[str, dict]:
    """``{row: {"exact": bool, "why": str}}`` over every kind's report examples (``workbench models``)."""
    out = {}
    for cls in KINDS.values():
        for name, value in cls.report_examples().items():
            exact, why = value.exactness(model)
            out[name] = {"exact": exact, "why": why}
    return out


def _mask(rows: Tensor | None):
    import torch

    return None if rows is None else torch.as_tensor(rows).bool()


# ---------------------------------------------------------------------------------------------- kinds


@register
@dataclass(frozen=True)
class NoIntervention(Intervention):
    """The unsteered model (the control of every comparison)."""

    kind: ClassVar[str] = "none"
    syntax: ClassVar[str] = "none"
    palette: ClassVar[str] = "#7f8c8d"

    @property
    def label(self) -> str:
        return "none"


_LOCATION_NAMES = {"all": "everywhere", "resid": "resid only", "attn": "attn out only", "mlp": "MLP out only"}
_LOCATION_COLORS = {"all": "#8e44ad", "resid": "#2e86c1", "attn": "#28b463", "mlp": "#d68910"}


def _location(args: list[str], spec: str, kind: str) -> str:
    if len(args) != 1 or args[0] not in LOCATIONS:
        raise _bad(spec, f"{kind} takes one location, {'|'.join(LOCATIONS)}; use {spec_help()}")
    return args[0]


def _layers_suffix(layers: Layers) -> str:
    return "" if layers is None else f" (L{_format_layers(layers)[1:]})"


@dataclass(frozen=True)
class _AtLocation(Intervention):
    """A kind that writes the ablation locations' hook points (:func:`workbench.interventions.
    location_hook_names`) over ``layers`` (None = every block): its spec is ``KIND:LOCATION[@LAYERS]``."""

    location: str = "all"
    layers: Layers = None
    takes_layers: ClassVar[bool] = True

    def _args(self) -> list[str]:
        return [self.location]

    @classmethod
    def _from_args(cls, args: list[str], spec: str) -> Intervention:
        return cls(_location(args, spec, cls.kind))

    @classmethod
    def from_settings(cls, settings: dict) -> Intervention:
        return cls(settings.get("location", "all"))


@register
@dataclass(frozen=True)
class Ablation(_AtLocation):
    """Directional ablation ``x ← x − r̂r̂ᵀx`` at a location (see
    :func:`workbench.interventions.location_hook_names`) over ``layers`` (None = every block)."""

    kind: ClassVar[str] = "ablate"
    syntax: ClassVar[str] = "ablate:all|resid|attn|mlp[@LAYERS]"
    needs: ClassVar[tuple[str, ...]] = ("direction",)

    @property
    def label(self) -> str:
        return _LOCATION_NAMES[self.location] + _layers_suffix(self.layers)

    @property
    def color(self) -> str:
        return _LOCATION_COLORS[self.location]

    def params(self, direction=None) -> dict:
        return {"location": self.location, "layer": getattr(direction, "layer", None)}

    def hooks(self, model, direction=None, plane=None, rows=None) -> list[Hook]:
        return _iv().ablation_hooks(model, direction, self.location, self._layer_list, row_mask=_mask(rows))

    def exactness(self, model) -> tuple[bool, str]:
        ok, err = self._checked_hooks(model)
        return ok, err or (
            "hooks remove r̂ from the activations themselves (resid_pre, attn_out, mlp_out), position-free, "
            "so cached and uncached runs agree"
        )

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        return {"ablation": cls("all")}


def _own_layer(direction) -> int:
    layer = getattr(direction, "layer", None)
    if layer is None:
        raise ValueError("addition at the direction's own layer needs a Direction with .layer; write add:ALPHA@LAYER")
    return int(layer)


@register
@dataclass(frozen=True)
class Addition(Intervention):
    """Activation addition ``x ← x + α r`` (raw r) at ``hook_resid_pre`` of ``layers`` (None = the
    direction's own layer, Arditi et al.'s actadd)."""

    alpha: float = 1.0
    layers: Layers = None
    kind: ClassVar[str] = "add"
    syntax: ClassVar[str] = "add[:ALPHA][@LAYERS]"
    needs: ClassVar[tuple[str, ...]] = ("direction",)
    palette: ClassVar[str] = "#c0392b"
    takes_layers: ClassVar[bool] = True

    def _args(self) -> list[str]:
        return [_num(self.alpha)]

    @classmethod
    def _from_args(cls, args: list[str], spec: str) -> Intervention:
        if len(args) > 1:
            raise _bad(spec, f"add takes one coefficient; use {cls.syntax}")
        return cls(_number(args[0], "alpha", spec) if args else 1.0)

    @property
    def label(self) -> str:
        if self.alpha == 1.0 and self.layers is None:
            return "addition (+αr)"
        return f"addition ({_num(self.alpha)}·r){_layers_suffix(self.layers)}"

    def _layers(self, direction) -> list[int]:
        return list(self.layers) if self.layers is not None else [_own_layer(direction)]

    def params(self, direction=None) -> dict:
        layers = self._layers(direction)
        return {"alpha": self.alpha, **({"layer": layers[0]} if len(layers) == 1 else {"layers": layers})}

    def hooks(self, model, direction=None, plane=None, rows=None) -> list[Hook]:
        mask = _mask(rows)
        alpha = self.alpha if mask is None else mask.float() * self.alpha
        return _iv().addition_hooks(direction, alpha=alpha, layers=self._layers(direction), model=model)

    def exactness(self, model) -> tuple[bool, str]:
        ok, err = replace(self, layers=(0,))._checked_hooks(model)
        return ok, err or "hooks add αr to hook_resid_pre, position-free"

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        return {"addition": cls()}

    @classmethod
    def from_settings(cls, settings: dict) -> Intervention:
        return cls(float(settings.get("alpha", 1.0)))


_ROTATION_WHY = {
    "post_gain": "rotates the norm outputs g⊙x̂ (+ b) that attention and the MLP read, exactly up to rounding",
    "pre_gain": "rotates TL's hook_normalized x̂ (before the gain); angles differ from post_gain by the gain",
    "resid": "rotates hook_resid_pre; the edit persists into later layers",
}


@register
@dataclass(frozen=True)
class Rotation(Intervention):
    """Angular steering: rotate to ``angle`` degrees (``mode="by"``: by it) in the plane, at
    ``site`` (None: post_gain, or the run config's ``rotation_site`` in the CLI), only tokens the
    ``gate`` lets through (see :func:`workbench.interventions.rotation_hooks`)."""

    angle: float = 0.0
    gate: str = "off"
    site: str | None = None
    mode: str = "to"
    layers: Layers = None
    kind: ClassVar[str] = "rotate"
    syntax: ClassVar[str] = "rotate:ANGLE[:adaptive|b1|b2][:post_gain|pre_gain|resid][:by][@LAYERS]"
    needs: ClassVar[tuple[str, ...]] = ("plane",)
    palette: ClassVar[str] = "#16a085"
    takes_layers: ClassVar[bool] = True

    def _args(self) -> list[str]:
        extra = [self.gate] if self.gate != "off" else []
        extra += [self.site] if self.site is not None else []
        return [_num(self.angle), *extra, *(["by"] if self.mode == "by" else [])]

    @classmethod
    def _from_args(cls, args: list[str], spec: str) -> Intervention:
        if not args or not args[0]:
            raise _bad(spec, f"rotate needs an angle; use {cls.syntax}")
        settings: dict = {"angle": _number(args[0], "angle", spec)}
        for word in args[1:]:
            field = (
                "gate"
                if word in _GATE_WORDS
                else "site"
                if word in ROTATION_SITES
                else "mode"
                if word == "by"
                else None
            )
            if field is None or field in settings:
                raise ValueError(
                    f"--intervention {spec!r}: rotate takes ':adaptive' (= ':b1'), ':b2', a site "
                    f"(':{'|'.join(ROTATION_SITES)}') or ':by' after the angle, each once; got {word!r}"
                )
            settings[field] = _GATE_WORDS.get(word, word)
        return cls(**settings)

    @property
    def label(self) -> str:
        gate = "" if self.gate == "off" else f", gate {self.gate}"
        return f"rotate {self.mode} {_num(self.angle)}°{gate}{_layers_suffix(self.layers)}"

    @property
    def _site(self) -> str:
        return self.site or "post_gain"

    def params(self, direction=None) -> dict:
        return {"angle": self.angle, "adaptive": self.gate, "site": self._site, "mode": self.mode}

    def hooks(self, model, direction=None, plane=None, rows=None) -> list[Hook]:
        if rows is not None:
            raise ValueError("rotation takes per-row angles (rotation_hooks with a [batch] theta), not a row mask")
        return _iv().rotation_hooks(
            model, plane, self.angle, site=self._site, adaptive=self.gate, layers=self._layer_list, mode=self.mode
        )

    def exactness(self, model) -> tuple[bool, str]:
        ok, err = replace(self, angle=45.0)._checked_hooks(model)
        why = _ROTATION_WHY[self._site]
        if ok and model.cfg.use_normalization_before_and_after and self._site != "resid":
            why += (
                "; sandwich norms: TL's ln2 is HF's pre_feedforward_layernorm, so the MLP input is rotated "
                "(the reference hooks HF's post_attention_layernorm, TL's ln1_post)"
            )
        return ok, err or why

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        return {f"rotation_{site}": cls(45.0, site=site) for site in ROTATION_SITES}

    @classmethod
    def from_settings(cls, settings: dict) -> Intervention:
        return cls(float(settings.get("angle", 0.0)), gate=settings.get("gate", "off"))


@register
@dataclass(frozen=True)
class Orthogonalization(Intervention):
    """Directional ablation baked into the weights, ``W′ = (I − r̂r̂ᵀ)W`` for every residual write
    (:func:`workbench.interventions.orthogonalize_weights`): an edited copy of the model, no hooks."""

    kind: ClassVar[str] = "orthogonalize"
    syntax: ClassVar[str] = "orthogonalize"
    needs: ClassVar[tuple[str, ...]] = ("direction",)
    palette: ClassVar[str] = "#6c3483"

    @property
    def label(self) -> str:
        return "orthogonalized weights"

    def edit(self, model, direction=None, plane=None):
        import warnings

        with warnings.catch_warnings():  # exactness() says why it is not exact; the copy is still useful
            warnings.simplefilter("ignore")
            return _iv().orthogonalize_weights(model, direction)

    def hooks(self, model, direction=None, plane=None, rows=None) -> list[Hook]:
        if rows is not None:
            raise ValueError("orthogonalized weights act on every row; run them as a model of their own")
        return []

    def exactness(self, model) -> tuple[bool, str]:
        caveats = _iv().orthogonalization_caveats(model.cfg)
        return not caveats, "; ".join(caveats) or (
            "every sublayer writes linearly into the residual stream, so W′ = (I − r̂r̂ᵀ)W equals hook "
            "ablation at 'all' (a W_U tied to W_E is untied first)"
        )

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        return {"weight_orthogonalization": cls()}


@register
@dataclass(frozen=True)
class PlaneAblation(_AtLocation):
    """Ablation of the steering plane, a 2-dimensional subspace: ``x ← x − QᵀQx`` with ``Q`` the
    plane's orthonormal basis (b1, b2), at a location over ``layers`` as :class:`Ablation` (the same
    hook points). It removes the refusal direction and the axis perpendicular to it at once."""

    kind: ClassVar[str] = "ablate-plane"
    syntax: ClassVar[str] = "ablate-plane:all|resid|attn|mlp[@LAYERS]"
    needs: ClassVar[tuple[str, ...]] = ("plane",)
    palette: ClassVar[str] = "#1f618d"

    @property
    def label(self) -> str:
        return f"plane ablated, {_LOCATION_NAMES[self.location]}{_layers_suffix(self.layers)}"

    def params(self, direction=None) -> dict:
        return {"location": self.location, "k": 2}

    def hooks(self, model, direction=None, plane=None, rows=None) -> list[Hook]:
        sm, hooks_of = _sm(), _iv()
        q = sm.OnDevice(sm.orthonormal_rows(plane, model.cfg.d_model))
        mask = None if rows is None else sm.PerRow(_mask(rows).float())

        def fn(x, hook=None):
            dt = sm.compute_dtype(x.dtype)
            scale = 1.0 if mask is None else mask.get(x, dt)
            return sm._ablate_subspace_kernel(x.to(dt), q.get(x.device, dt), scale).to(x.dtype)

        names = hooks_of.location_hook_names(model.cfg.n_layers, self.location, self._layer_list)
        return hooks_of._checked(model, [(name, fn) for name in names])

    def exactness(self, model) -> tuple[bool, str]:
        ok, err = self._checked_hooks(model)
        return ok, err or "hooks remove span(b1, b2) from the activations themselves, position-free"

    @classmethod
    def report_examples(cls) -> dict[str, Intervention]:
        return {"ablation_plane": cls("all")}
