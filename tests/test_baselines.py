"""The users' rank rules, against their published definitions."""

import pytest

from advisor.baselines import HABITS, axolotl_rank, next_power_of_two, tinker_rank, tokens_rank


def test_tinker_gives_the_smallest_power_of_two_rank_whose_parameters_hold_the_tokens():
    per_rank = 10_176  # one SmolLM2 block's seven linear layers: sum of in + out
    for tokens in (1, 5_000, 10_176, 10_177, 40_000, 300_000, 2_000_000):
        rank = tinker_rank(tokens, per_rank)
        assert rank * per_rank >= tokens and (rank == 1 or (rank // 2) * per_rank < tokens)
        assert rank & (rank - 1) == 0
    assert tinker_rank(0, per_rank) == 1
    with pytest.raises(ValueError, match="params_per_rank"):
        tinker_rank(10, 0)


def test_a_tokens_rule_at_k_parameters_per_token_holds_k_times_the_tokens():
    per_rank = 10_176
    for ratio in (0.25, 1.0, 22.0, 512.0):
        for tokens in (1, 4_091, 120_293):
            rank = tokens_rank(tokens, per_rank, ratio)
            assert rank * per_rank >= ratio * tokens and (rank == 1 or (rank // 2) * per_rank < ratio * tokens)
    assert tokens_rank(120_293, per_rank, 1.0) == tinker_rank(120_293, per_rank) == 16
    with pytest.raises(ValueError, match="params_per_token"):
        tokens_rank(10, per_rank, 0.0)


def test_axolotl_thresholds():
    assert [axolotl_rank(n) for n in (0, 999, 1_000, 9_999, 10_000, 99_999, 100_000, 10**7)] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert HABITS == (8, 16, 32, 64)
    assert [next_power_of_two(v) for v in (0.3, 1, 1.5, 2, 3, 64, 65)] == [1, 1, 2, 2, 4, 64, 128]
