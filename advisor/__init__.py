"""lora-rank-advisor: measure each layer's gradient spectrum before a LoRA fine-tune and
advise per-layer ranks and alpha.

    import advisor
    result = advisor.probe(model, dataset)   # ProbeResult: per-layer spectra and noise
    config = advisor.advise(model, dataset)  # peft.LoraConfig with rank_pattern/alpha_pattern
"""

from advisor.probe import LayerStats, ProbeResult, probe
from advisor.recommend import advise

__all__ = ["LayerStats", "ProbeResult", "advise", "probe"]
__version__ = "0.1.0"
