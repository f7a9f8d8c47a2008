"""How far to trust the shipped calibrations: one markdown row per calibration in ``models/``.

    python -m calibration.trust_table                 # the table README.md quotes ("How far to trust it")
    python -m calibration.trust_table --models DIR    # another folder of calibration descriptions
    python -m calibration.trust_table --levels        # the level table calibration/README.md opens with

Read from each calibration's JSON description (written by ``python -m calibration.fit``): the
kind of model it serves (``probe_tasks``), the models, cells and tasks it was fitted on, and the
leave-one-task-out scores (mean absolute error, ``cv``) of its per-layer shape (log2 relative need,
against "every layer the same") and of its rank model (log2 optimal uniform rank, against the
training folds' median rank), each marked used or not by the rule the advice applies (at least
``min_gain``, 10 %, below its baseline; :func:`advisor.calibrated.earns_its_place`); and its
pooled level (``pooled_level``, the uniform rank its cells support together) with the mean regret
in seed noises, leave one task out, of that level and of the probe's rule (``levels``), used only
when the rank model is not and it is ``min_gain`` below the rule's
(:func:`advisor.calibrated.calibrated_level`); and its capacity level (``capacity``: cells where rank
can be the limit, each rank at its best learning rate), which sets the level with no budget when it
covers enough tasks: the choice :func:`advisor.calibrated.capacity_level` makes, with its mean regret
in seed noises and parameters (x uniform r = 16's), leave one task out, beside the best users'
baseline's. No model is loaded.

``--levels`` prints, for each calibration with capacity cells, every level scored on them (the
shipped one, the fitted alternatives and the rules users apply by hand) with its held-out mean
regret in seed noises and in % of loss and its mean parameters: the table calibration/README.md
opens with.
"""

from __future__ import annotations

import json
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from calibration import script_parser
from calibration.level_study import EVA_CELLS_R16, EVA_LEVEL

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
KINDS = {"causal-lm": "causal LM", "seq-cls": "sequence classifier"}
MODEL_NAMES = {"smollm2": "SmolLM2", "gemma3": "Gemma 3", "minilm": "MiniLM", "mpnet": "MPNet"}
MIN_GAIN = 0.10  # as advisor.calibrated.MIN_GAIN, when a description records no min_gain


def _min_gain(meta: dict) -> float:
    value = meta.get("min_gain")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1 else MIN_GAIN


