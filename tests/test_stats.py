"""workbench.stats: the Wilson interval against hand-computed closed-form values, and the seeded
bootstrap's reproducibility and coverage of known cases."""

from __future__ import annotations

import pytest

from workbench import data, stats


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # by hand, z = 1.96: denominator 1 + z²/n = 1.38416 at n = 10
        (0, 10, 0.0, 0.27754),  # centre = half = (z²/2n)/1.38416 = 0.13877
        (5, 10, 0.23659, 0.76341),  # centre 0.5, half = 1.96·√(0.025 + 0.009604)/1.38416 = 0.26341
        (10, 10, 0.72246, 1.0),  # the mirror of k = 0
        (1, 1, 0.20654, 1.0),  # denominator 4.8416: centre 0.60327, half 0.39673
    ],
)
def test_wilson_interval_matches_the_closed_form(k, n, lo, hi):
    got = stats.wilson_interval(k, n, z=1.96)
    assert got == pytest.approx((lo, hi), abs=1e-5)


def test_wilson_interval_is_symmetric_and_shrinks_with_n():
    lo, hi = stats.wilson_interval(3, 20)
    lo2, hi2 = stats.wilson_interval(17, 20)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))
    assert stats.wilson_interval(30, 200)[1] - stats.wilson_interval(30, 200)[0] < hi - lo


def test_wilson_interval_refuses_no_trials_and_impossible_counts():
    with pytest.raises(ValueError, match="n ≥ 1"):
        stats.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        stats.wilson_interval(11, 10)


def test_data_half_width_is_the_stats_interval():
    lo, hi = stats.wilson_interval(15, 30)
    assert data.wilson_half_width(30) == pytest.approx((hi - lo) / 2)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.1 * i for i in range(40)]
    a = stats.bootstrap_ci(values, seed=3)
    assert a == stats.bootstrap_ci(values, seed=3)
    assert a != stats.bootstrap_ci(values, seed=4)
    mean = sum(values) / len(values)
    assert a[0] < mean < a[1]
    # the mean's standard error is sd/√n ≈ 0.18 here: a 95 % interval spans about ±0.36
    assert 0.5 < a[1] - a[0] < 0.9


def test_bootstrap_of_a_constant_is_that_constant():
    assert stats.bootstrap_ci([2.5] * 7) == (2.5, 2.5)
    assert stats.bootstrap_diff_ci([3.0] * 5, [1.0] * 5) == pytest.approx((2.0, 2.0))


def test_paired_difference_ignores_the_shared_item_effect():
    # items differ hugely, the condition adds exactly 1 to each: the paired interval is (1, 1)
    a = [float(10 * i) for i in range(20)]
    b = [x - 1.0 for x in a]
    assert stats.bootstrap_diff_ci(a, b) == pytest.approx((1.0, 1.0))
    lo, hi = stats.bootstrap_diff_ci(a, b, paired=False)
    assert lo < 1.0 < hi and hi - lo > 20


def test_bootstrap_refuses_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="equal lengths"):
        stats.bootstrap_diff_ci([1.0], [1.0, 2.0])


def test_format_rate():
    assert stats.format_rate(0.9629, 0.87, 0.9912, 54) == "0.963 [0.87, 0.99] (n=54)"


def test_paired_difference_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2017), "Statistical Analysis of Contingency Tables", ch. 8: complete
    # response before and after consolidation therapy (Cavo et al., 2012), 161 patients
    # [[59, 6], [16, 80]]: estimate -0.0621, Newcombe square-and-add (method 10) 95 % CI -0.1186 to -0.0046
    lo, hi = stats.paired_difference_interval(59, 6, 16, 80)
    assert (lo, hi) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    # swapping the conditions mirrors the interval
    assert stats.paired_difference_interval(59, 16, 6, 80) == pytest.approx((-hi, -lo))


def test_paired_difference_interval_in_closed_form_when_one_rate_is_all_and_the_other_none():
    # 10 of 10 refused before, 0 of 10 after: a margin is 0, so φ = 0, and the bounds are Wilson's:
    # lo = 1 − √((1 − l1)² + u2²) with l1 = 1 − u2 = 0.72246 (Wilson, 10 of 10): 1 − √2·0.27754 = 0.60749
    lo, hi = stats.paired_difference_interval(0, 10, 0, 0, z=1.96)
    assert (lo, hi) == pytest.approx((1 - 2**0.5 * 0.27754, 1.0), abs=1e-5)
    diff, ci = stats.paired_rate_difference([True] * 10, [False] * 10)
    assert diff == 1.0 and ci == pytest.approx(stats.paired_difference_interval(0, 10, 0, 0))


def test_paired_difference_interval_narrows_when_the_pairs_agree():
    # same margins (p1 = 0.6, p2 = 0.4 on 50 items), strongly vs not correlated pairs
    agree = stats.paired_difference_interval(20, 10, 0, 20)
    independent = stats.paired_difference_interval(12, 18, 8, 12)
    assert agree[1] - agree[0] < independent[1] - independent[0]
    assert agree[0] < 0.2 < agree[1]


def test_paired_difference_interval_refuses_bad_counts():
    with pytest.raises(ValueError, match="non-negative integer counts"):
        stats.paired_difference_interval(0, 0, 0, 0)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        stats.paired_difference_interval(1, -1, 0, 0)
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_rate_difference([True], [True, False])
