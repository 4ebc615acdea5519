"""benchmarks/protocol_cost.py counts the forward work of Arditi's selection exactly as the scorer runs it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cost(load_script):
    return load_script("benchmarks/protocol_cost.py")


def test_scoring_work_counts_token_blocks_by_hand(cost):
    # 4 blocks; candidates at blocks 1 and 3; a 2-token prefix; harmful suffixes 3+5, harmless 4.
    # A row: 3 blocks for each token, then the last block for its last token; a prefix: 3 blocks.
    work = cost.scoring_work(4, [1, 3], [3, 5], [4], prefix=2, filtered=[3, 5, 4, 6])
    assert work == {
        "filter": 2 * 3 + (9 + 1) + (15 + 1) + (12 + 1) + (18 + 1),
        "bypass_kl": 2 * (2 * 3 + (9 + 1) + (15 + 1) + (12 + 1)),
        "induce": (2 * 2 + 4 * 2 + 1) + (2 * 0 + 4 * 0 + 1),  # from blocks 1 and 3 up
        "unsteered": 0,  # the filter's pass already ran the harmless rows unsteered
    }
    unfiltered = cost.scoring_work(4, [1, 3], [3, 5], [4], prefix=2)
    assert unfiltered["filter"] == 0 and unfiltered["unsteered"] == 2 * 3 + 12 + 1
    assert set(cost.scoring_work(4, [], [3], [4], prefix=2).values()) == {0}


def test_more_positions_cost_proportionally_more(cost):
    one = cost.scoring_work(30, list(range(1, 24)), [10] * 29, [12] * 32, prefix=24)
    six = cost.scoring_work(30, list(range(1, 24)) * 6, [10] * 29, [12] * 32, prefix=24)
    assert six["bypass_kl"] == 6 * one["bypass_kl"] and six["induce"] == 6 * one["induce"]


def test_variant_work(cost):
    assert cost.variant_work(4, 3, 12, [3, 5], prefix=2) == 3 * 12 * (2 * 3 + (9 + 1) + (15 + 1))
