"""Stage 5 of the data path: from measured spectra to LoRA ranks and alpha.

UNCALIBRATED: until the regression fitted on real rank sweeps ships in ``models/``, ranks
come from a fixed, documented rule:

    rank(layer) = smallest power of two >= the layer's signal effective rank,
                  clipped to [min_rank, max_rank];
    alpha(layer) = 2 * rank (the common "alpha = 2r" habit).

The signal effective rank is the entropy effective rank of the gradient directions that stand
above the split-half noise edge (see :mod:`advisor.probe`), so it does not count directions
that are only sampling noise. The rule is a starting point, not evidence that it is right.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from peft import LoraConfig

from advisor.loading import TASK_SEQ_CLS
from advisor.probe import ProbeResult, probe

CALIBRATION_LABEL = "uncalibrated: rank = next power of two >= signal effective rank, alpha = 2r"


def uncalibrated_ranks(result: ProbeResult, *, min_rank: int = 2, max_rank: int = 64) -> dict[str, int]:
    """Advised rank per probed layer name (see the module docstring for the rule)."""
    if not 1 <= min_rank <= max_rank:
        raise ValueError(f"need 1 <= min_rank <= max_rank, got min_rank={min_rank}, max_rank={max_rank}")
    ranks = {}
    for name, stats in result.layers.items():
        need = max(stats.signal_effective_rank, 1.0)
        ranks[name] = min(max(2 ** math.ceil(math.log2(need)), min_rank), max_rank)
    return ranks


def lora_config(result: ProbeResult, ranks: dict[str, int], alphas: dict[str, float]) -> LoraConfig:
    """A PEFT LoraConfig with explicit target modules and per-layer rank / alpha patterns.

    ``r`` / ``lora_alpha`` are the most common advised rank and its alpha; every layer with
    another rank or alpha gets a fully qualified, regex-escaped key in both ``rank_pattern``
    and ``alpha_pattern`` (PEFT matches keys with ``re.match(rf"(.*\\.)?({key})$", name)``).
    Layers with rank 0 are left out.
    """
    kept = {name: rank for name, rank in ranks.items() if rank > 0}
    if not kept:
        raise ValueError("every layer was advised rank 0: nothing to adapt")
    common_rank = Counter(kept.values()).most_common(1)[0][0]
    common_alpha = Counter(alphas[n] for n, r in kept.items() if r == common_rank).most_common(1)[0][0]
    rank_pattern, alpha_pattern = {}, {}
    for name, rank in kept.items():
        if rank != common_rank or alphas[name] != common_alpha:
            key = re.escape(name)
            rank_pattern[key] = rank
            alpha_pattern[key] = alphas[name]
    return LoraConfig(
        r=common_rank,
        lora_alpha=common_alpha,
        target_modules=sorted(kept),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        task_type="SEQ_CLS" if result.task == TASK_SEQ_CLS else "CAUSAL_LM",
        base_model_name_or_path=result.model,
    )


def advise(model=None, dataset=None, *, min_rank: int = 2, max_rank: int = 64, return_probe: bool = False, **probe_options):
    """Probe ``model`` on ``dataset`` and return the advised ``peft.LoraConfig``.

    ``probe_options`` go to :func:`advisor.probe`. With ``return_probe=True`` returns
    ``(config, probe_result, ranks)``.
    """
    result = probe(model, dataset, **probe_options)
    ranks = uncalibrated_ranks(result, min_rank=min_rank, max_rank=max_rank)
    alphas = {name: 2 * rank for name, rank in ranks.items()}
    config = lora_config(result, ranks, alphas)
    return (config, result, ranks) if return_probe else config
