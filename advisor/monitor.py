"""During training: the audit's metrics every N steps, alerts as they happen, and a check of the advice.

``RankMonitorCallback`` is a transformers ``TrainerCallback`` (pass it to ``Trainer(callbacks=
[...])``); in a plain training loop call ``monitor.observe(model, step)`` yourself. Every
``every`` steps it audits the adapter (:func:`advisor.adapter_audit.audit`), appends one JSON line per
observation to ``jsonl`` (``{"step", "layers": {name: metrics}, "alerts": [...]}``), and adds
means to the next log entry of the trainer (``state.log_history`` and the logs later callbacks
see: ``lora/mean_effective_rank``, ``lora/mean_utilization``, ``lora/max_dominance``,
``lora/health``, ``lora/alerts``). Alerts (each once per layer):

- ``RANK_COLLAPSE``: during the first ``warmup_steps`` (default 100) a layer's effective rank
  of B A falls below half of the largest it had in that window;
- ``SATURATED``: a layer's update (scaling * B A, tracked through a fixed random projection
  to 8 columns) changed by less than ``saturation_tolerance`` (relative, default 1e-4) over the
  last ``saturation_steps`` (default 200) steps;
- ``ILL_CONDITIONED`` and ``DOMINATING``: the audit's alerts, as they first appear.
Given an :class:`advisor.recommend.Advice`, :meth:`RankMonitorCallback.advice_check` says per
layer type whether the observed utilisation agrees with the advised ranks.

    python -m advisor.monitor plot monitor.jsonl [--out monitor.png]   # effective rank per layer type over steps
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from advisor.adapter_audit import THRESHOLDS, audit, json_safe

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency
    TrainerCallback = object


class RankMonitorCallback(TrainerCallback):
    """Audit the adapter every ``every`` steps; see the module docstring."""

    def __init__(self, every: int = 50, jsonl: str | Path | None = None, *, advice=None, warmup_steps: int = 100,
                 saturation_steps: int = 200, saturation_tolerance: float = 1e-4, thresholds: dict | None = None):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.every = every
        self.jsonl = Path(jsonl) if jsonl is not None else None
        self.advice = advice
        self.warmup_steps = warmup_steps
        self.saturation_steps = saturation_steps
        self.saturation_tolerance = saturation_tolerance
        self.thresholds = {**THRESHOLDS, **(thresholds or {})}
        self.history: list[dict] = []
        self.alerts: list[dict] = []
        self._alerted: set[tuple[str, str]] = set()
        self._warmup_peak: dict[str, float] = {}
        self._updates: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self._base_norms: dict = {}
        self._pending_logs: dict = {}

    # ------------------------------------------------------------------ plain loops
    @torch.no_grad()
    def observe(self, model, step: int) -> dict:
        """Audit ``model`` (a PeftModel) at ``step``; returns the record written to the JSONL file."""
        result = audit(model, thresholds=self.thresholds, base_norms=self._base_norms)
        layers = {layer.name: {"effective_rank": layer.effective_rank, "utilization": layer.utilization,
                               "kappa_A": layer.kappa_A, "kappa_B": layer.kappa_B, "dominance": layer.dominance,
                               "frobenius": layer.frobenius, "nominal_rank": layer.nominal_rank}
                  for layer in result.layers}
        new_alerts = [alert for alert in self._audit_alerts(result, step) + self._trend_alerts(model, layers, step)
                      if (alert["code"], alert["layer"]) not in self._alerted]
        for alert in new_alerts:
            self._alerted.add((alert["code"], alert["layer"]))
        self.alerts += new_alerts
        record = {"step": step, "layers": {n: json_safe(m) for n, m in layers.items()},
                  "alerts": new_alerts}
        self.history.append(record)
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
        values = list(layers.values())
        dominance = [m["dominance"] for m in values if m["dominance"] is not None]
        self._pending_logs = {
            "lora/mean_effective_rank": sum(m["effective_rank"] for m in values) / len(values),
            "lora/mean_utilization": sum(m["utilization"] for m in values) / len(values),
            "lora/max_dominance": max(dominance) if dominance else 0.0,
            "lora/health": result.summary["health"],
            "lora/alerts": len(self.alerts),
        }
        return record

    def _audit_alerts(self, result, step: int) -> list[dict]:
        return [{"step": step, "code": a.code, "severity": a.severity, "layer": a.layer, "message": a.message}
                for a in result.alerts if a.code in ("ILL_CONDITIONED", "DOMINATING")]

    def _trend_alerts(self, model, layers: dict, step: int) -> list[dict]:
        alerts = []
        for name, metrics in layers.items():
            if step <= self.warmup_steps:
                peak = max(self._warmup_peak.get(name, 0.0), metrics["effective_rank"])
                self._warmup_peak[name] = peak
                if metrics["effective_rank"] < 0.5 * peak:
                    alerts.append({"step": step, "code": "RANK_COLLAPSE", "severity": "warning", "layer": name,
                                   "message": f"effective rank of BA fell from {peak:.1f} to "
                                              f"{metrics['effective_rank']:.1f} during warm-up"})
            update = _update_sketch(model, name)
            history = self._updates.setdefault(name, [])
            history.append((step, update))
            while len(history) > 1 and step - history[1][0] >= self.saturation_steps:
                history.pop(0)
            first_step, first = history[0]
            if step - first_step >= self.saturation_steps:
                change = float((update - first).norm() / update.norm().clamp_min(1e-30))
                if change < self.saturation_tolerance:
                    alerts.append({"step": step, "code": "SATURATED", "severity": "warning", "layer": name,
                                   "message": f"the update changed by {change:.1e} (relative) over the last "
                                              f"{step - first_step} steps"})
        return alerts

    def advice_check(self) -> dict:
        """Per layer type: mean observed utilisation at the last observation against the advice.

        A type is ``over-provisioned`` when its adapters use under half of their rank, and
        ``saturated`` when they use over 90 % of it (the advice may be too low there)."""
        if not self.history:
            raise ValueError("no observation yet")
        last = self.history[-1]["layers"]
        types = {}
        if self.advice is not None:
            types = {name: layer.layer_type for name, layer in self.advice.layers.items()}
        by_type: dict[str, list[float]] = {}
        for name, metrics in last.items():
            by_type.setdefault(types.get(name, name.rsplit(".", 1)[-1]), []).append(metrics["utilization"])
        verdicts = {}
        for layer_type, values in by_type.items():
            mean = sum(values) / len(values)
            verdict = "over-provisioned" if mean < 0.5 else "saturated" if mean > 0.9 else "agrees"
            verdicts[layer_type] = {"mean_utilization": round(mean, 4), "layers": len(values), "verdict": verdict}
        return verdicts

    # ------------------------------------------------------------------ transformers hooks
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every == 0:
            self.observe(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # the Trainer has already copied ``logs`` into its history: add the means to both
        if self._pending_logs:
            if logs is not None:
                logs.update(self._pending_logs)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending_logs)
            self._pending_logs = {}


SKETCH_COLUMNS = 8


def _update_sketch(model, name: str) -> torch.Tensor:
    """scaling * B @ (A @ Omega) [out, 8] for a fixed Gaussian Omega [in, 8]: tracks how the update
    moves (a random projection keeps relative changes) without storing the [out, in] update."""
    module = model.get_submodule("base_model.model." + name)
    a, b = module.lora_A["default"].weight.detach().float(), module.lora_B["default"].weight.detach().float()
    generator = torch.Generator().manual_seed(0)
    omega = torch.randn(a.shape[1], SKETCH_COLUMNS, generator=generator).to(a.device)
    return (float(module.scaling["default"]) * (b @ (a @ omega))).cpu()


def plot(jsonl: str | Path, out: str | Path) -> Path:
    """Effective rank of B A per layer type (mean over layers) against the training step."""
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    records = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{jsonl} has no observations")
    fig, ax = plt.subplots(figsize=(7, 4))
    types = sorted({name.rsplit(".", 1)[-1] for name in records[0]["layers"]})
    for layer_type in types:
        steps, values = [], []
        for record in records:
            chosen = [m["effective_rank"] for n, m in record["layers"].items() if n.rsplit(".", 1)[-1] == layer_type]
            steps.append(record["step"])
            values.append(sum(chosen) / len(chosen))
        ax.plot(steps, values, marker=".", label=layer_type)
    ax.set_xlabel("step")
    ax.set_ylabel("effective rank of BA (mean over layers)")
    ax.set_title("LoRA effective rank during training")
    ax.legend(fontsize=8)
    save_figure(fig, out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advisor.monitor", description="Plot a RankMonitorCallback log.")
    commands = parser.add_subparsers(dest="command", required=True)
    plot_command = commands.add_parser("plot", help="effective rank per layer type over steps")
    plot_command.add_argument("jsonl")
    plot_command.add_argument("--out", default="monitor.png")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {plot(args.jsonl, args.out)}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
