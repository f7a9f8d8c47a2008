"""lora-rank-advisor: measure each layer's gradient spectrum before a LoRA fine-tune and
advise per-layer ranks and alpha.

    import advisor
    result = advisor.probe(model, dataset)   # ProbeResult: per-layer spectra and noise
    result = advisor.probe(model, dataset, advisor.ProbeConfig(num_samples=128))  # settings in one place
    config = advisor.advise(model, dataset)  # peft.LoraConfig with rank_pattern/alpha_pattern
"""

__all__ = ["AuditResult", "LayerStats", "ProbeConfig", "ProbeResult", "RankMonitorCallback", "advise", "audit", "probe"]
__version__ = "0.1.0"

_EXPORTS = {"LayerStats": "advisor.spectrum", "ProbeResult": "advisor.probe_pass", "probe": "advisor.probe_pass",
            "ProbeConfig": "advisor.probe_config",
            "advise": "advisor.recommend", "audit": "advisor.adapter_audit", "AuditResult": "advisor.adapter_audit",
            "RankMonitorCallback": "advisor.monitor"}


def __getattr__(name: str):
    """Import the heavy modules (torch, transformers, peft) on first use, not on ``import advisor``,
    so that ``lora-advisor --help`` is quick and the CLI can quiet bitsandbytes before it loads."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'advisor' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The exports too, so that ``dir(advisor)`` and tab completion show them before first use."""
    return sorted({*globals(), *__all__})
