"""The calibrated regression: probe features in, advised log2 rank out, from a verified file.

A calibration is two files in ``models/``: ``NAME.joblib`` (the fitted scikit-learn models) and
``NAME.json`` (feature names, library versions, a hash of the training records, cross-validated
scores and the ``sha256`` of the joblib file). Unpickling runs code, so :func:`load_calibration`
computes the joblib file's sha256 and refuses to unpickle a file whose hash differs from the
one its JSON states.

Features are scale-free so that one regression can serve models of different widths:

- cell features (one vector per probed model and dataset): means over the target layers of
  effective rank / min(out, in), stable rank / min(out, in), signal effective rank (log2 of
  1 + it), noise fraction, split-half subspace overlap and rank growth; the same means for the
  attention and the MLP layers separately; log2 of the training-set size; log2 of the median
  layer width; whether the base is quantized;
- layer features: the same per-layer statistics, the layer group (attention = 1), relative depth
  in [0, 1], log2 of out and in, log2 of the training-set size, quantized or not;
- the alpha model's features (best PEFT scaling at a rank): the cell features plus log2 r and
  its square;
- loss-curve features: the same, plus each cell feature times log2 r and times its square, so
  that the curve's shape (not only its height) can depend on the probe.

``probe_tasks`` in the JSON names the kinds of model (causal-lm, seq-cls) the calibration was
fitted on: ``models/`` may ship one calibration per kind, :func:`shipped_calibration` picks the
one for the probe, and :func:`domain_gaps` declines a calibration for a kind it never saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def shipped_models_dir() -> Path:
    """Where the shipped calibrations are: the checkout's ``models/`` beside the package, else an
    installed wheel's copy of it (package data ``advisor/calibrations``, :mod:`importlib.resources`)."""
    checkout = Path(__file__).resolve().parent.parent / "models"
    if any(checkout.glob("*.json")):
        return checkout
    try:
        files = list(importlib.resources.files("advisor.calibrations").iterdir())
    except ModuleNotFoundError:  # neither a checkout with models/ nor a wheel: report the checkout's path
        return checkout
    found = [Path(str(entry)).parent for entry in files if entry.name.endswith(".json")]
    return found[0] if found else checkout


MODELS_DIR = shipped_models_dir()
FEATURE_SCOPES = ("all", "attention", "mlp")  # cell features: each statistic's mean over these layers
LAYER_STATISTICS = ("erank_ratio", "stable_ratio", "log2_signal_erank", "noise_fraction", "subspace_overlap", "rank_growth")


def layer_group(name: str) -> str:
    """``"attention"`` when the module name contains ``attn`` or ``attention``, else ``"mlp"``."""
    lowered = name.lower()
    return "attention" if "attn" in lowered or "attention" in lowered else "mlp"


def _statistics(stats: dict) -> dict[str, float]:
    width = min(stats["shape"])
    growth = stats.get("rank_growth")
    return {
        "erank_ratio": stats["effective_rank"] / width,
        "stable_ratio": stats["stable_rank"] / width,
        "log2_signal_erank": math.log2(1 + stats["signal_effective_rank"]),
        "noise_fraction": stats["noise_fraction"],
        "subspace_overlap": stats["subspace_overlap"],
        "rank_growth": growth if growth is not None and math.isfinite(growth) else 1.0,
    }


