"""The advice: from measured spectra to per-layer LoRA ranks and alpha, and the Decision that says why.

Each probed layer gets a *need*, a number of directions:

- uncalibrated (``calibration=None``, or the default ``"auto"`` while ``models/`` ships none): the layer's
  signal effective rank, the entropy effective rank of the gradient directions above the
  split-half noise edge (:mod:`advisor.probe_pass`), so sampling noise is not counted;
- calibrated (``calibration=`` a verified file of :mod:`advisor.calibrated`, or ``"auto"`` when
  ``models/`` ships one that covers the probe; it may ship one per kind of model and "auto" takes
  the one fitted on the probe's kind): 2 ** (the regression's log2 optimal uniform rank
  + the layer's log2 relative need). ``"auto"`` falls back to the uncalibrated rule, and says
  so, when the model's median layer width or the training-set size lies more than 2x outside
  what the shipped calibration was fitted on, or the model is of a kind (causal LM, sequence
  classifier) it saw none of; a quantized base it saw none of is read as full precision, so
  QLoRA and full precision get the same level
  (:func:`advisor.calibrated.domain_gaps`). An explicit calibration is applied anyway, and the
  label says which probe features lie outside its range: the advice then extrapolates.
  Each of the calibration's models is used only when it beat its baseline by 10 % in
  leave-one-task-out validation (:func:`advisor.calibrated.earns_its_place`): when the rank
  model did not, or ``"auto"`` finds more than half of the probe's spectral features outside
  the ranges it was fitted on (:func:`advisor.calibrated.rank_model_extrapolates`), the
  calibration gives the shape, 2 ** (the uncalibrated rule's mean log2 need + the layer's
  log2 relative need less its mean over the layers); when the per-layer model is not usable
  either, the advice is uncalibrated. The level is then the rule's, unless there is no budget
  and the calibration's pooled level (the uniform rank its sweeps' cells support together)
  beat the rule leave one task out (:func:`advisor.calibrated.calibrated_level`): then the
  budget is that uniform rank's parameters, spent along the shape. With no budget, a users' rule
  (:mod:`advisor.baselines`: Tinker's tokens rule on the whole dataset's loss tokens, axolotl's
  thresholds on its rows) replaces that level when, on the calibration's cells, it did better
  by the same 10 % with no more parameters (:func:`advisor.calibrated.dominating_users_rule`):
  the advice never sets a level worse than a rule the user could apply by hand. A calibration
  that carries capacity cells (``capacity``: each rank at its best learning rate, where rank
  can be the limit; :func:`advisor.calibrated.capacity_level`) sets the level with no budget
  instead: its tokens rule (adapter parameters per loss token of the whole dataset) when, each
  task held out, it beat the users' best baseline (Tinker's rule, axolotl's thresholds and the
  uniform habits: the cheapest within one seed noise of the lowest regret), else that baseline; the level
  then depends on the dataset's counted tokens, not on the probe, so a 4-bit base and full
  precision get the same level.

Rounding, under a budget or not: :mod:`advisor.allocation`.

Alpha and learning rate: ``alpha_mode="fixed"`` (the default) writes alpha = 32 for every layer
with PEFT's alpha / r, under which each layer's step (about alpha x learning rate under Adam)
does not grow with its rank, and states the rate with the lowest mean loss over the ranks of the
calibration's experiment when the calibration in use measured it (``Advice.learning_rate``, with
each rank's own best rate: on some tasks higher ranks did best at a higher rate); ``"scale"`` writes alpha = 2 r (PEFT scaling alpha / r = 2, the
common habit, under which a layer's step grows with its rank); ``"rslora"`` writes ``use_rslora=True`` and alpha = 8 for every layer (scaling
8 / sqrt(r), the setting of the calibration sweeps); ``"calibrated"`` writes alpha = s(r) r with
s(r) the calibration's predicted best scaling at the layer's rank (its ``alpha`` model, fitted
on the alpha grids at the sweeps' learning rate), and needs a calibration that has one.

The predicted loss-vs-rank curve (calibrated only): the regression's eval loss at uniform
ranks 1-64 over the predicted best uniform rank's (1.0 at that rank, 1.05 = 5 % worse), with the
leave-one-task-out error of its shape as a factor (``loss_curve_error``: uncertain by that
factor either way).

The uncertainty interval of a rank: uncalibrated, from the rank of c * signal effective rank
up to that of c * signal rank (the count of directions above the noise edge), so it only
reaches upward; calibrated, the rank at log2 need -/+ the regression's leave-one-task-out
mean absolute error; calibrated shape only, as uncalibrated: from the need up to 2 ** (the mean
log2 signal rank + the layer's centred log2 relative need).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig

from advisor.allocation import (
    FIXED_ALPHA,
    allocate,
    alphas,
    build_lora_config,
    parse_budget,
    rounded_rank,
    uniform_params,
)
from advisor.baselines import axolotl_rank, tinker_rank, tokens_rank
from advisor.calibrated import (
    FITTED_TOKENS_RULE,
    USERS_RULES,
    calibrated_level,
    capacity_level,
    capacity_level_text,
    domain_gaps,
    dominating_users_rule,
    earns_its_place,
    features_outside,
    layer_group,
    measured_levels,
    probe_protocol,
    rank_model_extrapolates,
    resolve_calibration,
    training_rows_gap,
    users_rule_text,
    why_unused,
)
from advisor.loading import TASK_CAUSAL_LM, TASK_SEQ_CLS, model_task
from advisor.probe_config import ProbeConfig
from advisor.probe_pass import ProbeResult, probe
from advisor.quantized import QUANTIZATION_SHARE_FLAG

ALPHA_MODES = ("fixed", "scale", "rslora", "calibrated")
UNIFORM_BASELINES = (4, 8, 16, 32)
UNCALIBRATED_LABEL = "uncalibrated: rank = next power of two >= signal effective rank"
MIN_RANK, MAX_RANK = 2, 64  # the advised ranks' default bounds
# advise() with no num_samples grows its probe from the calibration's rows (ProbeConfig.max_samples) up to these
DEFAULT_MAX_SAMPLES, DEFAULT_MAX_SECONDS = 256, 300.0
PROBE_CALL_OPTIONS = ("tokenizer", "progress", "compare_full_precision", "loss_fn")  # probe() arguments, not settings


def signal_need(signal_effective_rank: float) -> float:
    """The uncalibrated need of a layer (directions): its signal effective rank, at least 1."""
    return max(signal_effective_rank, 1.0)


@dataclass
class LayerAdvice:
    """The advice for one layer; ``params`` = rank * (in + out), the adapter's trainable weights."""

    name: str
    layer_type: str
    depth: int | None
    shape: tuple[int, int]  # (out, in)
    need: float  # directions the layer needs (see the module docstring)
    rank: int
    alpha: float
    rank_low: int
    rank_high: int
    params: int


