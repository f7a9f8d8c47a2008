"""From per-layer needs to a PEFT LoraConfig: the budget, power-of-two ranks, alpha per layer, and
PEFT's own reading of a LoraConfig (which rank and alpha it gives a module).

Rounding: rank = 2 ** ceil(log2(c * need)), clipped to [min_rank, max_rank], with c = 1 when
there is no budget (and no calibrated level, which is spent as a budget). With a budget (trainable parameters; a layer of rank r costs
r * (in + out)), c is the largest factor whose ranks fit it, so the budget is spent where the
need is; then, since power-of-two steps can leave up to half of it unspent, the layers with
the most need per unit of rank have their rank doubled while the budget allows.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter

from peft import LoraConfig

from advisor.layers import layer_types

FIXED_ALPHA = 32.0  # "fixed" mode: one alpha for every layer, scaling alpha / r
ALPHA_OVER_R = 2.0  # "scale" mode: alpha = 2 r
RSLORA_ALPHA = 8.0  # "rslora" mode: one alpha for every layer, scaling alpha / sqrt(r)


def uniform_params(rank: int, shapes: dict[str, tuple[int, int]]) -> int:
    """Adapter parameters of uniform rank ``rank`` on layers of ``shapes`` (r * (in + out) each)."""
    return rank * sum(out + inp for out, inp in shapes.values())


def parse_budget(budget, shapes: dict[str, tuple[int, int]]) -> int | None:
    """Trainable parameters from ``budget``: None; a positive number; "1.5M" / "200k"; or
    "r=16" / "uniform r=16" / "same as uniform r=16" (what uniform rank 16 costs on these layers)."""
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise ValueError(f"budget must be a number of parameters or 'r=N', got {budget!r}")
    if isinstance(budget, (int, float)):
        value = budget
    else:
        text = str(budget).strip().lower()
        uniform = re.fullmatch(r"(?:same as )?(?:uniform[ -]?)?r\s*=?\s*(\d+)", text)
        if uniform:
            rank = int(uniform.group(1))
            if rank < 1:
                raise ValueError(f"budget {budget!r}: the uniform rank must be at least 1")
            return uniform_params(rank, shapes)
        number = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([km]?)", text)
        if not number:
            raise ValueError(f"budget {budget!r} is not a number of parameters (e.g. 1.5M) or 'r=N'")
        value = float(number.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[number.group(2)]
    if not value > 0:
        raise ValueError(f"budget must be positive, got {budget!r}")
    return int(value)


def rounded_rank(need: float, factor: float, min_rank: int, max_rank: int) -> int:
    """The advised rank of a layer of ``need`` directions at factor c (the rounding above)."""
    return min(max(2 ** math.ceil(math.log2(max(need * factor, 1.0))), min_rank), max_rank)


def allocate(needs: dict[str, float], shapes: dict[str, tuple[int, int]], budget: int | None,
             min_rank: int, max_rank: int) -> tuple[dict[str, int], float]:
    """(rank per layer, the factor c): the rounding rule above under ``budget``."""
    def cost(ranks):
        return sum(r * sum(shapes[n]) for n, r in ranks.items())

    def ranks_at(factor):
        return {n: rounded_rank(need, factor, min_rank, max_rank) for n, need in needs.items()}

    if budget is None:
        return ranks_at(1.0), 1.0
    floor = cost({n: min_rank for n in needs})
    if budget < floor:
        raise ValueError(f"budget {budget:,} is below {floor:,}, the cost of min_rank={min_rank} on every layer")
    low, high = -40.0, 40.0  # log2 of the factor
    for _ in range(60):
        middle = (low + high) / 2
        if cost(ranks_at(2**middle)) <= budget:
            low = middle
        else:
            high = middle
    ranks = ranks_at(2**low)
    # one factor with power-of-two steps can leave up to half the budget unspent: double the
    # ranks of the neediest layers (per unit of rank) while the budget allows
    spent = cost(ranks)
    for name in sorted(needs, key=lambda n: needs[n] / ranks[n], reverse=True):
        extra = ranks[name] * sum(shapes[name])
        if ranks[name] * 2 <= max_rank and spent + extra <= budget:
            ranks[name] *= 2
            spent += extra
    return ranks, 2**low


def alphas(ranks: dict[str, int], alpha_mode: str, scaling: dict[int, float] | None = None) -> dict[str, float]:
    """alpha per layer; ``scaling``: the calibrated best scaling per rank ("calibrated" mode)."""
    if alpha_mode == "fixed":
        return {name: FIXED_ALPHA for name in ranks}
    if alpha_mode == "rslora":
        return {name: RSLORA_ALPHA for name in ranks}
    if alpha_mode == "calibrated":
        return {name: round(scaling[rank] * rank, 4) for name, rank in ranks.items()}
    return {name: ALPHA_OVER_R * rank for name, rank in ranks.items()}


def build_lora_config(ranks: dict[str, int], alphas: dict[str, float], *, task_type: str | None,
                      use_rslora: bool = False, base_model: str | None = None,
                      known_modules=None) -> LoraConfig:
    """A PEFT LoraConfig with explicit target modules and per-layer rank / alpha patterns.

    ``r`` / ``lora_alpha`` are the most common rank and its alpha; a layer with another rank
    gets a key in ``rank_pattern``, one with another alpha in ``alpha_pattern`` (PEFT reads the
    two independently, falling back to ``r`` and ``lora_alpha``; it matches keys
    with ``re.match(rf"(.*\\.)?({key})$", name)``). Layers with rank 0 are left out.
    ``known_modules``: every module name of the model (the layers of ``ranks`` among them: PEFT
    matches ``target_modules`` against every named module, not only linear ones). With it, a
    layer type whose every layer is adapted is targeted by its type name (``q_proj``), and each pattern key is the shortest dotted suffix of the layer's name
    (``3.mlp.down_proj``), each only when PEFT's matching then selects exactly the same modules
    among ``known_modules``; without it, full names (exact whatever else the model holds).
    """
    kept = {name: rank for name, rank in ranks.items() if rank > 0}
    if not kept:
        raise ValueError("every layer was advised rank 0: nothing to adapt")
    common_rank = Counter(kept.values()).most_common(1)[0][0]
    common_alpha = Counter(alphas[n] for n, r in kept.items() if r == common_rank).most_common(1)[0][0]
    known = list(dict.fromkeys([*(known_modules or ()), *ranks])) if known_modules is not None else None
    rank_pattern, alpha_pattern = {}, {}
    for name, rank in kept.items():
        if rank != common_rank or alphas[name] != common_alpha:
            key = re.escape(_shortest_pattern_key(name, known) if known else name)
            if rank != common_rank:
                rank_pattern[key] = rank
            if alphas[name] != common_alpha:
                alpha_pattern[key] = alphas[name]
    return LoraConfig(
        r=common_rank,
        lora_alpha=common_alpha,
        target_modules=_target_names(kept, ranks, known) if known else sorted(kept),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=use_rslora,
        task_type=task_type,
        base_model_name_or_path=base_model,
    )


def _target_names(kept: dict[str, int], ranks: dict[str, int], known: list[str]) -> list[str]:
    """``target_modules`` for the adapted layers ``kept``: a layer type's name (PEFT's list
    matching: the name itself or ``"." + type`` at its end) where it selects exactly that type's
    layers among ``known`` and all of them are adapted; else the layers' full names."""
    types = layer_types(ranks)
    targets = []
    for layer_type in dict.fromkeys(types[name] for name in kept):
        members = {name for name in ranks if types[name] == layer_type}
        matched = {name for name in known if name == layer_type or name.endswith("." + layer_type)}
        exact = matched == members and all(name in kept for name in members)
        targets += [layer_type] if exact else sorted(members & set(kept))
    return sorted(targets)