def cell_features(layers: dict[str, dict], train_size: int, quantized: bool) -> dict[str, float]:
    """One feature vector for a probed (model, dataset); ``layers`` maps names to LayerStats fields."""
    per_layer = {name: _statistics(stats) for name, stats in layers.items()}
    features = {}
    for scope in FEATURE_SCOPES:
        chosen = [v for name, v in per_layer.items() if scope == "all" or layer_group(name) == scope]
        chosen = chosen or list(per_layer.values())  # a model without one group: use all layers
        for key in LAYER_STATISTICS:
            features[f"{scope}_{key}"] = sum(v[key] for v in chosen) / len(chosen)
    widths = sorted(min(stats["shape"]) for stats in layers.values())
    features["log2_train_size"] = math.log2(train_size)
    features["log2_width"] = math.log2(widths[len(widths) // 2])
    features["quantized"] = float(quantized)
    return features


def layer_features(layers: dict[str, dict], train_size: int, quantized: bool) -> dict[str, dict[str, float]]:
    """One feature vector per layer (see the module docstring)."""
    depths = [stats["depth"] for stats in layers.values() if stats.get("depth") is not None]
    deepest = max(depths) if depths else 0
    features = {}
    for name, stats in layers.items():
        row = _statistics(stats)
        depth = stats.get("depth")
        row["attention"] = float(layer_group(name) == "attention")
        row["relative_depth"] = (depth / deepest) if depth is not None and deepest else 0.0
        row["log2_out"] = math.log2(stats["shape"][0])
        row["log2_in"] = math.log2(stats["shape"][1])
        row["log2_train_size"] = math.log2(train_size)
        row["quantized"] = float(quantized)
        features[name] = row
    return features


def curve_rank_features(rank: int) -> dict[str, float]:
    """The rank terms of the alpha and loss-curve models: log2 r and its square (a curve may bend)."""
    x = math.log2(rank)
    return {"log2_rank": x, "log2_rank_squared": x * x}


def curve_features(features: dict[str, float], rank: int) -> dict[str, float]:
    """The loss-curve model's features at uniform rank r: the cell ``features``, the rank terms,
    and every cell feature times each rank term. Without the products a linear model could only
    raise or lower one shared curve: every probe would get the same shape."""
    terms = curve_rank_features(rank)
    products = {f"{name}*{term}": value * terms[term] for term in terms for name, value in features.items()}
    return {**features, **terms, **products}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Calibration:
    """A verified calibration: the fitted models and their metadata."""

    name: str
    metadata: dict
    models: dict  # "cell": log2 optimal uniform rank; "layer": log2 relative need; "curve": log loss over the
    # best rank's; "alpha" (when fitted): log2 best PEFT scaling at a rank
    automatic: bool = False  # chosen by calibration="auto": used only for probes it covers (domain_gaps)

    def saw_quantized(self) -> bool:
        """Whether the fit saw a quantized base (its ``quantized`` feature reached 1)."""
        ranges = self.metadata.get("cell_feature_ranges") or {}
        return "quantized" in ranges and ranges["quantized"][1] >= 1

    def quantized_input(self, quantized: bool) -> bool:
        """The ``quantized`` feature the models are given: a quantized base is read as full
        precision by a calibration that saw none, so QLoRA gets the same level as full precision
        (quantizing the base changes the gradient a little, not how much there is to learn)."""
        return bool(quantized) and self.saw_quantized()

    def predict_log2_rank(self, layers: dict[str, dict], train_size: int, quantized: bool) -> float:
        features = cell_features(layers, train_size, self.quantized_input(quantized))
        row = [[features[k] for k in self.metadata["cell_features"]]]
        return float(self.models["cell"].predict(row)[0])

    def predict_log2_relative_need(self, layers: dict[str, dict], train_size: int, quantized: bool) -> dict[str, float]:
        features = layer_features(layers, train_size, self.quantized_input(quantized))
        names = list(features)
        rows = [[features[name][k] for k in self.metadata["layer_features"]] for name in names]
        return dict(zip(names, map(float, self.models["layer"].predict(rows))))

    def predict_loss_curve(self, layers: dict[str, dict], train_size: int, quantized: bool,
                           ranks=(1, 2, 4, 8, 16, 32, 64)) -> dict[int, float] | None:
        """Predicted eval loss at each uniform rank over the predicted best one's (1.0 at the
        predicted best rank; 1.05 = 5 % worse); None for a calibration without a curve model."""
        if "curve" not in self.models:
            return None
        features = cell_features(layers, train_size, self.quantized_input(quantized))
        rows = [[curve_features(features, r)[k] for k in self.metadata["curve_features"]] for r in ranks]
        log_ratios = [float(v) for v in self.models["curve"].predict(rows)]
        return {r: math.exp(v - min(log_ratios)) for r, v in zip(ranks, log_ratios)}

    def predict_scaling(self, layers: dict[str, dict], train_size: int, quantized: bool,
                        ranks=(1, 2, 4, 8, 16, 32, 64)) -> dict[int, float] | None:
        """The best PEFT scaling s (alpha / r without rsLoRA) at each rank, at the sweeps' learning
        rate, kept within the best scalings the fit saw (a linear model extrapolates without
        bound; the sweeps say nothing outside what they tried); None without an alpha model."""
        if "alpha" not in self.models:
            return None
        features = cell_features(layers, train_size, self.quantized_input(quantized))
        rows = [[{**features, **curve_rank_features(r)}[k] for k in self.metadata["alpha_features"]] for r in ranks]
        low, high = self.metadata["alpha_target_range"]
        return {r: 2.0 ** min(max(float(v), low), high) for r, v in zip(ranks, self.models["alpha"].predict(rows))}


MIN_GAIN = 0.10  # a model is used only when its leave-one-task-out error is 10 % below its baseline's


def beats_baseline(scores: dict, min_gain: float = MIN_GAIN) -> bool:
    """Whether cross-validated ``scores`` (``model_mae``, ``baseline_mae``) put the model at least
    ``min_gain`` (a share) below its baseline: less is a constant dressed up as a measurement."""
    return scores["model_mae"] < (1 - min_gain) * scores["baseline_mae"]


def required_gain(metadata: dict) -> float:
    """The share by which each model of a calibration must beat its baseline: the ``min_gain``
    its fit was written with (``calibration.fit --min-gain``), else MIN_GAIN."""
    value = metadata.get("min_gain")
    return float(value) if isinstance(value, (int, float)) and 0 <= value < 1 else MIN_GAIN


def earns_its_place(metadata: dict, kind: str) -> bool:
    """Whether the calibration's ``kind`` model (cell, layer, curve, alpha) may be used: it has a
    leave-one-task-out score (``fit`` records none with fewer than 2 tasks, or when every fold
    would train on one cell) and that error is :func:`required_gain` below its baseline's."""
    scores = (metadata.get("cv") or {}).get(f"{kind}_leave_one_task_out")
    return bool(scores) and beats_baseline(scores, required_gain(metadata))


def why_unused(metadata: dict, kind: str) -> str:
    """Why the ``kind`` model fails :func:`earns_its_place`, to follow "its rank model" in a message."""
    scores = (metadata.get("cv") or {}).get(f"{kind}_leave_one_task_out")
    if not scores:
        return "has no leave-one-task-out score (fewer than 2 tasks, or every fold would train on one cell)"
    return (f"is not {required_gain(metadata):.0%} better than its baseline leave-one-task-out "
            f"({scores['model_mae']:.3f} against {scores['baseline_mae']:.3f})")


def span(low: str, high: str) -> str:
    """A range as written in the advice: "2-8", or one value when both ends read the same."""
    return low if low == high else f"{low}-{high}"


def calibrated_level(metadata: dict) -> int | None:
    """The uniform rank whose adapter parameters set the level of advice with no budget, when the
    calibration's rank model is not used, or None (the probe's rule sets it): its ``pooled_level``
    (the label's rule on all its cells pooled, ``calibration.level_study``), used only when, leave
    one task out (``levels["pooled"]``), that choice's mean regret in seed noises was
    :func:`required_gain` below the rule's (``levels["rule"]``) on the same cells."""
    levels = metadata.get("levels") or {}
    pooled, rule, rank = levels.get("pooled") or {}, levels.get("rule") or {}, metadata.get("pooled_level")
    scores = {"model_mae": pooled.get("regret_noises_mean"), "baseline_mae": rule.get("regret_noises_mean")}
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or None in scores.values():
        return None
    return rank if beats_baseline(scores, required_gain(metadata)) else None


FITTED_TOKENS_RULE = "tokens rule, fitted"  # calibration.level_study's name for the calibrated tokens rule
EVA_LEVEL = "EVA at r = 16's budget"  # calibration.level_study's name for PEFT's EVA trained at uniform r = 16's budget
CAPACITY_BASELINES = ("Tinker tokens rule", "axolotl thresholds", "r = 8", "r = 16", "r = 32", "r = 64")
MIN_CAPACITY_TASKS = 3  # leave one task out over fewer would score each choice on one or two folds


def capacity_level(metadata: dict) -> dict | None:
    """What sets the rank level from the calibration's capacity cells (``capacity``, written by
    ``calibration.fit``: each rank trained at its best learning rate, where rank can be the
    limit), by each choice's mean regret in seed noises and parameters with each task held out.

    The users' best baseline is the label's rule applied to :data:`CAPACITY_BASELINES` (Tinker's
    rule, axolotl's thresholds, the uniform habits): the one with the fewest parameters among those
    whose mean regret is within one seed noise of the lowest. The calibrated tokens rule (the fitted
    ``params_per_token``) replaces it when it did better on one count and tied on the other: a mean
    regret :func:`required_gain` lower with parameters at most that share above (ranks are powers
    of two, so parameter counts of equal intent differ by rounding), or a mean regret within one seed
    noise with :func:`required_gain` fewer parameters. Returns {"level": the ``levels`` entry, "beat": the baseline it beat or None,
    "params_per_token", "blocks"}; ``blocks``: when the capacity's ``transfer`` check found the
    ratio carried over to an adapter on every block as rank, the blocks the cells adapted, over
    which the ratio then counts parameters (:func:`transfer_blocks`), else None. None when the
    metadata has no capacity levels over at least :data:`MIN_CAPACITY_TASKS` tasks."""
    capacity = metadata.get("capacity") or {}
    levels = capacity.get("levels") or {}
    if len(capacity.get("tasks") or ()) < MIN_CAPACITY_TASKS:
        return None
    scored = {name: summary for name, summary in levels.items()
              if name in (FITTED_TOKENS_RULE, *CAPACITY_BASELINES) and summary.get("regret_noises_mean") is not None}
    baselines = [name for name in CAPACITY_BASELINES if name in scored]
    if not baselines:
        return None
    regret = {name: scored[name]["regret_noises_mean"] for name in scored}
    params = {name: scored[name]["params_vs_r16"] for name in scored}
    floor = min(regret[name] for name in baselines)
    best = min((name for name in baselines if regret[name] <= floor + 1), key=lambda name: (params[name], regret[name]))
    ratio, gain = capacity.get("params_per_token"), required_gain(metadata)
    choice = {"level": best, "beat": None, "params_per_token": ratio, "blocks": transfer_blocks(capacity)}
    if FITTED_TOKENS_RULE in scored and isinstance(ratio, (int, float)) and ratio > 0:
        fitted = FITTED_TOKENS_RULE
        lower_loss = regret[fitted] < (1 - gain) * regret[best] and params[fitted] <= (1 + gain) * params[best]
        fewer_params = regret[fitted] <= regret[best] + 1 and params[fitted] < (1 - gain) * params[best]
        if lower_loss or fewer_params:
            return {**choice, "level": fitted, "beat": best}
    return choice


def transfer_blocks(capacity: dict) -> int | None:
    """The blocks the capacity cells adapted, when the ``transfer`` check (``calibration.transfer_study``:
    cells trained again with every block adapted) found the tokens rule's need carried over as rank,
    not as parameters; then an adapter on more blocks spends the cells' rank, the ratio counted over
    that many of its blocks. None when the check found parameters, or was not run."""
    transfer = capacity.get("transfer") or {}
    blocks = transfer.get("blocks")
    usable = transfer.get("reading") == "as rank" and isinstance(blocks, int) and not isinstance(blocks, bool)
    return blocks if usable and blocks > 0 else None


def capacity_level_text(metadata: dict, choice: dict, rank: int) -> str:
    """Why the level is ``choice`` (:func:`capacity_level`; ``rank``: as spent for this data), with
    what it and the baseline it beat (or the fitted rule it did not lose to) cost held out."""
    capacity = metadata["capacity"]
    levels, tasks = capacity["levels"], len(capacity["tasks"])
    where = (f"on the {levels[choice['level']]['cells']} capacity cells ({tasks} tasks) behind the calibration, each "
             "task held out in turn")
    ours = levels[choice["level"]]
    if choice["level"] == FITTED_TOKENS_RULE:
        beaten = levels[choice["beat"]]
        counted = "" if not choice.get("blocks") else (
            f", counted over {choice['blocks']} of your model's blocks as the cells adapted them (trained again with "
            "every block adapted, the need carried over as rank, not as parameters)")
        return (f"the rank level is the calibrated tokens rule, {choice['params_per_token']:g} adapter parameters per "
                f"loss token of your data{counted}: uniform r = {rank}; {where}, it cost {_regret(ours, long=True)} above each "
                f"cell's best rank with {ours['params_vs_r16']:.2f}x uniform r = 16's parameters, where the cheapest rule "
                f"you could apply by hand within one seed noise of the best of them, {choice['beat']}, cost "
                f"{_regret(beaten, long=False)} with {beaten['params_vs_r16']:.2f}x" + eva_text(levels, choice["level"])
                + eva_at_level_text(capacity))
    text = (f"the rank level is {choice['level']}'s, uniform r = {rank} for your data: {where}, it cost "
            f"{_regret(ours, long=True)} above each cell's best rank with {ours['params_vs_r16']:.2f}x uniform r = 16's "
            "parameters, the fewest of the rules you could apply by hand that came within one seed noise of the "
            "best of them")
    fitted = levels.get(FITTED_TOKENS_RULE)
    if fitted and fitted.get("regret_noises_mean") is not None:
        gain = f"{required_gain(metadata):.0%}"
        text += (f"; the calibrated tokens rule cost {_regret(fitted, long=False)} with {fitted['params_vs_r16']:.2f}x: "
                 f"neither {gain} less loss with at most {gain} more parameters nor, within one seed noise, {gain} "
                 "fewer parameters, so the advice does not use it")
    return text + eva_text(levels, choice["level"])


def eva_text(levels: dict, ours: str) -> str:
    """How PEFT's EVA at uniform r = 16's budget (``levels[EVA_LEVEL]``, trained in the capacity cells) compared
    with the level ``ours`` on both of the table's measures, or "" when the calibration did not measure it. EVA
    fixes the budget (r = 16's) and sets the initialisation and the spread over the layers: it is quoted beside
    the level rules, not chosen among them."""
    eva, level = levels.get(EVA_LEVEL) or {}, levels[ours]
    if eva.get("regret_noises_mean") is None or level.get("regret_noises_mean") is None:
        return ""

    def compared(key: str) -> str:
        return "less" if eva[key] < level[key] else "more"

    params = "more" if eva["params_vs_r16"] > level["params_vs_r16"] else "no more"
    return (f"; PEFT's EVA initialisation at uniform r = 16's budget (init_lora_weights=\"eva\"), trained on "
            f"{eva['cells']} of these cells, cost {_regret(eva, long=False)} with {eva['params_vs_r16']:.2f}x: "
            f"{compared('regret_noises_mean')} loss than this level in seed noises and {compared('regret_mean')} in % "
            f"of the loss, with {params} parameters")


def eva_at_level_text(capacity: dict) -> str:
    """How PEFT's EVA at the tokens rule's own budget did against that uniform rank (the capacity's
    ``eva_at_level``, ``calibration.eva_advised_study``), or "" when the calibration did not measure it."""
    eva = capacity.get("eva_at_level")
    if not eva or not eva.get("cells"):
        return ""
    return (f"; at this level's own rank, EVA's initialisation (its budget redistributed: {eva['params_ratio']:.2f}x its parameters, "
            f"rate {eva['learning_rate']:g}) against uniform, trained on {eva['cells']} cells: "
            f"{eva['eva_minus_uniform_noises']:+.1f} seed noises ({eva['eva_minus_uniform_percent']:+.1f} % of the loss) "
            f"on average, more than one seed noise lower on {eva['better']} and higher on {eva['worse']}")


USERS_RULES = {"Tinker tokens rule": "tinker", "axolotl thresholds": "axolotl"}  # levels entry -> Advice.users_rules key


def _replaced_level(level_by: str) -> str:
    """The ``levels`` entry of what sets the level otherwise: the pooled level or the probe's rule."""
    return "pooled" if level_by == "calibration" else "rule"


def dominating_users_rule(metadata: dict, level_by: str) -> str | None:
    """The users' rule (``levels`` entry of :data:`USERS_RULES`) that did better than the level the
    advice would otherwise set (``level_by``: ``"calibration"``, the pooled level, or ``"rule"``,
    the probe's rule) on the calibration's cells: a mean regret in seed noises lower by the
    calibration's :func:`required_gain` (the bar every fitted choice must clear; less is a tie
    within noise) with no more adapter parameters (``params_vs_r16``); of several, the one with
    the lowest regret. None when none did, or the metadata does not score them."""
    levels = metadata.get("levels") or {}
    ours = levels.get(_replaced_level(level_by)) or {}
    if ours.get("regret_noises_mean") is None or ours.get("params_vs_r16") is None:
        return None
    better = [name for name in USERS_RULES
              if (levels.get(name) or {}).get("regret_noises_mean") is not None
              and beats_baseline({"model_mae": levels[name]["regret_noises_mean"],
                                  "baseline_mae": ours["regret_noises_mean"]}, required_gain(metadata))
              and levels[name]["params_vs_r16"] <= ours["params_vs_r16"]]
    return min(better, key=lambda name: levels[name]["regret_noises_mean"]) if better else None


def users_rule_text(metadata: dict, name: str, level_by: str, rank: int) -> str:
    """Why the level is a users' rule's (``rank``: as spent, within the rank bounds): what it and the
    level it replaced cost on the calibration's cells."""
    levels = metadata["levels"]
    ours = levels[_replaced_level(level_by)]
    replaced = "the calibration's pooled level" if level_by == "calibration" else "the probe's rule"
    return (f"the rank level is {name}'s, uniform r = {rank} for your data: on the {levels[name]['cells']} cells behind "
            f"the calibration it cost {_regret(levels[name], long=True)} above each cell's best uniform rank with "
            f"{levels[name]['params_vs_r16']:.2f}x uniform r = 16's parameters, where {replaced} cost "
            f"{_regret(ours, long=False)} with {ours['params_vs_r16']:.2f}x: the advice never sets a level that did "
            "worse than a rule you could apply by hand")


def _regret(summary: dict, long: bool) -> str:
    """A level's regret as ``levels`` summarises it, e.g. "1.18 % (4.15 seed noises; within one
    seed noise of the best on 1 of 6 cells)"; ``long=False``: "1.18 % (4.15; 1 of 6)"."""
    noises, within = f"{summary['regret_noises_mean']:.2f}", f"{summary['within_noise']} of {summary['cells']}"
    if long:
        return f"{100 * summary['regret_mean']:.2f} % ({noises} seed noises; within one seed noise of the best on {within} cells)"
    return f"{100 * summary['regret_mean']:.2f} % ({noises}; {within})"


def measured_levels(metadata: dict, level_by: str | None = "rule") -> str | None:
    """What the sweeps behind a calibration measured about the rank level (its ``cell_labels``,
    ``levels`` and ``pooled_level``, written by ``calibration.fit``), for advice whose rank model
    is not used. ``level_by`` says what sets the advice's level: ``"calibration"`` (its pooled
    level, when :func:`calibrated_level` gives one), ``"rule"`` (the probe's rule, with no budget
    and the default rank bounds: how that rule fared on the same cells is added), or None (a
    budget, or other bounds). None when the metadata has no cell labels."""
    labels = metadata.get("cell_labels")
    if not labels:
        return None
    name = metadata.get("name", "the calibration")
    tasks = len({label["task"] for label in labels})
    levels = metadata.get("levels") or {}
    if level_by == "calibration" and calibrated_level(metadata) is not None:
        pooled, rule = levels["pooled"], levels["rule"]
        return (f"the rank level is the calibration's pooled level: uniform r = {metadata['pooled_level']}'s parameters, "
                f"the smallest uniform rank whose mean regret (in seed noises) over the {len(labels)} cells ({tasks} "
                f"tasks) behind {name} is within one seed noise of the best uniform rank's; chosen that way leave one "
                f"task out, its eval loss was on average {_regret(pooled, True)} above each cell's best uniform rank's, "
                f"the probe's rule's {_regret(rule, False)}")
    counts = Counter(label["optimal_rank"] for label in labels)
    spreads = sorted(100 * label["worst_over_best"] for label in labels)
    ranks = ", ".join(f"{rank} on {count}" for rank, count in sorted(counts.items()))
    text = (f"the rank level is not calibrated: the sweeps behind {name} found "
            f"optimal uniform ranks {ranks} of {len(labels)} cells ({tasks} tasks), and on each cell the worst uniform "
            f"rank from 1 to 64 lost {span(f'{spreads[0]:.1f}', f'{spreads[-1]:.1f}')} % more eval loss than the best")
    rule, habits = levels.get("rule"), [h for h in ("r = 16", "r = 64") if h in levels]
    if level_by == "rule" and rule and habits:
        low, high = (f"{x:.3g}" for x in rule["rank_range"])
        text += (f"; the probe's rule, which sets the level here (the calibration's shape spreads the ranks around "
                 f"it), gave uniform-equivalent ranks {span(low, high)} on those cells, "
                 f"within one seed noise of the best uniform rank on {rule['within_noise']} of "
                 f"{rule['cells']} cells; uniform " + " and ".join(f"{h} on {levels[h]['within_noise']}" for h in habits))
    return text


def shipped_calibration(task: str | None = None) -> Path | None:
    """The calibration ``models/`` ships for a probe of kind ``task`` (causal-lm, seq-cls): the last
    calibration description by name whose ``probe_tasks`` include it (one that does not list them
    covers every kind). Without one (or without a task), the last description by name, which
    :func:`domain_gaps` then declines for a kind it never saw; without any description, the
    last ``*.json`` (which :func:`load_calibration` refuses, saying why); None for no file."""
    descriptions = _shipped_descriptions()
    for path, kinds in reversed(descriptions):
        if task is None or kinds is None or task in kinds:
            return path
    if descriptions:
        return descriptions[-1][0]
    candidates = sorted(MODELS_DIR.glob("*.json"))
    return candidates[-1] if candidates else None


def _shipped_descriptions() -> list[tuple[Path, list[str] | None]]:
    """(path, fitted kinds) of each readable calibration description in ``models/``, by name."""
    found = []
    for path in sorted(MODELS_DIR.glob("*.json")):
        try:
            metadata = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metadata, dict) and "cell_features" in metadata:
            found.append((path, fitted_kinds(metadata)))
    return found


def fitted_kinds(metadata: dict) -> list[str] | None:
    """The kinds of model (causal-lm, seq-cls) a calibration was fitted on; None: not recorded."""
    kinds = metadata.get("probe_tasks")
    return kinds if isinstance(kinds, list) and kinds else None


def resolve_calibration(calibration, task: str | None = None) -> Calibration | None:
    """None or ``"none"``: the uncalibrated rule (None); ``"auto"``: the shipped calibration for
    probes of kind ``task`` (:func:`shipped_calibration`, marked ``automatic``), None when
    ``models/`` ships none; a path: that file, verified; a loaded calibration: itself."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if str(calibration).lower() == "none":
        return None
    if is_auto(calibration):
        path = shipped_calibration(task)
        if path is None:
            import warnings

            warnings.warn(f"no shipped calibration found in {MODELS_DIR}: the advice uses the uncalibrated rule "
                          "(reinstall lora-rank-advisor, or pass calibration=PATH)", stacklevel=2)
            return None
        try:
            return dataclasses.replace(load_calibration(path), automatic=True)
        except ValueError as error:  # a shipped file this install cannot use: say so, advise uncalibrated
            import warnings

            warnings.warn(f"the shipped calibration is not usable here ({error}); using the uncalibrated rule",
                          stacklevel=2)
            return None
    return load_calibration(calibration)


def probe_protocol(calibration: Calibration | None) -> dict:
    """How the calibration's cells were probed, ``{"num_samples": rows, "max_length": tokens per
    row}``, for ``advise`` to probe the same way unless told otherwise: the probe's spectral features
    then lie where the rank model was fitted (:func:`rank_model_extrapolates`). {} for the
    uncalibrated rule (None) or a calibration that does not record it (one fitted before it was recorded)."""
    protocol = calibration.metadata.get("probe_protocol") if calibration is not None else None
    if not isinstance(protocol, dict):
        return {}
    return {key: protocol[key] for key in ("num_samples", "max_length")
            if isinstance(protocol.get(key), int) and protocol[key] > 0}


def is_auto(calibration) -> bool:
    """Whether ``calibration`` asks for the shipped calibration that fits the probe."""
    return isinstance(calibration, str) and calibration.lower() == "auto"


def features_outside(calibration: Calibration, layers: dict[str, dict], train_size: int, quantized: bool) -> list[str]:
    """The cell features of this probe that lie outside the range the calibration was fitted on."""
    ranges = calibration.metadata.get("cell_feature_ranges") or {}
    features = cell_features(layers, train_size, calibration.quantized_input(quantized))
    return [name for name, (low, high) in ranges.items() if not low <= features[name] <= high]


DOMAIN_TOLERANCE = 1.0  # log2 units: "auto" trusts a calibration up to 2x beyond the widths / sizes it saw
SPECTRAL_OUTSIDE_LIMIT = 0.5  # "auto" sets a rank model aside when more than this share of its spectral features lie outside


def rank_model_extrapolates(calibration: Calibration, layers: dict[str, dict], train_size: int,
                            quantized: bool) -> str | None:
    """Why "auto" sets the calibration's rank model aside for this probe (to follow "its rank
    model" in a message), or None: more than half of the spectral cell features (the probe's
    statistics, not the width, size and quantization that :func:`domain_gaps` checks) lie
    outside the ranges the model was fitted on, so its level would be an extrapolation. Measured:
    a default probe (61 rows x 256 tokens) of the standard-library code lies outside 13 of 18
    for the 4-cell causal-LM calibration, whose rank model then gives 1.5 where the sweeps
    measured 64 on that task's 1,000 rows (probed at 30 rows x 128 tokens)."""
    spectral = [name for name in (calibration.metadata.get("cell_feature_ranges") or {})
                if name.split("_", 1)[0] in FEATURE_SCOPES]
    outside = [name for name in features_outside(calibration, layers, train_size, quantized) if name in spectral]
    if not spectral or len(outside) <= SPECTRAL_OUTSIDE_LIMIT * len(spectral):
        return None
    return (f"is not used for this probe: {len(outside)} of its {len(spectral)} spectral features lie outside the "
            f"ranges it was fitted on (e.g. {', '.join(outside[:3])}; \"auto\" does not extrapolate a rank level)")


