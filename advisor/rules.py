"""The rules: which calibration a probe's advice may use, what sets the rank level and where the
shape across layers comes from, made once by :func:`decide` as a :class:`Decision`.

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
  instead: its tokens rule (adapter parameters per loss token of the whole dataset, counted over
  every probed layer, or over as many of the probed blocks as the cells adapted when the
  calibration's transfer check found the need carried over to every block as rank) when, each
  task held out, it beat the users' best baseline (Tinker's rule, axolotl's thresholds and the
  uniform habits: the cheapest within one seed noise of the lowest regret), else that baseline; the level
  then depends on the dataset's counted tokens, not on the probe, so a 4-bit base and full
  precision get the same level.

The uncertainty interval of a rank: uncalibrated, from the rank of c * signal effective rank
up to that of c * signal rank (the count of directions above the noise edge), so it only
reaches upward; calibrated, the rank at log2 need -/+ the regression's leave-one-task-out
mean absolute error; calibrated shape only, as uncalibrated: from the need up to 2 ** (the mean
log2 signal rank + the layer's centred log2 relative need).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from advisor.allocation import uniform_params
from advisor.baselines import axolotl_rank, tinker_rank, tokens_rank
from advisor.calibrated import (
    FITTED_TOKENS_RULE,
    USERS_RULES,
    calibrated_level,
    capacity_level,
    domain_gaps,
    dominating_users_rule,
    earns_its_place,
    features_outside,
    rank_model_extrapolates,
    why_unused,
)
from advisor.layers import block_depth
from advisor.probe_pass import ProbeResult

UNCALIBRATED_LABEL = "uncalibrated: rank = next power of two >= signal effective rank"
MIN_RANK, MAX_RANK = 2, 64  # the advised ranks' default bounds


def signal_need(signal_effective_rank: float) -> float:
    """The uncalibrated need of a layer (directions): its signal effective rank, at least 1."""
    return max(signal_effective_rank, 1.0)


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
class Ruling:
    """What :func:`decide` hands to the stages after it: the :class:`Decision` (its ``shape`` as
    the rules set it; allocation may still put every layer at one rank), the calibration in use
    (None: uncalibrated), the probe's statistics as that calibration reads them
    (``layer_dicts``), the users' rules for this data (:func:`users_rules`), each layer's need
    with its low and high ends (directions), the one-sentence ``label``, and what the reasons
    compare the level with: ``level_by`` (the calibration's pooled level or the probe's rule),
    the capacity choice (:func:`advisor.calibrated.capacity_level`) and a users' rule that set
    the level ((name, rank) before the bounds)."""

    decision: Decision
    calibration: object | None
    layer_dicts: dict[str, dict]
    users_rules: dict | None
    need: dict[str, float]
    need_low: dict[str, float]
    need_high: dict[str, float]
    label: str
    level_by: str | None = None
    capacity_choice: dict | None = None
    users_level: tuple[str, int] | None = None


def decide(result: ProbeResult, calibration, *, budget_params: int | None, train_size: int,
           min_rank: int = MIN_RANK, max_rank: int = MAX_RANK) -> Ruling:
    """The rules of the module docstring applied to a finished probe: ``calibration`` resolved
    (:func:`advisor.calibrated.resolve_calibration`; "auto"'s may be declined here),
    ``budget_params`` the user's budget in trainable parameters (None: none), ``train_size`` the
    rows the user will train on, ``min_rank`` / ``max_rank`` the ranks asked for."""
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
                  if rank_model_unused and calibration is not None and budget_params is None else None)
    level_by = ("calibration" if level_rank is not None else
                "rule" if budget_params is None and (min_rank, max_rank) == (MIN_RANK, MAX_RANK) else None)
    rules = users_rules(result, train_size)
    capacity = None  # (capacity_level's choice, its rank for this data), which then sets the level
    if rank_model_unused and calibration is not None and budget_params is None:
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
    decision = Decision(
        level=("budget" if budget_params is not None else
               ("tokens rule" if capacity[0]["level"] == FITTED_TOKENS_RULE else "best users' rule") if capacity else
               "users' rule" if users_level else
               "pooled level" if level_rank is not None else "probe's rule" if calibration is None or rank_model_unused
               else "rank model"),
        shape=("probe" if calibration is None else
               "calibration" if rank_model_unused or _per_layer_used(calibration) else "uniform"),
        level_rank=level_rank, level_rule=capacity[0]["level"] if capacity else users_level[0] if users_level else None,
        calibration=None if calibration is None else calibration.name, declined=declined,
        rank_model_unused=rank_model_unused,
        outside=outside,
        level_evidence=capacity_evidence(calibration.metadata, capacity[0]) if capacity else None,
    )
    return Ruling(decision=decision, calibration=calibration, layer_dicts=layer_dicts, users_rules=rules, need=need,
                  need_low=need_low, need_high=need_high, label=label, level_by=level_by,
                  capacity_choice=capacity[0] if capacity else None, users_level=users_level)


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


def users_rules(result: ProbeResult, train_size: int) -> dict | None:
    """The uniform ranks the users' rules (:mod:`advisor.baselines`) give ``train_size`` rows of the
    probed dataset: Tinker's tokens rule on its loss tokens (the counted whole, rows cut at the
    probe's ``max_length``, scaled to ``train_size`` rows) over the probed layers, axolotl's
    thresholds on ``train_size``; ``blocks``: the transformer blocks the probed layers sit in; None
    when the dataset was not counted."""
    counted = result.dataset_tokens
    if not counted or not counted.get("rows"):
        return None
    loss_tokens = round(counted["loss_tokens"] * train_size / counted["rows"])
    per_rank = uniform_params(1, {name: stats.shape for name, stats in result.layers.items()})
    blocks = len({depth for name in result.layers if (depth := block_depth(name)) is not None})
    return {"rows": train_size, "loss_tokens": loss_tokens, "max_length": result.max_length, "params_per_rank": per_rank,
            "blocks": blocks, "tinker": tinker_rank(loss_tokens, per_rank), "axolotl": axolotl_rank(train_size)}


def capacity_evidence(metadata: dict, choice: dict) -> dict:
    """:attr:`Decision.level_evidence` of a :func:`advisor.calibrated.capacity_level` choice."""
    levels = metadata["capacity"]["levels"]

    def figures(name: str) -> dict:
        return {"regret_noises": levels[name]["regret_noises_mean"], "regret": levels[name]["regret_mean"],
                "params_vs_r16": levels[name]["params_vs_r16"]}

    return {"level": figures(choice["level"]), "beat": choice["beat"],
            "baseline": figures(choice["beat"]) if choice["beat"] else None, "blocks": choice.get("blocks")}


def capacity_rank(choice: dict, rules: dict | None, train_size: int) -> int | None:
    """The uniform rank a :func:`advisor.calibrated.capacity_level` choice gives this data
    (``rules``: :func:`users_rules`); None when it needs the loss tokens and they were not counted.
    The tokens rule counts its parameters per loss token over every probed layer, or, when the
    choice's ``blocks`` says the need carried over as rank, over that many of the probed blocks
    (the adapter's parameters per rank times ``blocks`` over its blocks)."""
    name = choice["level"]
    if name.startswith("r = "):
        return int(name.removeprefix("r = "))
    if name == "axolotl thresholds":
        return axolotl_rank(train_size)
    if rules is None:
        return None
    if name == FITTED_TOKENS_RULE:
        per_rank, cells_blocks = rules["params_per_rank"], choice.get("blocks")
        if cells_blocks and rules.get("blocks", 0) > cells_blocks:  # the need carried over as rank: count per block
            per_rank = max(1, round(per_rank * cells_blocks / rules["blocks"]))
        return tokens_rank(rules["loss_tokens"], per_rank, choice["params_per_token"])
    return rules[USERS_RULES[name]]
