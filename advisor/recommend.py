"""The advice: from measured spectra to per-layer LoRA ranks and alpha, and the Decision that says why.

Which calibration applies, what sets the rank level and where the shape across layers comes
from are the rules of :mod:`advisor.rules`: :func:`advisor.rules.decide` makes the
:class:`advisor.rules.Decision` once, and everything here reads it.

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
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, replace
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
from advisor.calibrated import (
    capacity_level_text,
    earns_its_place,
    layer_group,
    measured_levels,
    probe_protocol,
    resolve_calibration,
    training_rows_gap,
    users_rule_text,
    why_unused,
)
from advisor.loading import TASK_CAUSAL_LM, TASK_SEQ_CLS, model_task
from advisor.probe_config import ProbeConfig
from advisor.probe_pass import ProbeResult, probe
from advisor.quantized import QUANTIZATION_SHARE_FLAG
from advisor.rules import MAX_RANK, MIN_RANK, Decision, decide

ALPHA_MODES = ("fixed", "scale", "rslora", "calibrated")
UNIFORM_BASELINES = (4, 8, 16, 32)
# advise() with no num_samples grows its probe from the calibration's rows (ProbeConfig.max_samples) up to these
DEFAULT_MAX_SAMPLES, DEFAULT_MAX_SECONDS = 256, 300.0
PROBE_CALL_OPTIONS = ("tokenizer", "progress", "compare_full_precision", "loss_fn")  # probe() arguments, not settings


@dataclass
class LayerAdvice:
    """The advice for one layer; ``params`` = rank * (in + out), the adapter's trainable weights."""

    name: str
    layer_type: str
    depth: int | None
    shape: tuple[int, int]  # (out, in)
    need: float  # directions the layer needs (advisor.rules)
    rank: int
    alpha: float
    rank_low: int
    rank_high: int
    params: int


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
        every_block = measured.get("every_block") or []  # each (all-block cell, rank)'s own best rate
        return {"value": measured["learning_rate"], "by_rank": by_rank or None, "top_blocks": blocks,
                "every_block": {str(found["rank"]): found["best"] for found in every_block} or None, "why": (
            f"learning rate {measured['learning_rate']:g}: under alpha = {FIXED_ALPHA:g} with alpha / r {which}, in "
            f"{calibration.name}'s parametrization experiment ({', '.join(measured['models'])} with its top {blocks} "
            f"blocks adapted, {len(measured['tasks'])} tasks, batch {'/'.join(map(str, measured['batch_size']))}, "
            f"{'/'.join(f'{e:g}' for e in measured['epochs'])} epoch; mean loss above each run's best "
            f"{regret[best]:.1%}, against {others})" + "".join(
                f"; with every block adapted, on {found['task']}, r={found['rank']} did best at {found['best']:g} of "
                f"{', '.join(f'{rate:g}' for rate in found['rates'])}" for found in every_block))}
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
    """Advice from a finished probe: the Decision of :func:`advisor.rules.decide`, ranks allocated along its
    need, alpha, the learning rate and the reasons."""
    _check_options(budget, train_size, alpha_mode, min_rank, max_rank)
    calibration = resolve_calibration(calibration, task=result.task)
    shapes = {name: stats.shape for name, stats in result.layers.items()}
    tokens_budget = parse_budget(budget, shapes)
    train_size = train_size or result.num_rows
    ruling = decide(result, calibration, budget_params=tokens_budget, train_size=train_size, min_rank=min_rank,
                    max_rank=max_rank)
    calibration, decision, layer_dicts, rules = ruling.calibration, ruling.decision, ruling.layer_dicts, ruling.users_rules
    level_rank, declined = decision.level_rank, decision.declined
    level_budget = None if level_rank is None else uniform_params(level_rank, shapes)
    ranks, factor = allocate(ruling.need, shapes, tokens_budget or level_budget, min_rank, max_rank)
    if level_rank is not None and len(set(ranks.values())) == 1:  # a level at a rank bound: every layer the same
        decision = replace(decision, shape="uniform")
    scaling = None
    if alpha_mode == "calibrated":
        _check_alpha_model(calibration, declined)
        scaling = calibration.predict_scaling(layer_dicts, train_size, result.quantization is not None,
                                              ranks=sorted(set(ranks.values())))
    alpha = alphas(ranks, alpha_mode, scaling)
    layers = {
        name: LayerAdvice(
            name=name, layer_type=stats.layer_type, depth=stats.depth, shape=stats.shape,
            need=round(ruling.need[name], 3), rank=ranks[name], alpha=alpha[name],
            rank_low=min(ranks[name], rounded_rank(ruling.need_low[name], factor, min_rank, max_rank)),
            rank_high=max(ranks[name], rounded_rank(ruling.need_high[name], factor, min_rank, max_rank)),
            params=ranks[name] * sum(stats.shape),
        )
        for name, stats in result.layers.items()
    }
    trainable = sum(layer.params for layer in layers.values())
    uniform = {r: uniform_params(r, shapes) for r in UNIFORM_BASELINES}
    curve, curve_error = _loss_curve(result, layer_dicts, calibration, train_size)
    reasons = _reasons(result, layers, trainable, uniform)
    capacity, users_level = ruling.capacity_choice, ruling.users_level
    levels = (measured_levels(calibration.metadata, None if users_level else ruling.level_by)
              if decision.rank_model_unused and calibration is not None and not capacity else None)
    learning_rate = _learning_rate(alpha_mode, calibration)
    reasons.append(learning_rate["why"])
    if rules:
        reasons.append(users_rules_text(rules))
    if capacity:
        reasons.append(capacity_level_text(calibration.metadata, capacity, level_rank))
    if users_level:
        reasons.append(users_rule_text(calibration.metadata, users_level[0], ruling.level_by, level_rank))
    if levels:
        reasons.append(levels)
    # names as short as PEFT's matching keeps exact over every module of the model
    known = None if result.untargeted_modules is None else [*result.layers, *result.untargeted_modules]
    return Advice(
        decision=decision,
        config=build_lora_config(ranks, alpha, task_type="SEQ_CLS" if result.task == TASK_SEQ_CLS else "CAUSAL_LM",
                                 use_rslora=alpha_mode == "rslora", base_model=result.model, known_modules=known),
        layers=layers, calibration=ruling.label, alpha_mode=alpha_mode, budget=tokens_budget, trainable_params=trainable,
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
