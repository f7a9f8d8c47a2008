"""A planned LoraConfig beside the advice: parameters, ranks per layer type, and what its scaling
means for the advised learning rate (``lora-advisor advise --compare``)."""

from __future__ import annotations

import math
import statistics

from peft import LoraConfig

from advisor.allocation import FIXED_ALPHA, planned_alpha, planned_rank
from advisor.calibrated import span
from advisor.recommend import Advice


def scale_warnings(advice: Advice, config: LoraConfig) -> list[str]:
    """What the planned ``config``'s scaling means for its learning rate. Under Adam a layer's
    step is about alpha x learning rate with PEFT's alpha / r, and alpha x sqrt(r) x learning rate
    with rsLoRA: planned layers whose steps differ 2x or more cannot share one best rate (the
    calibration's parametrization experiment found the best rate moving with rank under such
    scaling); one step factor away from the advice's alpha means the advised rate needs scaling."""
    factors = {}
    for name in advice.layers:
        rank = planned_rank(config, name)
        if rank:
            alpha = planned_alpha(config, name)
            factors[name] = (rank, alpha * math.sqrt(rank) if config.use_rslora else alpha)
    if not factors:
        return []
    low = min(factors.values(), key=lambda item: item[1])
    high = max(factors.values(), key=lambda item: item[1])
    rule = "alpha x sqrt(r) under rsLoRA" if config.use_rslora else "alpha under alpha / r"
    if high[1] >= 2 * low[1]:
        return [f"your layers' steps ({rule}) differ {high[1] / low[1]:.0f}x (r={low[0]}: {low[1]:g}, r={high[0]}: "
                f"{high[1]:g}): at one learning rate the higher-rank layers move faster and no single rate is best "
                f"for all; lora_alpha={FIXED_ALPHA:g} on every layer without rsLoRA keeps the steps equal"]
    rate = (advice.learning_rate or {}).get("value")
    step = statistics.median(factor for _, factor in factors.values())
    if rate is not None and not 0.8 <= step / FIXED_ALPHA <= 1.25:
        return [f"the advised learning rate {rate:g} was measured at alpha {FIXED_ALPHA:g} with alpha / r; your "
                f"scaling ({rule}: {step:g}) makes each step {step / FIXED_ALPHA:.2g}x as large, so the same steps "
                f"need a learning rate of about {rate * FIXED_ALPHA / step:.1g}"]
    return []


def compare_with(advice: Advice, config: LoraConfig) -> dict:
    """The user's planned ``config`` beside the advice: parameters, per layer type the layers
    planned at >= 2x the advised rank (over-provisioned) or <= 1/2 of it (under), and what its
    scaling means for the learning rate (:func:`scale_warnings`)."""
    planned = {name: planned_rank(config, name) for name in advice.layers}
    by_type: dict[str, dict] = {}
    for name, layer in advice.layers.items():
        entry = by_type.setdefault(layer.layer_type, {"layers": 0, "over": 0, "under": 0, "planned": [], "advised": []})
        entry["layers"] += 1
        entry["planned"].append(planned[name])
        entry["advised"].append(layer.rank)
        entry["over"] += planned[name] >= 2 * layer.rank
        entry["under"] += planned[name] <= layer.rank / 2
    planned_params = sum(planned[name] * sum(layer.shape) for name, layer in advice.layers.items())
    return {
        "planned_params": planned_params,
        "advised_params": advice.trainable_params,
        "by_type": {
            t: {"layers": e["layers"], "over_provisioned": e["over"], "under_provisioned": e["under"],
                "planned_rank": _range(e["planned"]), "advised_rank": _range(e["advised"]),
                "factor": round(sum(e["planned"]) / max(sum(e["advised"]), 1), 2)}
            for t, e in by_type.items()
        },
        "scale_warnings": scale_warnings(advice, config),
    }


def _range(values: list[int]) -> str:
    return span(str(min(values)), str(max(values)))
