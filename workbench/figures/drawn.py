"""A figure as its PNG draws it, and when two such figures draw the same.

A committed PNG must not be rewritten because another CPU rounds floats differently (~1e-6 relative
after a forward pass): its bytes would change, and a newcomer's ``git status`` would not be clean.
So the PNG stores :func:`spec` (the figure's JSON without hover text, every array's numbers as
integers of 10⁻⁵ of its largest magnitude) and a later save compares with :func:`same`: equal text
and structure, and every number within 1/1000 of its array's largest magnitude, far below a pixel of
a plot and far above float noise. Exact equality of a rounded hash would not do: some of a figure's
thousand values always sit within float noise of a rounding boundary.
"""

from __future__ import annotations

import base64
import json
import math
import zlib

import numpy as np
import plotly
import plotly.graph_objects as go

__all__ = ["spec", "same", "encode", "decode", "TOLERANCE"]

TOLERANCE = 1e-3  # of an array's largest magnitude: sub-pixel (a plot spans ~400-1000 px), ≫ float noise
_DIGITS = 5  # stored: integers of 10^(⌊log10 max|v|⌋ − 5)
_HOVER_ONLY = frozenset({"hovertext", "hovertemplate", "hoverinfo", "hoverlabel"})  # never drawn in a PNG
_NUM = "__numbers__"  # a node of numbers: [exponent, [integer, None or "nan"/"inf", ...]]


def _numbers(values: list) -> dict:
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    exp = math.floor(math.log10(top)) - _DIGITS if top > 0 else 0
    return {
        _NUM: [
            exp,
            [None if v is None else round(v / 10.0**exp) if math.isfinite(v) else str(float(v)) for v in values],
        ]
    }


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(node):
    if isinstance(node, dict) and "bdata" in node and "dtype" in node:  # plotly's base64 typed array
        node = np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"]).tolist()
    if isinstance(node, dict):
        return {k: _shown(v) for k, v in node.items() if k not in _HOVER_ONLY}
    if isinstance(node, list):
        if any(_is_number(v) for v in node) and all(v is None or _is_number(v) for v in node):
            return _numbers(node)
        return [_shown(v) for v in node]
    if isinstance(node, float):
        return _numbers([node])
    return node


def spec(fig: go.Figure, opts: dict) -> dict:
    """What the PNG of ``fig`` exported with ``opts`` draws: the figure's JSON with hover-only fields
    dropped and numbers as :data:`_NUM` nodes, the export options and the plotly version."""
    return {"figure": _shown(json.loads(fig.to_json())), "opts": opts, "plotly": plotly.__version__}


def _values(node: dict) -> list[float | None]:
    """The numbers of a :data:`_NUM` node as floats (NaN and ±inf included) or None."""
    exp, values = node[_NUM]
    return [v * 10.0**exp if isinstance(v, int) else None if v is None else float(v) for v in values]


def _same_number(x: float | None, y: float | None, tol: float) -> bool:
    if x is None or y is None:
        return x is y
    if math.isfinite(x) and math.isfinite(y):
        return abs(x - y) <= tol
    return x == y or (math.isnan(x) and math.isnan(y))  # non-finite only equals itself


def _same_numbers(a: dict, b: dict) -> bool:
    va, vb = _values(a), _values(b)
    if len(va) != len(vb):
        return False
    tol = TOLERANCE * max((abs(v) for v in va + vb if v is not None and math.isfinite(v)), default=0.0)
    return all(_same_number(x, y, tol) for x, y in zip(va, vb))


def same(a, b) -> bool:
    """Whether two :func:`spec` values draw the same figure: equal structure and text, and every
    number within :data:`TOLERANCE` of its array's largest magnitude."""
    if isinstance(a, dict) and isinstance(b, dict):
        if _NUM in a and _NUM in b:
            return _same_numbers(a, b)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def encode(value: dict) -> str:
    """``value`` as ASCII text for a PNG tEXt chunk (JSON, zlib, base64)."""
    return base64.b64encode(
        zlib.compress(json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), 9)
    ).decode()


def decode(text: str | None) -> dict | None:
    """The value :func:`encode` wrote, or None for no text or text it did not write."""
    if not text:
        return None
    try:
        value = json.loads(zlib.decompress(base64.b64decode(text)))
    except (ValueError, zlib.error):
        return None
    return value if isinstance(value, dict) else None
