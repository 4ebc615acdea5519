"""Uncertainty: the Wilson score interval of a proportion and seeded bootstrap intervals of means
and differences. Pure functions of numbers (no torch, no model), so every floor can use them.

* :func:`wilson_interval` -- the 95 % interval of a rate ``k / n`` (closed form; exact bounds 0 and
  1 at ``k = 0`` and ``k = n``, never outside [0, 1], unlike the normal approximation);
* :func:`bootstrap_ci` -- the percentile interval of a statistic (default: the mean) over ``B``
  seeded resamples of one sample; :func:`bootstrap_diff_ci` -- of ``mean(a) − mean(b)`` over
  paired resamples (same index for both) or independent ones;
* :func:`paired_difference_interval` -- Newcombe's hybrid score interval of the difference of two
  proportions measured on the same items (1998, method 10: the two Wilson intervals, combined with
  the pairs' correlation), closed form; :func:`paired_rate_difference` -- from two 0/1 sequences;
* :func:`format_rate` -- ``0.963 [0.87, 0.99] (n=54)``, how tables and the figure index print a rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

__all__ = [
    "wilson_interval",
    "wilson_half_width",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "paired_difference_interval",
    "paired_rate_difference",
    "format_rate",
]

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval ``(lo, hi)`` of a proportion with ``k`` successes out of ``n``.

    With p = k/n: centre (p + z²/2n) / (1 + z²/n), half-width z·√(p(1−p)/n + z²/4n²) / (1 + z²/n).
    ``k`` may be fractional (a rate times n). ``n = 0`` raises: no prompts, no interval.
    """
    if isinstance(n, bool) or n != int(n) or n < 1:
        raise ValueError(f"wilson_interval needs n ≥ 1 trials, got n={n!r}; a rate over no prompts has no interval")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 ≤ k ≤ n, got k={k!r}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_half_width(n: int, p: float = 0.5, z: float = Z95) -> float:
    """Half the width of the Wilson interval of a rate ``p`` measured on ``n`` prompts."""
    lo, hi = wilson_interval(p * n, n, z)
    return (hi - lo) / 2


def _percentiles(stats: list[float], level: float) -> tuple[float, float]:
    stats = sorted(stats)
    tail = (1 - level) / 2

    def at(q: float) -> float:  # linear interpolation between order statistics (numpy's default)
        x = q * (len(stats) - 1)
        i = math.floor(x)
        j = min(i + 1, len(stats) - 1)
        return stats[i] + (stats[j] - stats[i]) * (x - i)

    return at(tail), at(1 - tail)


def _check(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} is empty; a bootstrap interval needs at least one value")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} holds NaN or inf; drop or fix those values first")
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[list[float]], float] = _mean,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default the mean) over ``values``: ``n_resamples``
    resamples with replacement drawn by ``random.Random(seed)``, so the same seed gives the same
    interval on every machine. One value gives ``(v, v)``."""
    xs = _check(values, "values")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples ≥ 1 and 0 < level < 1, got {n_resamples}, {level}")
    rng = random.Random(seed)
    n = len(xs)
    stats = [statistic([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(n_resamples)]
    return _percentiles(stats, level)


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool = True,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) − mean(b)``. ``paired`` (default): ``a[i]`` and
    ``b[i]`` are the same item under two conditions and are resampled together (needs equal lengths);
    otherwise each sample is resampled on its own."""
    xa, xb = _check(a, "a"), _check(b, "b")
    if paired:
        if len(xa) != len(xb):
            raise ValueError(f"paired samples need equal lengths, got {len(xa)} and {len(xb)}; pass paired=False")
        return bootstrap_ci([x - y for x, y in zip(xa, xb)], n_resamples=n_resamples, level=level, seed=seed)
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples ≥ 1 and 0 < level < 1, got {n_resamples}, {level}")
    rng = random.Random(seed)
    stats = []
    for _ in range(n_resamples):
        ra = [xa[rng.randrange(len(xa))] for _ in xa]
        rb = [xb[rng.randrange(len(xb))] for _ in xb]
        stats.append(_mean(ra) - _mean(rb))
    return _percentiles(stats, level)


def paired_difference_interval(
    both: int, first_only: int, second_only: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval ``(lo, hi)`` of ``p1 − p2`` for a paired 2×2 table
    (Newcombe 1998, Stat. Med. 17:2635, method 10): items counted by outcome under condition 1 and
    condition 2 (``both`` = 1 under both, ``first_only`` = 1 under the first only, ...), so
    ``p1 = (both + first_only) / n`` and ``p2 = (both + second_only) / n``.

    With Wilson intervals (l1, u1) of p1 and (l2, u2) of p2 and the correlation estimate φ:
    lo = d − √((p1 − l1)² − 2φ(p1 − l1)(u2 − p2) + (u2 − p2)²), hi likewise with (p2 − l2) and
    (u1 − p1). φ = (ad − bc − n/2)/√(product of the four margins) when ad − bc > n/2, (ad − bc)/√…
    when negative, 0 otherwise or when a margin is 0. Unlike a bootstrap, it stays informative when
    a rate is 0 or 1 (e.g. every prompt refused before, none after). Clipped to [−1, 1].
    """
    cells = (both, first_only, second_only, neither)
    if any(isinstance(c, bool) or c != int(c) or c < 0 for c in cells) or sum(cells) < 1:
        raise ValueError(f"paired_difference_interval needs non-negative integer counts, at least one item: {cells}")
    n = sum(cells)
    k1, k2 = both + first_only, both + second_only
    p1, p2 = k1 / n, k2 / n
    (l1, u1), (l2, u2) = wilson_interval(k1, n, z), wilson_interval(k2, n, z)
    margins = k1 * (n - k1) * k2 * (n - k2)
    cross = both * neither - first_only * second_only
    phi = 0.0
    if margins > 0 and cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif margins > 0 and cross < 0:
        phi = cross / math.sqrt(margins)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def paired_rate_difference(first: Sequence[bool], second: Sequence[bool]) -> tuple[float, tuple[float, float]]:
    """``(rate(first) − rate(second), its 95 % interval)`` for two 0/1 outcomes of the same items
    (``first[i]``, ``second[i]``: item i under each condition), by :func:`paired_difference_interval`."""
    if len(first) != len(second) or not first:
        raise ValueError(f"need two equally long, non-empty outcome lists (one per item): {len(first)}, {len(second)}")
    pairs = [(bool(a), bool(b)) for a, b in zip(first, second)]
    table = [pairs.count((True, True)), pairs.count((True, False)), pairs.count((False, True))]
    table.append(len(pairs) - sum(table))
    return (table[1] - table[2]) / len(pairs), paired_difference_interval(*table)


def format_rate(rate: float, lo: float, hi: float, n: int) -> str:
    """``0.963 [0.87, 0.99] (n=54)``: a rate, its 95 % interval and its n."""
    return f"{rate:.3f} [{lo:.2f}, {hi:.2f}] (n={n})"
