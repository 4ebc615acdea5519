"""Uncertainty: the Wilson score interval of a proportion and seeded bootstrap intervals of means
and differences. Pure functions of numbers (no torch, no model), so every floor can use them.

* :func:`wilson_interval` -- the 95 % interval of a rate ``k / n`` (closed form; exact bounds 0 and
  1 at ``k = 0`` and ``k = n``, never outside [0, 1], unlike the normal approximation);
* :func:`bootstrap_ci` -- the percentile interval of a statistic (default: the mean) over ``B``
  seeded resamples of one sample; :func:`bootstrap_diff_ci` -- of ``mean(a) − mean(b)`` over
  paired resamples (same index for both) or independent ones;
* :func:`format_rate` -- ``0.963 [0.87, 0.99] (n=54)``, how tables and the figure index print a rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

__all__ = ["wilson_interval", "wilson_half_width", "bootstrap_ci", "bootstrap_diff_ci", "format_rate"]

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


def format_rate(rate: float, lo: float, hi: float, n: int) -> str:
    """``0.963 [0.87, 0.99] (n=54)``: a rate, its 95 % interval and its n."""
    return f"{rate:.3f} [{lo:.2f}, {hi:.2f}] (n={n})"