LEVEL_SOURCES = ("budget", "tokens rule", "best users' rule", "rank model", "pooled level", "users' rule", "probe's rule")
SHAPE_SOURCES = ("calibration", "uniform", "probe")


@dataclass
class Decision:
    """What set the advice, as data: the CLI headline, the report, ``advice.json`` and the tests
    read these fields; :attr:`Advice.calibration` is the same decision as one sentence.

    ``level`` (:data:`LEVEL_SOURCES`): what set how many parameters the adapter gets: the user's
    ``budget``; from the calibration's capacity cells, the calibrated ``tokens rule`` (adapter
    parameters per loss token of the data) where, held out, it beat the users' best baseline, or
    else that ``best users' rule`` (``level_rule`` names it); the calibration's ``rank model``; its
    ``pooled level`` or a ``users' rule`` (``level_rule`` names it) that did better on its rank
    grids' cells; each level but the rank model's spends uniform ``level_rank``'s parameters; or
    the ``probe's rule`` (each layer's signal effective rank).
    ``shape`` (:data:`SHAPE_SOURCES`): how the ranks spread over the layers: the calibration's
    per-layer model, ``uniform`` (every layer got the same rank: a rank model without a usable
    per-layer model, or a level at a rank bound) or the ``probe`` (each layer's signal effective
    rank). ``calibration``: the calibration used (None:
    uncalibrated); ``declined``: why one was considered and not used; ``rank_model_unused``:
    why its rank model was not used; ``outside``: the probe's features outside its fitted range;
    ``level_evidence`` (a level from the capacity cells): what it and the best users' rule cost
    there, each task held out: {"level": {"regret_noises", "regret", "params_vs_r16"}, "beat": the
    rule it beat (None: it is that rule), "baseline": the same figures for that rule}.
    """

    level: str
    shape: str
    level_rank: int | None = None
    level_rule: str | None = None
    calibration: str | None = None
    declined: str | None = None
    rank_model_unused: str | None = None
    outside: list[str] = field(default_factory=list)
    level_evidence: dict | None = None

    def __post_init__(self):
        if self.level not in LEVEL_SOURCES:
            raise ValueError(f"unknown level source {self.level!r}: use one of {', '.join(LEVEL_SOURCES)}")
        if self.shape not in SHAPE_SOURCES:
            raise ValueError(f"unknown shape source {self.shape!r}: use one of {', '.join(SHAPE_SOURCES)}")