def domain_gaps(calibration: Calibration, layers: dict[str, dict], train_size: int, quantized: bool,
                task: str | None = None) -> list[str]:
    """Where this probe lies beyond what the calibration was fitted on: a kind of model (``task``:
    causal-lm or seq-cls) it saw none of, or a median layer width or a training-set size more than
    2x outside its range. A quantized base is no gap: a calibration that saw none reads it as full
    precision (:meth:`Calibration.quantized_input`)."""
    ranges = calibration.metadata.get("cell_feature_ranges") or {}
    features = cell_features(layers, train_size, calibration.quantized_input(quantized))
    gaps = []
    fitted_tasks = fitted_kinds(calibration.metadata)
    if task is not None and fitted_tasks and task not in fitted_tasks:
        gaps.append(f"a {task} model, fitted on {' and '.join(fitted_tasks)} models only")
    for key, what in (("log2_width", "layer width"), ("log2_train_size", "training rows")):
        gap = _range_gap(ranges, key, what, features[key])
        if gap:
            gaps.append(gap)
    return gaps


def _range_gap(ranges: dict, key: str, what: str, value: float) -> str | None:
    """Why ``value`` (log2) lies more than DOMAIN_TOLERANCE outside the fitted range of ``key``, or None."""
    if key not in ranges:
        return None
    low, high = ranges[key]
    if low - DOMAIN_TOLERANCE <= value <= high + DOMAIN_TOLERANCE:
        return None
    seen = f"{2**low:,.0f}" if low == high else f"{2**low:,.0f}-{2**high:,.0f}"
    return f"{what} {2**value:,.0f}, fitted on {seen}"