def _fmt(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, halves rounded up as written (0.4225 -> 0.423)."""
    return str(Decimal(str(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _beats(model: float, baseline: float, min_gain: float) -> bool:
    return model < (1 - min_gain) * baseline


def _score(meta: dict, kind: str, digits: int) -> tuple[str, bool]:
    """``kind``'s leave-one-task-out error beside its baseline's, and whether it is used."""
    scores = (meta.get("cv") or {}).get(f"{kind}_leave_one_task_out")
    if not scores:
        return "no score", False
    used = _beats(scores["model_mae"], scores["baseline_mae"], _min_gain(meta))
    return f"{_fmt(scores['model_mae'], digits)} vs {_fmt(scores['baseline_mae'], digits)}", used


def _fitted_on(meta: dict) -> str:
    models = ", ".join(MODEL_NAMES.get(m, m) for m in meta.get("models_seen") or []) or "?"
    return f"{models}: {meta.get('cells', '?')} cells, {len(meta.get('tasks') or [])} tasks"


def _pooled(meta: dict, rank_used: bool) -> str:
    level = meta.get("pooled_level")
    levels = meta.get("levels") or {}
    pooled, rule = levels.get("pooled") or {}, levels.get("rule") or {}
    if not isinstance(level, int) or isinstance(level, bool) or "regret_noises_mean" not in pooled \
            or "regret_noises_mean" not in rule:
        return "none"
    from advisor.calibrated import FITTED_TOKENS_RULE, capacity_level

    ours, theirs = pooled["regret_noises_mean"], rule["regret_noises_mean"]
    used = not rank_used and _beats(ours, theirs, _min_gain(meta))
    capacity = capacity_level(meta)
    if used and capacity:  # a tokens rule needs the dataset's loss tokens: the pooled level stays for a DataLoader
        where = ("used only for data whose tokens are not counted"
                 if capacity["level"] in (FITTED_TOKENS_RULE, "Tinker tokens rule") else "not used")
    else:
        where = "used" if used else "not used"
    return f"r = {level}: {_fmt(ours, 2)} vs {_fmt(theirs, 2)} ({where})"


def _capacity(meta: dict) -> str:
    """The capacity level's choice, its held-out regret and parameters beside the best baseline's."""
    from advisor.calibrated import FITTED_TOKENS_RULE, capacity_level

    capacity = meta.get("capacity") or {}
    choice = capacity_level(meta)
    if choice is None:
        tasks = len(capacity.get("tasks") or ())
        return f"not used ({tasks} tasks)" if capacity else "none"
    levels = capacity["levels"]

    def cost(name: str) -> str:
        return f"{_fmt(levels[name]['regret_noises_mean'], 2)} at {_fmt(levels[name]['params_vs_r16'], 2)}x"

    cells = f"{len(capacity.get('cell_labels') or [])} cells, {len(capacity['tasks'])} tasks"
    if choice["level"] == FITTED_TOKENS_RULE:
        return (f"{choice['params_per_token']:g} parameters per loss token: {cost(FITTED_TOKENS_RULE)} vs "
                f"{choice['beat']} {cost(choice['beat'])} ({cells})")
    return f"{choice['level']}, the best users' rule: {cost(choice['level'])} ({cells})"


LEVEL_NAMES = {  # a capacity summary's level -> what the level table calls it, in the table's order
    "tokens rule, fitted": "tokens rule, fitted: {k:g} adapter parameters per loss token",
    "rank model": "rank model: ridge on the probe's features",
    "rule": "the probe's rule (uncalibrated)",
    "constant": "constant: the other tasks' median optimal rank",
    "pooled": "pooled level: the other tasks' cells pooled",
    "Tinker tokens rule": "Tinker: adapter parameters >= loss tokens",
    "axolotl thresholds": "axolotl: r = 8 / 16 / 32 / 64 by rows (1k / 10k / 100k)",
    **{f"r = {rank}": f"uniform r = {rank}" for rank in (1, 2, 4, 8, 16, 32, 64)},
    EVA_LEVEL: "EVA: PEFT's EVA init redistributing uniform r = 16's budget (cells that trained it)",
    EVA_CELLS_R16: "uniform r = 16 on the same cells as EVA",
}


def level_table(meta: dict) -> str | None:
    """The levels a calibration's capacity cells scored (``capacity.levels``, each task held out),
    as a markdown table: the one the advice ships marked, then the others; None without capacity."""
    from advisor.calibrated import capacity_level

    capacity = meta.get("capacity") or {}
    levels = capacity.get("levels") or {}
    if not levels:
        return None
    choice = capacity_level(meta)
    shipped = choice["level"] if choice else None
    labels = capacity.get("cell_labels") or []
    models = sorted({MODEL_NAMES.get(label.get("model"), label.get("model")) for label in labels})
    lines = [f"`{meta.get('name')}`: {len(labels)} cells, {len(capacity.get('tasks') or [])} tasks "
             f"({', '.join(capacity.get('tasks') or [])}), models {', '.join(models)}; each task held out in turn.",
             "",
             "| level | mean regret (seed noises) | max | mean regret (% of loss) | cells within one seed noise | "
             "mean parameters (x r = 16) |",
             "|---|---:|---:|---:|---:|---:|"]
    order = [name for name in LEVEL_NAMES if name in levels] + [name for name in levels if name not in LEVEL_NAMES]
    if shipped in order:
        order.remove(shipped)
        order.insert(0, shipped)
    for name in order:
        s = levels[name]
        label = LEVEL_NAMES.get(name, name).format(k=capacity.get("params_per_token") or 0)
        if name == shipped:
            label = f"**{label} (shipped)**"
        noises = "-" if s.get("regret_noises_mean") is None else _fmt(s["regret_noises_mean"], 2)
        worst = "-" if s.get("regret_noises_max") is None else _fmt(s["regret_noises_max"], 2)
        lines.append(f"| {label} | {noises} | {worst} | {_fmt(100 * s['regret_mean'], 2)} % | "
                     f"{s['within_noise']} of {s['cells']} | {_fmt(s['params_vs_r16'], 2)}x |")
    if EVA_LEVEL not in levels:
        lines.append(f"| {LEVEL_NAMES[EVA_LEVEL]} | not measured | | | | |")
    return "\n".join([*lines, "", transfer_text(capacity)])


def transfer_text(capacity: dict) -> str:
    """One paragraph on the capacity's ``transfer`` check (``calibration.transfer_study``): how the
    fitted ratio, read as parameters and as rank, did on the cells trained with every block
    adapted, and which reading the advice uses; "not measured" without the check."""
    transfer = capacity.get("transfer")
    if not transfer:
        return ("With every block adapted (the advice's adapter; the cells adapt the top 4): not measured, so the "
                "ratio is read as parameters over every adapted layer.")
    cells = "; ".join(
        f"{MODEL_NAMES.get(c['model'], c['model'])} {c['task']} at {c['train_size']} rows (ranks "
        f"{', '.join(map(str, c['ranks']))}, {c['seeds']} seed{'s' if c['seeds'] > 1 else ''}): as parameters r = "
        f"{c['as parameters']['rank']}, {_fmt(c['as parameters']['regret_noises'], 1)} seed noises above the cell's "
        f"best rank; as rank r = {c['as rank']['rank']}, {_fmt(c['as rank']['regret_noises'], 1)}"
        for c in transfer["cells"])
    return (f"With every block adapted (`python -m calibration.transfer_study`), the ratio read two ways on "
            f"{len(transfer['cells'])} cell{'s' if len(transfer['cells']) > 1 else ''} trained again so: {cells}. "
            f"The advice reads it {transfer['reading']}"
            + (f", counted over {transfer['blocks']} of the adapter's blocks." if transfer["reading"] == "as rank"
               else ", over every adapted layer."))


def trust_table(models_dir) -> str:
    """A markdown table with one row per calibration description (``*.json``) in ``models_dir``."""
    lines = [
        "| calibration | kind of model | fitted on | per-layer shape: error vs every layer the same | "
        "rank model: error vs the median rank | pooled level: regret vs the probe's rule (seed noises) | "
        "capacity level: regret (seed noises) at parameters (x r = 16) vs the best users' rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(models_dir).glob("*.json")):
        meta = json.loads(path.read_text())
        kinds = ", ".join(KINDS.get(k, k) for k in meta.get("probe_tasks") or []) or "any"
        shape, shape_used = _score(meta, "layer", 3)
        rank, rank_used = _score(meta, "cell", 2)
        lines.append(
            f"| `{meta.get('name', path.stem)}` | {kinds} | {_fitted_on(meta)} | "
            f"{shape} ({'used' if shape_used else 'not used'}) | {rank} ({'used' if rank_used else 'not used'}) | "
            f"{_pooled(meta, rank_used)} | {_capacity(meta)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.trust_table", __doc__, [
        "python -m calibration.trust_table",
        "python -m calibration.trust_table --models models",
        "python -m calibration.trust_table --levels",
    ])
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="folder of calibration descriptions (default: the repository's models/)")
    parser.add_argument("--levels", action="store_true",
                        help="print the level table of each calibration with capacity cells instead")
    args = parser.parse_args(argv)
    if not args.models.is_dir():
        print(f"error: {args.models} is not a folder", file=sys.stderr)
        return 2
    if not args.levels:
        print(trust_table(args.models))
        return 0
    tables = [level_table(json.loads(path.read_text())) for path in sorted(args.models.glob("*.json"))]
    print("\n\n".join(table for table in tables if table) or "no calibration in the folder has capacity cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