@dataclass
class Advice:
    """Advised ranks and alpha with the evidence behind them; ``config`` is what PEFT reads."""

    config: LoraConfig
    layers: dict[str, LayerAdvice]
    calibration: str
    alpha_mode: str
    budget: int | None
    trainable_params: int
    uniform_params: dict[int, int]  # trainable parameters of uniform r over the same layers
    model_parameters: int | None
    train_size: int
    reasons: list[str]
    probe: ProbeResult
    loss_curve: dict[int, float] | None = None  # uniform rank -> predicted eval loss / the best rank's
    loss_curve_error: float | None = None  # leave-one-task-out error of the curve's shape, as a factor (e.g. 1.03)
    level_rank: int | None = None  # no budget given: the uniform rank whose parameters the calibrated level spends
    # the ranks the users' rules give this dataset (advisor.baselines): {"rows", "loss_tokens",
    # "max_length", "params_per_rank", "tinker", "axolotl"}; None when the dataset's loss tokens were
    # not counted (a DataLoader)
    users_rules: dict | None = None
    decision: Decision | None = None
    # {"value": rate or None, "why": one line}: the learning rate for the advised alpha (see _learning_rate)
    learning_rate: dict | None = None

    @property
    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def to_dict(self) -> dict:
        return {
            "calibration": self.calibration,
            "alpha_mode": self.alpha_mode,
            "budget": self.budget,
            "trainable_params": self.trainable_params,
            "uniform_params": {str(r): p for r, p in self.uniform_params.items()},
            "model_parameters": self.model_parameters,
            "train_size": self.train_size,
            "reasons": self.reasons,
            "loss_curve": None if self.loss_curve is None else {str(r): v for r, v in self.loss_curve.items()},
            "loss_curve_error": self.loss_curve_error,
            "level_rank": self.level_rank,
            "users_rules": self.users_rules,
            "learning_rate": self.learning_rate,
            "decision": None if self.decision is None else asdict(self.decision),
            "layers": {name: {**asdict(layer), "shape": list(layer.shape)} for name, layer in self.layers.items()},
            # PEFT holds target_modules as a set: sorted, so that advice.json does not depend on hash order
            "adapter_config": json.loads(json.dumps(self.config.to_dict(), default=sorted)),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, probe: ProbeResult) -> Advice:
        """The inverse of :meth:`to_dict`, given the advice's probe (saved beside it as probe.json)."""
        layers = {name: LayerAdvice(**{**layer, "shape": tuple(layer["shape"])}) for name, layer in data["layers"].items()}
        curve = data.get("loss_curve")
        return cls(
            config=LoraConfig(**data["adapter_config"]), layers=layers, calibration=data["calibration"],
            alpha_mode=data["alpha_mode"], budget=data["budget"], trainable_params=data["trainable_params"],
            uniform_params={int(r): p for r, p in data["uniform_params"].items()},
            model_parameters=data["model_parameters"], train_size=data["train_size"], reasons=data["reasons"],
            probe=probe, loss_curve=None if curve is None else {int(r): v for r, v in curve.items()},
            loss_curve_error=data.get("loss_curve_error"), level_rank=data.get("level_rank"),
            users_rules=data.get("users_rules"), learning_rate=data.get("learning_rate"),
            decision=Decision(**data["decision"]) if data.get("decision") else None,
        )

    @classmethod
    def load(cls, directory: str | Path) -> Advice:
        """The advice an ``Advice.save`` (or ``lora-advisor advise --out``) wrote to ``directory``."""
        directory = Path(directory)
        return cls.from_dict(json.loads((directory / "advice.json").read_text()),
                             ProbeResult.load(directory / "probe.json"))

    def save(self, directory: str | Path) -> None:
        """Write adapter_config.json, advice.json, probe.json, axolotl.yaml and lora_config.py."""
        from advisor import exports

        directory = Path(directory)
        self.config.save_pretrained(directory)
        (directory / "advice.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        self.probe.save(directory / "probe.json")
        rate = (self.learning_rate or {}).get("value")
        (directory / "axolotl.yaml").write_text(exports.axolotl_yaml(self.config, learning_rate=rate))
        (directory / "lora_config.py").write_text(exports.python_snippet(self.config, learning_rate=rate))


def _needs(result: ProbeResult, layers: dict[str, dict], calibration, train_size: int, outside: list[str],
           rank_model_unused: str | None = None, level_rank: int | None = None,
           level_source: tuple[str, int] | None = None):
    """(need, low need, high need) per layer, and a label saying where they come from;
    ``layers``: the probe's LayerStats as dicts, what the calibration reads. A calibration whose
    rank model is not used (``rank_model_unused`` says why: it did not earn its place,
    :func:`earns_its_place`, or "auto" found this probe outside its range,
    :func:`rank_model_extrapolates`) gives the shape: the per-layer log2 relative need,
    centred on its mean over the layers, added to the uncalibrated rule's level (its mean log2
    need), so the layers' geometric-mean need stays the rule's; ``level_rank`` (the uniform rank of
    its calibrated level, :func:`calibrated_level`, or of a users' rule that did better,
    within the rank bounds, which the caller spends as a budget), ``level_source`` (that
    level's name and rank before the bounds; default the pooled level) and ``outside`` (the probe's
    features outside the calibration's range, :func:`features_outside`) only change the label."""
    # a calibration's rule level was measured on probes of its cells' size: those rows' statistics
    stats = result.layers if calibration is None else result.calibration_layers
    need = {n: signal_need(s.signal_effective_rank) for n, s in stats.items()}
    high = {n: max(float(s.signal_rank), need[n]) for n, s in stats.items()}
    if calibration is None:
        return need, need, high, UNCALIBRATED_LABEL
    quantized = result.quantization is not None
    metadata = calibration.metadata
    relative = (calibration.predict_log2_relative_need(layers, train_size, quantized)
                if _per_layer_used(calibration) else {})
    seen = ", ".join(metadata.get("models_seen", [])) or "?"
    named = sorted(outside, key=lambda f: f not in ("log2_width", "log2_train_size", "quantized"))[:3]
    extrapolating = (f"; extrapolating: {len(outside)} of {len(metadata['cell_features'])} probe features outside "
                     f"its range, e.g. {', '.join(named)}" if outside else "")
    if rank_model_unused:
        level, level_high = (statistics.mean(math.log2(v[n]) for n in layers) for v in (need, high))
        shift = statistics.mean(relative.values())
        center = {n: level + x - shift for n, x in relative.items()}
        label = (f"calibrated shape, uncalibrated level: the per-layer need of {calibration.name} (fitted on {seen}"
                 f"{extrapolating}) around the signal effective rank's level; its rank model {rank_model_unused}"
                 if level_rank is None else
                 f"calibrated shape, {_level_name(level_source)}: the per-layer need of {calibration.name} (fitted on "
                 f"{seen}{extrapolating}) at uniform r = {level_rank}'s parameters"
                 f"{_clipped(level_rank, level_source or ('pooled level', metadata.get('pooled_level')))}; "
                 f"its rank model {rank_model_unused}")
        return ({n: 2**x for n, x in center.items()}, {n: 2**x for n, x in center.items()},
                {n: 2 ** (level_high + relative[n] - shift) for n in layers}, label)
    log2_rank = calibration.predict_log2_rank(layers, train_size, quantized)
    error = metadata["cv"]["cell_leave_one_task_out"]["model_mae"]
    center = {n: log2_rank + relative.get(n, 0.0) for n in layers}
    label = f"calibrated: {calibration.name} (fitted on {seen}{extrapolating})"
    if "layer" in calibration.models and not relative:
        label += f"; its per-layer model {why_unused(metadata, 'layer')}, so every layer gets the same need"
    return ({n: 2**x for n, x in center.items()}, {n: 2 ** (x - error) for n, x in center.items()},
            {n: 2 ** (x + error) for n, x in center.items()}, label)


def _per_layer_used(calibration) -> bool:
    """Whether the calibration has a per-layer model that beat its baseline (its shape is used)."""
    return "layer" in calibration.models and earns_its_place(calibration.metadata, "layer")


def _level_name(level_source: tuple[str, int] | None) -> str:
    return "pooled level" if level_source is None else f"level of {level_source[0]}"


def _clipped(level_rank: int, level_source: tuple[str, int]) -> str:
    """", the pooled level r = 16 within the ranks asked for" when the bounds moved the level; else ""."""
    name, wanted = level_source
    return "" if wanted == level_rank else f", the {name} r = {wanted} within the ranks asked for"


def _loss_curve(result: ProbeResult, layers: dict[str, dict], calibration,
                train_size: int) -> tuple[dict[int, float] | None, float | None]:
    """(predicted relative eval loss per uniform rank, its error factor), or (None, None) uncalibrated
    or when the calibration's curve model is not 10 % better than its baseline (:func:`earns_its_place`)."""
    if calibration is None or not earns_its_place(calibration.metadata, "curve"):
        return None, None
    scores = calibration.metadata.get("cv", {}).get("curve_leave_one_task_out")
    curve = calibration.predict_loss_curve(layers, train_size, result.quantization is not None)
    if curve is None:
        return None, None
    return {r: round(v, 4) for r, v in curve.items()}, None if scores is None else round(math.exp(scores["model_mae"]), 4)


def _reasons(result: ProbeResult, layers: dict[str, LayerAdvice], trainable: int, uniform: dict[int, int]) -> list[str]:
    """Short plain-language statements about the evidence."""
    reasons = []
    by_group = {g: [a.need for a in layers.values() if layer_group(a.name) == g] for g in ("attention", "mlp")}
    if all(by_group.values()):
        attention, mlp = (statistics.mean(v) for v in (by_group["attention"], by_group["mlp"]))
        if max(attention, mlp) >= 1.5 * min(attention, mlp):
            more, less = ("MLP", "attention") if mlp > attention else ("attention", "MLP")
            reasons.append(f"{more} layers need {max(attention, mlp) / min(attention, mlp):.1f}x the rank of {less} "
                           f"layers ({max(attention, mlp):.1f} vs {min(attention, mlp):.1f} directions on average)")
        else:
            reasons.append(f"attention and MLP layers need similar ranks ({attention:.1f} vs {mlp:.1f} directions)")
    depths = sorted({a.depth for a in layers.values() if a.depth is not None})
    if len(depths) >= 3:
        thirds = [depths[i * len(depths) // 3:(i + 1) * len(depths) // 3] for i in range(3)]
        means = [statistics.mean(a.need for a in layers.values() if a.depth in third) for third in thirds]
        top = max(range(3), key=means.__getitem__)
        low = min(range(3), key=means.__getitem__)
        if means[top] >= 1.5 * means[low]:
            reasons.append(f"blocks {thirds[top][0]}-{thirds[top][-1]} need {means[top] / means[low]:.1f}x the rank "
                           f"of blocks {thirds[low][0]}-{thirds[low][-1]}")
    gain_shares = result.natural_gain_shares()
    if gain_shares:
        top = max(gain_shares, key=gain_shares.get)
        reasons.append(f"{top} layers carry {gain_shares[top]:.0%} of the natural gain (gradient "
                       f"over each layer's Fisher scale; a diagnostic, it does not set the ranks)")
    if result.growth and result.growth.get("checks"):
        reasons.append(growth_text(result))
    unconverged = [s for s in result.layers.values() if not s.converged]
    if unconverged:
        needed = [s.samples_needed for s in unconverged if s.samples_needed]
        more = f"; about {int(statistics.median(needed)):,} rows would steady them" if needed else ""
        reasons.append(f"{len(unconverged)} of {len(result.layers)} layers are dominated by sampling noise "
                       f"(noise share above 20%) at {result.num_rows} rows{_rows_dropped(result)}{more}")
    if 16 in uniform:
        reasons.append(f"the advice trains {trainable:,} parameters, {trainable / uniform[16]:.0%} of uniform r=16 "
                       f"({uniform[16]:,}) on the same layers")
    flagged = [s.name for s in result.layers.values()
               if s.quantization_share is not None and s.quantization_share > QUANTIZATION_SHARE_FLAG]
    if flagged:
        reasons.append(f"{len(flagged)} layers' 4-bit gradients are mostly not their full-precision gradients "
                       "(see the q-share column)")
    return reasons


def growth_text(result: ProbeResult) -> str:
    """One line on how a growing probe ended (:class:`advisor.probe_pass.Growth`)."""
    checks, stopped = result.growth["checks"], result.growth["stopped"]
    (first, _), (rows, share) = checks[0], checks[-1]
    path = f"the probe grew from {first} to {rows} rows" if rows > first else f"the probe stopped at {rows} rows"
    why = {"converged": f"where the median layer's noise share fell to {share:.0%} (converged)",
           "stopped falling": f"where the median layer's noise share stopped falling, at {share:.0%}: the rest is spread "
                              "between rows that more rows of this data do not average away",
           "row cap": f"its row cap, with the median layer's noise share at {share:.0%}",
           "time cap": f"its time cap, with the median layer's noise share at {share:.0%}"}.get(stopped, stopped)
    read = (f"; the calibration reads the statistics of the first {first} rows, as its cells were probed"
            if result.protocol_layers else "")
    return f"{path}, {why}{read}"


def _rows_dropped(result: ProbeResult) -> str:
    """" (k of the n drawn had no loss token within L tokens)" when the probe drew more rows than it
    kept (:func:`advisor.data.make_batches` drops them), else ""."""
    drawn = result.rows_drawn
    if drawn is None or result.num_rows >= drawn:
        return ""
    return f" ({drawn - result.num_rows} of the {drawn} drawn had no loss token within {result.max_length} tokens)"


def users_rules(result: ProbeResult, train_size: int) -> dict | None:
    """The uniform ranks the users' rules (:mod:`advisor.baselines`) give ``train_size`` rows of the
    probed dataset: Tinker's tokens rule on its loss tokens (the counted whole, rows cut at the
    probe's ``max_length``, scaled to ``train_size`` rows) over the probed layers, axolotl's
    thresholds on ``train_size``; None when the dataset was not counted."""
    counted = result.dataset_tokens
    if not counted or not counted.get("rows"):
        return None
    loss_tokens = round(counted["loss_tokens"] * train_size / counted["rows"])
    per_rank = uniform_params(1, {name: stats.shape for name, stats in result.layers.items()})
    return {"rows": train_size, "loss_tokens": loss_tokens, "max_length": result.max_length, "params_per_rank": per_rank,
            "tinker": tinker_rank(loss_tokens, per_rank), "axolotl": axolotl_rank(train_size)}


def capacity_evidence(metadata: dict, choice: dict) -> dict:
    """:attr:`Decision.level_evidence` of a :func:`advisor.calibrated.capacity_level` choice."""
    levels = metadata["capacity"]["levels"]

    def figures(name: str) -> dict:
        return {"regret_noises": levels[name]["regret_noises_mean"], "regret": levels[name]["regret_mean"],
                "params_vs_r16": levels[name]["params_vs_r16"]}

    return {"level": figures(choice["level"]), "beat": choice["beat"],
            "baseline": figures(choice["beat"]) if choice["beat"] else None}


def capacity_rank(choice: dict, rules: dict | None, train_size: int) -> int | None:
    """The uniform rank a :func:`advisor.calibrated.capacity_level` choice gives this data
    (``rules``: :func:`users_rules`); None when it needs the loss tokens and they were not counted."""
    name = choice["level"]
    if name.startswith("r = "):
        return int(name.removeprefix("r = "))
    if name == "axolotl thresholds":
        return axolotl_rank(train_size)
    if rules is None:
        return None
    if name == FITTED_TOKENS_RULE:
        return tokens_rank(rules["loss_tokens"], rules["params_per_rank"], choice["params_per_token"])
    return rules[USERS_RULES[name]]


def users_rules_text(rules: dict) -> str:
    """One line: the dataset's size and the ranks the users' rules give it."""
    per_row = rules["loss_tokens"] / rules["rows"] if rules["rows"] else 0
    return (f"your data: {rules['rows']:,} rows, {rules['loss_tokens']:,} loss tokens within {rules['max_length']} "
            f"tokens a row ({per_row:,.0f} per row); "
            f"Tinker's rule (adapter parameters >= loss tokens) gives uniform r = {rules['tinker']}, axolotl's "
            f"dataset-size thresholds r = {rules['axolotl']}")


def _check_options(budget, train_size, alpha_mode: str, min_rank: int, max_rank: int) -> None:
    """One-line errors for bad options, before any probing."""
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"unknown alpha_mode {alpha_mode!r}: use {' or '.join(ALPHA_MODES)}")
    if not 1 <= min_rank <= max_rank:
        raise ValueError(f"need 1 <= min_rank <= max_rank, got min_rank={min_rank}, max_rank={max_rank}")
    if train_size is not None and train_size < 1:
        raise ValueError(f"train_size must be positive, got {train_size}")
    parse_budget(budget, {})  # the syntax; the amount is checked against the layers later


def _check_alpha_model(calibration, declined: str | None = None) -> None:
    """``alpha_mode="calibrated"`` needs a calibration with an alpha model at least 10 % better than
    its baseline (the per-rank median scaling) leave-one-task-out (:func:`earns_its_place`, the
    rule ``calibration.fit`` ships a calibration by); ``declined``: why "auto" set the shipped one
    aside for this probe."""
    if calibration is None or "alpha" not in calibration.models:
        why = declined or ("no calibration" if calibration is None else f"{calibration.name} has no alpha model")
        raise ValueError(f"alpha_mode='calibrated' needs a calibration with an alpha model: {why}")
    if not earns_its_place(calibration.metadata, "alpha"):
        raise ValueError(f"alpha_mode='calibrated': the alpha model of {calibration.name} "
                         f"{why_unused(calibration.metadata, 'alpha')} (its baseline: the per-rank median scaling); "
                         f"use scale or rslora")


def _learning_rate(alpha_mode: str, calibration) -> dict:
    """{"value": the learning rate to train the advised adapter at, or None where none was measured;
    "why": one line}. A rate is stated only under ``alpha_mode="fixed"`` and from a calibration in use
    whose parametrization experiment measured it (metadata ``learning_rate``, with alpha = FIXED_ALPHA)."""
    measured = (calibration.metadata.get("learning_rate") or {}) if calibration is not None else {}
    if alpha_mode == "fixed" and measured.get("alpha") == FIXED_ALPHA:
        regret, best = measured["mean_regret"], f"{measured['learning_rate']:g}"
        others = ", ".join(f"{value:.1%} at {rate}" for rate, value in regret.items()
                           if rate != best)
        blocks = "/".join(map(str, measured["top_blocks"])) if any(measured["top_blocks"]) else "all"
        by_rank = dict(measured.get("best_by_rank") or {})  # rank (a string, as in JSON) -> its own best rate
        if len(set(by_rank.values())) > 1:
            which = ("the lowest mean loss above each run's best over the ranks tried; alone, "
                     + ", ".join(f"r={rank} did best at {rate:g}" for rank, rate in by_rank.items()))
        elif by_rank:
            which = f"the best single rate at every rank tried ({', '.join(map(str, measured['ranks']))})"
        else:  # a calibration written before each rank's best was recorded
            which = f"the lowest mean loss above each run's best over the ranks tried ({', '.join(map(str, measured['ranks']))})"
        return {"value": measured["learning_rate"], "by_rank": by_rank or None, "why": (
            f"learning rate {measured['learning_rate']:g}: under alpha = {FIXED_ALPHA:g} with alpha / r {which}, in "
            f"{calibration.name}'s parametrization experiment ({', '.join(measured['models'])} with its top {blocks} "
            f"blocks adapted, {len(measured['tasks'])} tasks, batch {'/'.join(map(str, measured['batch_size']))}, "
            f"{'/'.join(f'{e:g}' for e in measured['epochs'])} epoch; mean loss above each run's best "
            f"{regret[best]:.1%}, against {others})")}
    if alpha_mode == "fixed":
        return {"value": None, "why": (
            f"learning rate: not measured for this model; under alpha = {FIXED_ALPHA:g} with alpha / r the best rate "
            "moved little with rank in the calibration's experiment, so a short sweep (e.g. 3e-4, 1e-3, 3e-3) at the "
            "advised ranks finds it")}
    return {"value": None, "why": (
        f"learning rate: not stated for alpha mode {alpha_mode!r}, under which a layer's step grows with its rank, "
        f"so the best rate moves with the ranks; alpha mode 'fixed' (alpha = {FIXED_ALPHA:g}, alpha / r) keeps it "
        "the same at every rank")}


def advice_from_probe(result: ProbeResult, *, budget=None, train_size: int | None = None, alpha_mode: str = "fixed",
                      min_rank: int = MIN_RANK, max_rank: int = MAX_RANK, calibration="auto") -> Advice:
    """Advice from a finished probe (see the module docstring for the rules)."""
    _check_options(budget, train_size, alpha_mode, min_rank, max_rank)
    calibration = resolve_calibration(calibration, task=result.task)
    shapes = {name: stats.shape for name, stats in result.layers.items()}
    tokens_budget = parse_budget(budget, shapes)
    train_size = train_size or result.num_rows
    layer_dicts = ({name: asdict(stats) for name, stats in result.calibration_layers.items()}
                   if calibration is not None else {})
    declined = None
    if calibration is not None and calibration.automatic:
        gaps = domain_gaps(calibration, layer_dicts, train_size, result.quantization is not None, result.task)
        if gaps:  # the default does not extrapolate; an explicit calibration= still can
            declined = f"the shipped calibration {calibration.name} does not cover this probe ({'; '.join(gaps)})"
            calibration = None
    rank_model_unused = None  # why the rank model is not used, when the calibration is
    if calibration is not None:
        rank_model_unused = (None if earns_its_place(calibration.metadata, "cell") else why_unused(calibration.metadata, "cell"))
        if rank_model_unused is None and calibration.automatic:
            rank_model_unused = rank_model_extrapolates(calibration, layer_dicts, train_size,
                                                        result.quantization is not None)
        if rank_model_unused and not _per_layer_used(calibration):
            declined = f"{calibration.name} is not used: its rank model {rank_model_unused}, and " + (
                f"its per-layer model {why_unused(calibration.metadata, 'layer')}" if "layer" in calibration.models
                else "it has no per-layer model")
            calibration = None
    level_rank = (calibrated_level(calibration.metadata)
                  if rank_model_unused and calibration is not None and tokens_budget is None else None)
    level_by = ("calibration" if level_rank is not None else
                "rule" if tokens_budget is None and (min_rank, max_rank) == (MIN_RANK, MAX_RANK) else None)
    rules = users_rules(result, train_size)
    capacity = None  # (capacity_level's choice, its rank for this data), which then sets the level
    if rank_model_unused and calibration is not None and tokens_budget is None:
        choice = capacity_level(calibration.metadata)
        rank = None if choice is None else capacity_rank(choice, rules, train_size)
        capacity = None if rank is None else (choice, rank)
    users_level = None  # (name, rank) of a users' rule that did better than the level otherwise set
    if capacity:
        level_rank, level_by = capacity[1], None
    elif rules and level_by and rank_model_unused and calibration is not None:
        name = dominating_users_rule(calibration.metadata, level_by)
        if name:
            users_level = (name, rules[USERS_RULES[name]])
            level_rank = users_level[1]  # within the rank bounds below
    if level_rank is not None:
        level_rank = min(max(level_rank, min_rank), max_rank)
    outside = [] if calibration is None else features_outside(calibration, layer_dicts, train_size,
                                                               result.quantization is not None)
    level_source = (capacity[0]["level"], capacity[1]) if capacity else users_level
    need, need_low, need_high, label = _needs(result, layer_dicts, calibration, train_size, outside, rank_model_unused,
                                              level_rank, level_source)
    if declined:
        label = f"{label} ({declined})"
    level_budget = None if level_rank is None else uniform_params(level_rank, shapes)
    ranks, factor = allocate(need, shapes, tokens_budget or level_budget, min_rank, max_rank)
    scaling = None
    if alpha_mode == "calibrated":
        _check_alpha_model(calibration, declined)
        scaling = calibration.predict_scaling(layer_dicts, train_size, result.quantization is not None,
                                              ranks=sorted(set(ranks.values())))
    alpha = alphas(ranks, alpha_mode, scaling)
    layers = {
        name: LayerAdvice(
            name=name, layer_type=stats.layer_type, depth=stats.depth, shape=stats.shape, need=round(need[name], 3),
            rank=ranks[name], alpha=alpha[name],
            rank_low=min(ranks[name], rounded_rank(need_low[name], factor, min_rank, max_rank)),
            rank_high=max(ranks[name], rounded_rank(need_high[name], factor, min_rank, max_rank)),
            params=ranks[name] * sum(stats.shape),
        )
        for name, stats in result.layers.items()
    }
    trainable = sum(layer.params for layer in layers.values())
    uniform = {r: uniform_params(r, shapes) for r in UNIFORM_BASELINES}
    curve, curve_error = _loss_curve(result, layer_dicts, calibration, train_size)
    reasons = _reasons(result, layers, trainable, uniform)
    levels = (measured_levels(calibration.metadata, None if users_level else level_by)
              if rank_model_unused and calibration is not None and not capacity else None)
    learning_rate = _learning_rate(alpha_mode, calibration)
    reasons.append(learning_rate["why"])
    if rules:
        reasons.append(users_rules_text(rules))
    if capacity:
        reasons.append(capacity_level_text(calibration.metadata, capacity[0], level_rank))
    if users_level:
        reasons.append(users_rule_text(calibration.metadata, users_level[0], level_by, level_rank))
    if levels:
        reasons.append(levels)
    decision = Decision(
        level=("budget" if tokens_budget is not None else
               ("tokens rule" if capacity[0]["level"] == FITTED_TOKENS_RULE else "best users' rule") if capacity else
               "users' rule" if users_level else
               "pooled level" if level_rank is not None else "probe's rule" if calibration is None or rank_model_unused
               else "rank model"),
        shape=("uniform" if level_rank is not None and len(set(ranks.values())) == 1 else
               "probe" if calibration is None else
               "calibration" if rank_model_unused or _per_layer_used(calibration) else "uniform"),
        level_rank=level_rank, level_rule=capacity[0]["level"] if capacity else users_level[0] if users_level else None,
        calibration=None if calibration is None else calibration.name, declined=declined,
        rank_model_unused=rank_model_unused,
        outside=outside,
        level_evidence=capacity_evidence(calibration.metadata, capacity[0]) if capacity else None,
    )
    # names as short as PEFT's matching keeps exact over every module of the model
    known = None if result.untargeted_modules is None else [*result.layers, *result.untargeted_modules]
    return Advice(
        decision=decision,
        config=build_lora_config(ranks, alpha, task_type="SEQ_CLS" if result.task == TASK_SEQ_CLS else "CAUSAL_LM",
                                 use_rslora=alpha_mode == "rslora", base_model=result.model, known_modules=known),
        layers=layers, calibration=label, alpha_mode=alpha_mode, budget=tokens_budget, trainable_params=trainable,
        uniform_params=uniform, model_parameters=result.model_parameters, train_size=train_size,
        reasons=reasons, probe=result, loss_curve=curve,
        loss_curve_error=curve_error, level_rank=level_rank, users_rules=rules, learning_rate=learning_rate,
    )


def advise(model=None, dataset=None, *, budget=None, train_size: int | None = None, alpha_mode: str = "fixed",
           min_rank: int = MIN_RANK, max_rank: int = MAX_RANK, calibration="auto", return_advice: bool = False,
           probe_config: ProbeConfig | None = None, **probe_options):
    """Probe ``model`` on ``dataset`` and return the advised ``peft.LoraConfig``.

    ``budget``: trainable parameters (a number, "1.5M", or "r=16" for what uniform rank 16
    costs on the same layers), None for what the evidence supports. ``train_size``: rows you
    will train on (default: the rows the probe could sample from). ``alpha_mode``: "fixed"
    (default: alpha = 32 with alpha / r, and a learning rate where the calibration measured one),
    "scale" (alpha = 2r), "rslora", or "calibrated" (the calibration's best scaling at each rank).
    ``calibration``: "auto" (default: the calibration shipped in ``models/`` for the model's
    kind, causal LM or sequence classifier, when it covers the probe; else the uncalibrated
    rule, and the advice says why), None for the uncalibrated rule, or a calibration file.
    ``probe_config`` (:class:`advisor.probe_config.ProbeConfig`) is the probe's settings, used as
    given; without it ``probe_options`` set them (``target_modules``, ``task``, ``num_samples``,
    ``load_in_4bit``, ``seed``, ...; None leaves a setting unset), validated before anything is
    probed, and ``num_samples`` and ``max_length`` left unset default to how the calibration's cells
    were probed (its ``probe_protocol``, e.g. 32 rows x 128 tokens for the shipped causal-LM
    calibration), else (no calibration, one that does not record it, or "auto" with a
    training-set size it will decline) to the probe's. With ``num_samples`` unset the probe also
    grows from there (``max_samples`` DEFAULT_MAX_SAMPLES rows, ``max_seconds`` DEFAULT_MAX_SECONDS
    unless given; :class:`advisor.probe_pass.Growth`) until the layers' gradients converge; the
    calibration then reads the statistics of its first rows (``ProbeResult.calibration_layers``). ``tokenizer``, ``progress``,
    ``compare_full_precision`` and ``loss_fn`` go to :func:`advisor.probe` as they are. ``return_advice=True``
    returns the :class:`Advice` (config, per-layer evidence, reasons) instead of the config.
    """
    _check_options(budget, train_size, alpha_mode, min_rank, max_rank)  # before minutes of probing
    passed = {name: probe_options.pop(name) for name in PROBE_CALL_OPTIONS if name in probe_options}
    given = {name: value for name, value in probe_options.items() if value is not None}
    config = ProbeConfig.build(probe_config, **given)
    # a bad file fails before the probe; "auto" picks by the kind of model (a model loaded from a
    # name or path without task= is loaded as a causal LM)
    task = config.task or (model_task(model) if isinstance(model, torch.nn.Module) else TASK_CAUSAL_LM)
    calibration = resolve_calibration(calibration, task=task)
    if alpha_mode == "calibrated":
        _check_alpha_model(calibration)
    if train_size is None:  # None: the embedded data, whose rows count too
        dataset, train_size = _rows_and_size(dataset)
    # probe as the calibration's cells were, unless told otherwise or "auto" will decline it anyway
    declined_early = (calibration is not None and calibration.automatic and train_size is not None
                      and training_rows_gap(calibration, train_size))
    protocol = {} if declined_early or probe_config is not None else probe_protocol(calibration)
    config = replace(config, **{setting: protocol[setting] for setting in ("num_samples", "max_length")
                                if setting in protocol and setting not in given})
    if probe_config is None and "num_samples" not in given and not _distributed():  # grow until converged
        config = replace(config, max_samples=config.max_samples or max(DEFAULT_MAX_SAMPLES, config.num_samples),
                         max_seconds=config.max_seconds or DEFAULT_MAX_SECONDS)
    result = probe(model, dataset, config, **passed)
    advice = advice_from_probe(result, budget=budget, train_size=train_size, alpha_mode=alpha_mode,
                               min_rank=min_rank, max_rank=max_rank, calibration=calibration)
    return advice if return_advice else advice.config


def _distributed() -> bool:
    """Whether a torch.distributed group is initialised (a growing probe runs in one process)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rows_and_size(dataset) -> tuple[object, int | None]:
    """(what the probe should read, rows in the user's dataset), reading the dataset only once:
    any row source becomes its list of rows; a DataLoader stays as it is, sized by its dataset
    (None when it has no length)."""
    from advisor.data import is_batch_iterable, load_rows

    if is_batch_iterable(dataset):
        try:
            return dataset, len(dataset.dataset)
        except (AttributeError, TypeError):
            return dataset, None
    rows = load_rows(dataset)
    return rows, len(rows)
