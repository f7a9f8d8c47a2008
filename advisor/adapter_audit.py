"""After training: audit a LoRA adapter, did it use the rank it was given, and how hard does it push?

Per LoRA layer (A [r, in], B [out, r], PEFT's scaling s = alpha / r, or alpha / sqrt(r) with
rsLoRA, update dW = s B A, base weight W [out, in], dequantized for 4-bit bases):

- ``effective_rank`` (entropy) of B A, ``effective_rank_A`` and ``effective_rank_B``;
  ``utilization`` = effective rank of B A / r;
- ``kappa_A``, ``kappa_B``: condition numbers sigma_max / sigma_min over the r singular values
  (infinite when one is zero, as for a B still at its zero initialisation);
- ``sigma_max`` and ``frobenius``: of the update dW = s B A;
- ``dominance`` rho = sigma_max(dW) / sigma_max(W) and ``update_ratio`` = ||dW||_F / ||W||_F.

Alerts (thresholds in :data:`THRESHOLDS`, each overridable): ``LOW_EFFECTIVE_RANK`` (effective
rank of B A below 0.25 r), ``ILL_CONDITIONED`` (kappa of A or B above 1000), ``DOMINATING``
(rho above 0.3: warning, above 0.5: critical), ``SCALE_MISMATCH`` (update ratio below 1e-4,
the adapter barely moved the layer, or above 1.0, it outweighs the layer). The summary holds
mean and max dominance, health = 1 / the largest kappa, and a suggested rank per layer: the
fewest directions of B A that keep ``energy`` (default 90 %) of its squared singular values,
with alpha chosen so that each layer keeps its scaling.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from advisor import spectrum

THRESHOLDS = {
    "low_effective_rank": 0.25,  # LOW_EFFECTIVE_RANK: effective rank of BA below this share of r
    "ill_conditioned": 1000.0,  # ILL_CONDITIONED: kappa(A) or kappa(B) above this
    "dominating_warning": 0.3,  # DOMINATING (warning): sigma_max(dW) / sigma_max(W) above this
    "dominating_critical": 0.5,  # DOMINATING (critical)
    "scale_low": 1e-4,  # SCALE_MISMATCH: ||dW||_F / ||W||_F below this ...
    "scale_high": 1.0,  # ... or above this
}
PREFIX = "base_model.model."


@dataclass
class LayerAudit:
    name: str  # module path in the base model
    nominal_rank: int
    alpha: float
    scaling: float
    effective_rank: float
    effective_rank_A: float
    effective_rank_B: float
    utilization: float
    kappa_A: float
    kappa_B: float
    sigma_max: float
    frobenius: float
    dominance: float | None
    update_ratio: float | None
    suggested_rank: int


@dataclass
class Alert:
    code: str
    severity: str  # "warning" or "critical"
    layer: str
    message: str


@dataclass
class AuditResult:
    layers: list[LayerAudit]
    summary: dict
    alerts: list[Alert] = field(default_factory=list)
    use_rslora: bool = False
    task_type: str | None = None

    def to_dict(self) -> dict:
        return {"layers": [json_safe(asdict(layer)) for layer in self.layers], "summary": json_safe(self.summary),
                "alerts": [asdict(alert) for alert in self.alerts]}

    def suggested_config(self):
        """A PEFT LoraConfig with the suggested ranks; each layer keeps its scaling."""
        from advisor.allocation import build_lora_config

        ranks = {layer.name: layer.suggested_rank for layer in self.layers}
        alphas = {
            layer.name: round(layer.scaling * (math.sqrt(rank) if self.use_rslora else rank), 6)
            for layer, rank in zip(self.layers, ranks.values())
        }
        return build_lora_config(ranks, alphas, task_type=self.task_type, use_rslora=self.use_rslora)


def json_safe(data: dict) -> dict:
    """JSON has no infinity or NaN: such values (an infinite condition number) are written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def _condition(sv: torch.Tensor) -> float:
    smallest = float(sv[-1])
    return float(sv[0]) / smallest if smallest > 0 else math.inf