def training_rows_gap(calibration: Calibration, train_size: int) -> str | None:
    """The gap of :func:`domain_gaps` that is known before the probe: a training-set size more than
    2x outside the calibration's; None when it has none."""
    return _range_gap(calibration.metadata.get("cell_feature_ranges") or {}, "log2_train_size", "training rows",
                      math.log2(train_size))


def load_calibration(path: str | Path | None = None) -> Calibration:
    """Load ``NAME.json`` + ``NAME.joblib`` (a path to either, or None for the shipped default).

    Raises ValueError for a missing file, a JSON that is not a calibration, a joblib file whose
    sha256 differs from the JSON's (it is then never unpickled), or one this scikit-learn
    cannot load (warns when the versions differ but it loads).
    """
    if path is None:
        path = shipped_calibration()
        if path is None:
            raise ValueError(f"no calibration in {MODELS_DIR}")
    path = Path(path)
    meta_path = path.with_suffix(".json")
    model_path = path.with_suffix(".joblib")
    for required in (meta_path, model_path):
        if not required.is_file():
            raise ValueError(f"calibration file not found: {required}")
    try:
        metadata = json.loads(meta_path.read_text())
        expected = metadata["sha256"]
        metadata["cell_features"], metadata["layer_features"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{meta_path} is not a calibration description ({error})") from None
    actual = sha256_of(model_path)
    if actual != expected:
        raise ValueError(
            f"{model_path} is not a verified calibration: its sha256 {actual[:12]}... differs from "
            f"{expected[:12]}... in {meta_path.name}; refusing to unpickle it"
        )
    import warnings

    import joblib
    import sklearn

    fitted_with = metadata.get("versions", {}).get("scikit-learn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a version mismatch is reported once, below
            models = joblib.load(model_path)
    except Exception as error:  # an unpickling failure of any kind: the file cannot be used here
        raise ValueError(f"{model_path} cannot be loaded with scikit-learn {sklearn.__version__} "
                         f"(fitted with {fitted_with}): {error}; refit with python -m calibration.fit") from None
    if fitted_with and fitted_with != sklearn.__version__:
        warnings.warn(f"{model_path.name} was fitted with scikit-learn {fitted_with}, this is {sklearn.__version__}",
                      stacklevel=2)
    return Calibration(name=meta_path.stem, metadata=metadata, models=models)