def _shortest_pattern_key(name: str, known: list[str]) -> str:
    """The shortest dotted suffix of ``name`` that PEFT's pattern matching finds in ``name`` alone among ``known``."""
    parts = name.split(".")
    for start in range(len(parts) - 1, -1, -1):
        suffix = ".".join(parts[start:])
        pattern = re.compile(rf"(.*\.)?({re.escape(suffix)})$")
        if [other for other in known if pattern.match(other)] == [name]:
            return suffix
    return name


def planned_rank(config: LoraConfig, name: str) -> int:
    """The rank PEFT gives module ``name`` under ``config`` (0 when it is not targeted), by PEFT's
    own matching (``target_modules``, ``exclude_modules``, ``layers_to_transform``, ``rank_pattern``)."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    if config.target_modules == "all-linear":  # PEFT expands it to every linear layer but the output head
        config = copy.copy(config)
        config.target_modules = [name]
    if not check_target_module_exists(config, name):
        return 0
    return (config.rank_pattern or {}).get(get_pattern_key((config.rank_pattern or {}).keys(), name), config.r)


def planned_alpha(config: LoraConfig, name: str) -> float:
    """The alpha PEFT gives module ``name`` under ``config`` (``alpha_pattern`` by PEFT's own matching)."""
    from peft.utils.other import get_pattern_key

    pattern = config.alpha_pattern or {}
    return pattern.get(get_pattern_key(pattern.keys(), name), config.lora_alpha)