def _base_weight(module: nn.Module) -> torch.Tensor | None:
    """The layer's base weight [out, in] as float32 (dequantized for a bitsandbytes 4-bit layer)."""
    from advisor.quantized import autograd_safe, linear4bit_modules, reference_dequantize_4bit

    base = module.get_base_layer()
    if linear4bit_modules(base):
        with autograd_safe(base):
            return reference_dequantize_4bit(base)
    weight = getattr(base, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    weight = weight.detach().float()
    return weight.T if type(base).__name__ == "Conv1D" else weight


@torch.no_grad()
def audit(adapter, base=None, *, energy: float = 0.9, thresholds: dict | None = None,
          base_norms: dict | None = None) -> AuditResult:
    """Audit ``adapter``: a ``PeftModel`` in memory, or a saved adapter directory whose base is
    ``base`` (a model, a path or a cached hub id; default: the adapter's ``base_model_name_or_path``).

    ``base_norms``: a dict that caches each base weight's (sigma_max, Frobenius norm) between
    calls on the same model (the training monitor passes one; base weights do not change).
    """
    from peft.tuners.lora import LoraLayer

    limits = {**THRESHOLDS, **(thresholds or {})}
    unknown = set(limits) - set(THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown audit thresholds: {', '.join(sorted(unknown))} (known: {', '.join(THRESHOLDS)})")
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    model = adapter if isinstance(adapter, nn.Module) else load_adapter(adapter, base)
    config = model.peft_config["default"] if hasattr(model, "peft_config") else None
    layers, alerts, widths = [], [], []
    for full_name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in getattr(module, "lora_A", {}):
            continue
        name = full_name.removeprefix(PREFIX)
        a = module.lora_A["default"].weight.double()  # [r, in]
        b = module.lora_B["default"].weight.double()  # [out, r]
        scaling = float(module.scaling["default"])
        rank = int(a.shape[0])
        sv = spectrum.product_singular_values(b, a)
        sv_a, sv_b = torch.linalg.svdvals(a), torch.linalg.svdvals(b)
        norms = base_norms if base_norms is not None else {}
        if name not in norms:
            weight = _base_weight(module)
            norms[name] = (None, None) if weight is None else (
                float(torch.linalg.matrix_norm(weight.double(), ord=2)), float(weight.double().norm()))
        w_sigma, w_frobenius = norms[name]
        update_sigma, update_frobenius = scaling * float(sv[0]), scaling * float(sv.norm())
        layer = LayerAudit(
            name=name, nominal_rank=rank, alpha=float(module.lora_alpha["default"]), scaling=scaling,
            effective_rank=spectrum.effective_rank(sv), effective_rank_A=spectrum.effective_rank(sv_a),
            effective_rank_B=spectrum.effective_rank(sv_b), utilization=spectrum.effective_rank(sv) / rank,
            kappa_A=_condition(sv_a), kappa_B=_condition(sv_b), sigma_max=update_sigma, frobenius=update_frobenius,
            dominance=update_sigma / w_sigma if w_sigma else None,
            update_ratio=update_frobenius / w_frobenius if w_frobenius else None,
            suggested_rank=max(1, spectrum.energy_rank(sv, energy)),
        )
        layers.append(layer)
        widths.append(a.shape[1] + b.shape[0])  # in + out: the parameters one unit of rank costs
        alerts += _alerts(layer, limits)
    if not layers:
        raise ValueError("the model has no LoRA layers to audit")
    dominance = [layer.dominance for layer in layers if layer.dominance is not None]
    kappas = [max(layer.kappa_A, layer.kappa_B) for layer in layers]
    summary = {
        "layers": len(layers),
        "mean_dominance": sum(dominance) / len(dominance) if dominance else None,
        "max_dominance": max(dominance) if dominance else None,
        "health": 1 / max(kappas) if math.isfinite(max(kappas)) else 0.0,
        "mean_utilization": sum(layer.utilization for layer in layers) / len(layers),
        "energy_kept_by_suggestion": energy,
        "trainable_params": sum(layer.nominal_rank * width for layer, width in zip(layers, widths)),
        "suggested_params": sum(layer.suggested_rank * width for layer, width in zip(layers, widths)),
        "alerts": {code: sum(alert.code == code for alert in alerts) for code in sorted({a.code for a in alerts})},
    }
    task_type = getattr(config, "task_type", None)
    return AuditResult(layers=layers, summary=summary, alerts=alerts, use_rslora=bool(getattr(config, "use_rslora", False)),
                       task_type=getattr(task_type, "value", task_type))


def _alerts(layer: LayerAudit, limits: dict) -> list[Alert]:
    alerts = []
    if layer.effective_rank < limits["low_effective_rank"] * layer.nominal_rank:
        alerts.append(Alert("LOW_EFFECTIVE_RANK", "warning", layer.name,
                            f"uses {layer.effective_rank:.1f} of its {layer.nominal_rank} directions "
                            f"(utilisation {layer.utilization:.0%}); rank {layer.suggested_rank} would keep the update"))
    kappa = max(layer.kappa_A, layer.kappa_B)
    if kappa > limits["ill_conditioned"]:
        which = "A" if layer.kappa_A >= layer.kappa_B else "B"
        alerts.append(Alert("ILL_CONDITIONED", "warning", layer.name,
                            f"condition number of {which} is {kappa:.3g} (threshold {limits['ill_conditioned']:g})"))
    if layer.dominance is not None and layer.dominance > limits["dominating_warning"]:
        severity = "critical" if layer.dominance > limits["dominating_critical"] else "warning"
        alerts.append(Alert("DOMINATING", severity, layer.name,
                            f"the update's largest singular value is {layer.dominance:.2f} of the base weight's"))
    if layer.update_ratio is not None and not limits["scale_low"] <= layer.update_ratio <= limits["scale_high"]:
        side = "below" if layer.update_ratio < limits["scale_low"] else "above"
        alerts.append(Alert("SCALE_MISMATCH", "warning", layer.name,
                            f"||update|| / ||W|| = {layer.update_ratio:.2g}, {side} the expected "
                            f"[{limits['scale_low']:g}, {limits['scale_high']:g}]"))
    return alerts


def load_adapter(directory: str | Path, base=None):
    """A saved PEFT adapter on its base model (``base``, or the one its config names)."""
    from peft import PeftConfig, PeftModel

    from advisor.loading import load_model

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise ValueError(f"{directory} is not a saved PEFT adapter (no adapter_config.json)")
    try:
        config = PeftConfig.from_pretrained(directory)
    except Exception as error:  # not a PEFT config
        raise ValueError(f"{directory}/adapter_config.json is not a PEFT adapter config ({error})") from None
    if base is None:
        base = config.base_model_name_or_path
        if not base:
            raise ValueError(f"{directory}: the adapter names no base model; give one with --base")
    task = "seq-cls" if str(getattr(config.task_type, "value", config.task_type)) == "SEQ_CLS" else "causal-lm"
    # PEFT injects its layers into the base: never into the caller's own model
    model = copy.deepcopy(base) if isinstance(base, nn.Module) else load_model(base, task=task)[0]
    try:
        return PeftModel.from_pretrained(model, directory)
    except Exception as error:  # weights missing, or shapes that do not fit this base
        raise ValueError(f"cannot load the adapter {directory} on {getattr(model, 'name_or_path', base)}: "
                         f"{str(error).strip().splitlines()[0]}") from None
