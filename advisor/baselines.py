"""The rank rules users already apply by hand, which the advice must beat (or use, and say so).

- :func:`tinker_rank`: the Tinker cookbook's capacity rule ("LoRA Without Regret", Thinking
  Machines, 2025): give the adapter at least as many parameters as the training set has
  completion (loss) tokens, i.e. the smallest uniform rank r with r * sum(in + out) >= tokens;
- :func:`tokens_rank`: the same rule at another number of parameters per loss token (the
  calibration fits that number on its capacity cells, :mod:`calibration.level_study`);
- :func:`axolotl_rank`: the dataset-size thresholds proposed to axolotl (PR #3691): under 1k
  rows r = 8, under 10k r = 16, under 100k r = 32, else 64;
- :data:`HABITS`: one uniform rank for every task (8, 16, 32, 64; alpha = 2r).

Ranks are powers of two, as people write them and as the advice rounds its own.
"""

from __future__ import annotations

import math

HABITS = (8, 16, 32, 64)
AXOLOTL_THRESHOLDS = ((1_000, 8), (10_000, 16), (100_000, 32))  # (rows below, rank); 64 beyond


def next_power_of_two(value: float) -> int:
    """The smallest power of two >= ``value`` (at least 1)."""
    return 1 if value <= 1 else 2 ** math.ceil(math.log2(value) - 1e-12)


def tokens_rank(loss_tokens: int, params_per_rank: int, params_per_token: float = 1.0) -> int:
    """The smallest power-of-two uniform rank whose adapter parameters (``params_per_rank`` per
    unit of rank: the sum of in + out over the adapted layers) reach ``params_per_token`` times
    ``loss_tokens``."""
    if params_per_rank <= 0:
        raise ValueError(f"params_per_rank must be positive, got {params_per_rank!r}")
    if loss_tokens < 0:
        raise ValueError(f"loss_tokens must be >= 0, got {loss_tokens!r}")
    if not params_per_token > 0:
        raise ValueError(f"params_per_token must be positive, got {params_per_token!r}")
    return next_power_of_two(params_per_token * loss_tokens / params_per_rank)


def tinker_rank(loss_tokens: int, params_per_rank: int) -> int:
    """Tinker's rule: :func:`tokens_rank` at one adapter parameter per loss token."""
    return tokens_rank(loss_tokens, params_per_rank, 1.0)


def axolotl_rank(rows: int) -> int:
    """The rank of axolotl PR #3691's dataset-size thresholds for a training set of ``rows`` rows."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows!r}")
    return next((rank for below, rank in AXOLOTL_THRESHOLDS if rows < below), 64)
