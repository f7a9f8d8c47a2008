"""What the advice's rank level costs: every way of choosing one rank, scored on the labelled cells.

With no budget the advice's level came from the probe (the uncalibrated rule: each layer's
signal effective rank rounded up to a power of two, within ranks 2-64) whenever the
calibration's rank model is not used (its per-layer shape then spreads the ranks around
that level; the shape is not scored here). This
scores that rule the way :mod:`calibration.fit` scores the rank model, on every labelled
uniform-rank cell of the rank grids (rsLoRA alpha 8), beside the other ways a user could choose:

- ``rule``: the uniform rank with as many adapter parameters as the uncalibrated advice of the
  cell's step-0 probe (:func:`advisor.allocation.allocate`, defaults: ranks 2-64, no budget);
- ``constant``: the training folds' median optimal rank, leave one task out (fit's baseline);
- ``rank model``: the ridge rank model, leave one task out (fit's ``cell`` model);
  both rounded as the advice rounds a need (the next power of two, within ranks 2-64; fit scores
  them unrounded);
- ``Tinker tokens rule`` and ``axolotl thresholds``: the users' rules of :mod:`advisor.baselines`
  (adapter parameters >= the training rows' loss tokens; r = 8 / 16 / 32 / 64 by rows);
- ``tokens rule, fitted``: the tokens rule at the number of adapter parameters per loss token
  (a power of two, :data:`TOKEN_RATIOS`) that the label's rule picks on the other tasks' cells
  (:func:`fitted_params_per_token`), leave one task out: Tinker's rule with its one parameter per
  token replaced by a measured number;
- ``r = N``: the habit, one uniform rank for every task;
- ``EVA at r = 16's budget`` (:data:`EVA_LEVEL`): PEFT's EVA initialisation redistributing uniform
  r = 16's budget, trained in the cell (the capacity grids' ``CAPACITY_EVA`` runs, both seeds): its
  measured mean loss, and as rank its adapter parameters over one uniform rank's; only cells that
  trained it (while some have not, ``r = 16 on EVA's cells`` scores uniform r = 16 on the same cells);
- ``pooled``: the habit the label's rule picks on the other tasks' cells pooled (the smallest whose
  mean regret, counted in each cell's seed noises, is at most the lowest habit's + 1), leave one
  task out. ``calibration.fit`` stores the pick on all of a calibration's cells (``pooled_level``),
  and the advice with no budget spends that uniform rank's parameters when this leave-one-task-out
  score's mean regret in seed noises is 10 % below the rule's
  (:func:`advisor.calibrated.calibrated_level`).

Per cell and level: |log2 rank - log2 optimal rank| (the label's metric, 1.0 = a factor of 2),
and the regret: the cell's mean eval loss at that rank over its best rank's, in % and in seed
noises. Where a cell did not train the rank (SmolLM2 and MPNet trained 1, 4, 16, 64) the loss is
interpolated linearly in log2 rank, marked ``~``; the rule's regret is that of a uniform rank of
equal parameters, not a training of its per-layer ranks (``calibration.validate`` trains those).
Writes ``calibration/plots/levels.png``: mean regret against adapter parameters, per kind of model.

    python -m calibration.level_study
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from advisor.calibrated import EVA_LEVEL, FITTED_TOKENS_RULE
from calibration import script_parser
from calibration.labels import CAPACITY_RANKS

PLOTS_DIR = Path(__file__).resolve().parent / "plots"
EVA_CELLS_R16 = "r = 16 on EVA's cells"  # uniform r = 16 scored on the cells that trained EVA, to compare like with like
HABITS = (1, 2, 4, 8, 16, 32, 64)
TOKEN_RATIOS = tuple(2.0**k for k in range(-4, 11))  # adapter parameters per loss token the fitted tokens rule tries
KINDS = ("seq-cls", "causal-lm")


def rule_rank(layers: dict[str, dict]) -> float:
    """The uniform rank with the uncalibrated advice's adapter parameters (``layers``: a record's
    probe statistics by layer name, with ``shape`` and ``signal_effective_rank``)."""
    from advisor.allocation import allocate, uniform_params
    from advisor.rules import MAX_RANK, MIN_RANK, signal_need

    shapes = {name: tuple(stats["shape"]) for name, stats in layers.items()}
    need = {name: signal_need(stats["signal_effective_rank"]) for name, stats in layers.items()}
    ranks, _ = allocate(need, shapes, None, MIN_RANK, MAX_RANK)
    return sum(ranks[n] * sum(shapes[n]) for n in shapes) / uniform_params(1, shapes)


def params_per_rank(record: dict) -> int:
    """Adapter parameters per unit of uniform rank of a run: sum of in + out over its adapted layers."""
    layers = record["probe"]["layers"]
    return sum(sum(layers[layer["name"]]["shape"]) for layer in record["adapter_layers"])


def adapter_params(record: dict) -> int:
    """Adapter parameters of a run as trained: each adapted layer's rank times its in + out."""
    layers = record["probe"]["layers"]
    return sum(layer["r"] * sum(layers[layer["name"]]["shape"]) for layer in record["adapter_layers"])


def loss_tokens(record: dict) -> int | None:
    """The loss tokens of a run's training rows: the record's ``train_loss_tokens``, else counted
    (:func:`calibration.train.training_loss_tokens`; a seq-cls row is one); None for a task that
    is not in the registry."""
    from calibration.tasks import TASKS

    if record.get("train_loss_tokens") is not None:
        return record["train_loss_tokens"]
    task = TASKS.get(record["config"]["task"])
    if task is None:
        return None
    if task.kind == "seq-cls":  # one label per row
        return record["train_rows_used"]
    from calibration.train import RunConfig, training_loss_tokens

    return training_loss_tokens(RunConfig.from_dict(record["config"]))["loss_tokens"]


def within_bounds(rank: int) -> int:
    """A rank as the advice spends it: within its default bounds (2-64)."""
    from advisor.rules import MAX_RANK, MIN_RANK

    return min(max(rank, MIN_RANK), MAX_RANK)


def users_rules(cell) -> dict[str, int]:
    """The ranks the users' rules (:mod:`advisor.baselines`) give a cell: Tinker's (parameters >=
    the training rows' loss tokens, :func:`loss_tokens`) and axolotl's thresholds on its rows,
    each :func:`within_bounds`, where the advice would spend it; {} when the loss tokens are unknown."""
    from advisor.baselines import axolotl_rank, tinker_rank

    tokens = loss_tokens(cell.records[0])
    if tokens is None:
        return {}
    return {"Tinker tokens rule": within_bounds(tinker_rank(tokens, params_per_rank(cell.records[0]))),
            "axolotl thresholds": within_bounds(axolotl_rank(cell.train_size))}


def tokens_rule_rank(cell, params_per_token: float) -> int | None:
    """The rank of the tokens rule at ``params_per_token`` adapter parameters per loss token of the
    cell's training rows (:func:`advisor.baselines.tokens_rank`), :func:`within_bounds`; None when the
    loss tokens are unknown."""
    from advisor.baselines import tokens_rank

    tokens = loss_tokens(cell.records[0])
    return None if tokens is None else within_bounds(tokens_rank(tokens, params_per_rank(cell.records[0]),
                                                                 params_per_token))


def fitted_params_per_token(cells: list) -> float | None:
    """The label's rule applied to the tokens rule: over ``cells`` (those with a seed noise and
    known loss tokens), the smallest of :data:`TOKEN_RATIOS` whose mean regret in seed noises is
    within one seed noise of the best ratio's; None without such cells."""
    scored = [cell for cell in cells if cell.seed_noise and loss_tokens(cell.records[0]) is not None]
    if not scored:
        return None

    def regret_noises(cell, ratio: float) -> float:
        return (loss_at(cell, tokens_rule_rank(cell, ratio))[0] - cell.mean_loss(cell.best_rank)) / cell.seed_noise

    mean = {ratio: statistics.mean(regret_noises(cell, ratio) for cell in scored) for ratio in TOKEN_RATIOS}
    return min(ratio for ratio in TOKEN_RATIOS if mean[ratio] <= min(mean.values()) + 1)


def loss_at(cell, rank: float) -> tuple[float, bool]:
    """(the cell's mean eval loss at ``rank``, whether it was interpolated in log2 rank between the
    ranks it trained); ``rank`` is clipped to the trained range."""
    ranks = cell.ranks
    rank = min(max(rank, ranks[0]), ranks[-1])
    if rank in ranks:
        return cell.mean_loss(rank), False
    low = max(r for r in ranks if r < rank)
    high = min(r for r in ranks if r > rank)
    t = (math.log2(rank) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return (1 - t) * cell.mean_loss(low) + t * cell.mean_loss(high), True


def held_out_ranks(cell_rows: list[dict]) -> dict[str, list[float | None]]:
    """Per labelled cell (in ``cell_rows`` order): the rank model's and the constant's rank, each
    fitted leave-one-task-out as :func:`calibration.fit.fit` scores them and rounded as the advice
    rounds a need (None: a fold fit skips, too few training rows for the model, so for both)."""
    from advisor.allocation import rounded_rank
    from advisor.rules import MAX_RANK, MIN_RANK
    from calibration.regression import held_out_predictions, median_baseline

    names = list(cell_rows[0]["features"])
    fitted = {"rank model": [None] * len(cell_rows), "constant": [None] * len(cell_rows)}
    position = {id(row): index for index, row in enumerate(cell_rows)}
    for _, test, predicted, guessed in held_out_predictions(cell_rows, names, "task", median_baseline):
        if predicted is None:
            continue
        for row, model_log2, constant_log2 in zip(test, predicted, guessed):
            for level, log2_rank in (("rank model", model_log2), ("constant", constant_log2)):
                fitted[level][position[id(row)]] = rounded_rank(2**log2_rank, 1.0, MIN_RANK, MAX_RANK)
    return fitted


def eva_runs(records: list[dict]) -> dict[tuple, tuple[float, float]]:
    """The cells' EVA baselines among ``records``: (model, task, train size) -> (uniform-equivalent
    rank: the runs' adapter parameters over one uniform rank's, mean eval loss), for runs of EVA at
    uniform r = 16 with alpha = 32 and alpha / r, where at least two seeds finished."""
    from advisor.allocation import FIXED_ALPHA

    found: dict[tuple, list[dict]] = {}
    for record in records:
        config = record["config"]
        if (config.get("eva_rho") is None or config.get("rank") != 16 or config.get("use_rslora")
                or config.get("alpha") != FIXED_ALPHA or not isinstance(record.get("eval_loss"), (int, float))):
            continue
        found.setdefault((config["model"], config["task"], config["train_size"]), []).append(record)
    baselines = {}
    for key, runs in found.items():
        if len({run["config"]["seed"] for run in runs}) < 2:
            continue
        params = statistics.mean(map(adapter_params, runs))
        baselines[key] = (params / params_per_rank(runs[0]), statistics.mean(run["eval_loss"] for run in runs))
    return baselines


def level_rows(cell_rows: list[dict], measured: dict[tuple, tuple[float, float]] | None = None) -> list[dict]:
    """One row per (labelled cell, way of choosing the level): rank, log2 error, regret (``within_noise``:
    the loss at the rank is within one seed noise of the cell's best); ``cell_rows``: the labelled
    cells' rows of :func:`calibration.regression.training_table`; ``measured``: the cells' EVA
    baselines (:func:`eva_runs`), scored at their own loss."""
    from calibration.records import probe_task

    cells = [row["cell"] for row in cell_rows]
    tasks = list(dict.fromkeys(c.task for c in cells))
    fitted = held_out_ranks(cell_rows) if len(tasks) > 1 else {}
    ratios = ({task: fitted_params_per_token([c for c in cells if c.task != task]) for task in tasks}
              if len(tasks) > 1 else {})
    rows = []
    for index, cell in enumerate(cells):
        best, noise = cell.mean_loss(cell.best_rank), cell.seed_noise
        tokens_rule = ({FITTED_TOKENS_RULE: tokens_rule_rank(cell, ratios[cell.task])}
                       if ratios.get(cell.task) is not None else {})
        levels = {"rule": rule_rank(cell.probe()["layers"]), **{k: v[index] for k, v in fitted.items()},
                  **users_rules(cell), **tokens_rule, **{f"r = {r}": r for r in HABITS}}
        trained = (measured or {}).get((cell.model, cell.task, cell.train_size))
        for level, rank in [*levels.items(), *([(EVA_LEVEL, trained[0])] if trained else [])]:
            if rank is None:
                continue
            loss, interpolated = (trained[1], False) if level == EVA_LEVEL else loss_at(cell, rank)
            rows.append({"kind": probe_task(cell.model), "model": cell.model, "task": cell.task,
                         "train_size": cell.train_size, "optimal_rank": cell.optimal_rank, "level": level,
                         "rank": rank, "log2_error": abs(math.log2(rank) - math.log2(cell.optimal_rank)),
                         "regret": loss / best - 1, "regret_noises": (loss - best) / noise if noise > 0 else None,
                         "within_noise": loss <= best + noise, "noise_share": noise / best,
                         "interpolated": interpolated})
    with_eva = {(row["model"], row["task"], row["train_size"]) for row in rows if row["level"] == EVA_LEVEL}
    if with_eva and len(with_eva) < len(cells):
        rows += [{**row, "level": EVA_CELLS_R16} for row in rows
                 if row["level"] == "r = 16" and (row["model"], row["task"], row["train_size"]) in with_eva]
    return rows + (pooled_rows(rows) if fitted else [])


def _habit_rows(rows: list[dict]) -> list[dict]:
    habits = {f"r = {rank}" for rank in HABITS}
    return [row for row in rows if row["level"] in habits and row["regret_noises"] is not None]


def pooled_pick(habit_rows: list[dict]) -> int:
    """The label's rule applied to cells pooled: the smallest habit whose mean regret (in seed
    noises) over ``habit_rows`` (the habits' rows of :func:`level_rows` for those cells) is within
    one seed noise of the best habit's."""
    mean = {rank: statistics.mean(row["regret_noises"] for row in habit_rows if row["rank"] == rank) for rank in HABITS}
    return min(rank for rank in HABITS if mean[rank] <= min(mean.values()) + 1)


def pooled_level(rows: list[dict]) -> int | None:
    """:func:`pooled_pick` over every cell of ``rows`` (a fit's :func:`level_rows`), the level a
    calibration offers for advice with no budget; None without cells whose seed noise is known."""
    habits = _habit_rows(rows)
    return pooled_pick(habits) if habits else None


def pooled_rows(rows: list[dict]) -> list[dict]:
    """The ``pooled`` level's rows, leave one task out: :func:`pooled_pick` on the training tasks'
    cells, each held-out cell scored at that habit (its habit row, renamed)."""
    habits = _habit_rows(rows)
    pooled = []
    for task in dict.fromkeys(row["task"] for row in habits):
        train = [row for row in habits if row["task"] != task]
        if not train:
            continue
        pick = pooled_pick(train)
        pooled += [{**row, "level": "pooled"} for row in habits if row["task"] == task and row["rank"] == pick]
    return pooled


def level_summary(rows: list[dict]) -> dict[str, dict]:
    """Per level over ``rows`` (the cells of one fit): its geometric mean and range of rank, mean log2 error,
    mean and max regret (a share of the best loss, and in seed noises), cells within one seed noise
    of the best, and mean parameters over uniform r = 16's."""
    summary = {}
    for level in dict.fromkeys(row["level"] for row in rows):
        group = [row for row in rows if row["level"] == level]
        noises = [row["regret_noises"] for row in group if row["regret_noises"] is not None]
        summary[level] = {
            "cells": len(group),
            "mean_rank": round(2 ** statistics.mean(math.log2(row["rank"]) for row in group), 3),
            "rank_range": [round(min(row["rank"] for row in group), 3), round(max(row["rank"] for row in group), 3)],
            "log2_error": round(statistics.mean(row["log2_error"] for row in group), 4),
            "regret_mean": round(statistics.mean(row["regret"] for row in group), 5),
            "regret_max": round(max(row["regret"] for row in group), 5),
            "regret_noises_mean": round(statistics.mean(noises), 3) if noises else None,
            "regret_noises_max": round(max(noises), 3) if noises else None,
            "within_noise": sum(row["within_noise"] for row in group),
            "params_vs_r16": round(statistics.mean(row["rank"] for row in group) / 16, 4),
        }
    return summary


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(rows: list[dict], kind: str) -> str:
    """Per level, over a kind's cells: :func:`level_summary` as a markdown table."""
    lines = ["| level | geometric mean rank | log2 error vs optimal rank | regret: mean / max | regret in seed noises: "
             "mean / max | cells within one seed noise of the best | parameters vs r = 16 |",
             "|---|---|---|---|---|---|---|"]
    for level, s in level_summary([row for row in rows if row["kind"] == kind]).items():
        lines.append(f"| {level} | {s['mean_rank']:.1f} | {s['log2_error']:.2f} | {s['regret_mean']:.2%} / "
                     f"{s['regret_max']:.2%} | {_number(s['regret_noises_mean'])} / {_number(s['regret_noises_max'])} | "
                     f"{s['within_noise']} of {s['cells']} | {s['params_vs_r16']:.2f}x |")
    return "\n".join(lines)


def cell_table(rows: list[dict], kind: str, levels=("rule", "constant", "rank model", "pooled", FITTED_TOKENS_RULE,
                                                   "Tinker tokens rule", "axolotl thresholds", "r = 16", "r = 64",
                                                   EVA_LEVEL)) -> str:
    """Per cell of a kind: its seed noise as a share of its best loss, and each level's rank and
    regret in seed noises (~: interpolated loss)."""
    lines = ["| model | task | train rows | optimal rank | seed noise / best loss | " + " | ".join(levels) + " |",
             "|---|---|---|---|---|" + "---|" * len(levels)]
    by_cell: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["kind"] == kind:
            key = (row["model"], row["task"], row["train_size"], row["optimal_rank"], row["noise_share"])
            by_cell.setdefault(key, {})[row["level"]] = row
    for (model, task, size, optimal, noise_share), found in by_cell.items():
        entries = [f"r {found[lv]['rank']:.3g}: {'~' if found[lv]['interpolated'] else ''}{_number(found[lv]['regret_noises'])}"
                   if lv in found else "-" for lv in levels]
        lines.append(f"| {model} | {task} | {size} | {optimal} | {noise_share:.1%} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], name: str = "levels") -> Path:
    """Mean regret in seed noises against mean adapter parameters (x r = 16's), one panel per kind;
    written to ``plots/NAME.png``."""
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    kinds = [k for k in KINDS if any(row["kind"] == k for row in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        ours = [row for row in rows if row["kind"] == kind]

        summary = level_summary(ours)

        def point(level, summary=summary):
            return summary[level]["params_vs_r16"], summary[level]["regret_noises_mean"]

        habits = [(r, *point(f"r = {r}")) for r in HABITS if summary[f"r = {r}"]["regret_noises_mean"] is not None]
        ax.plot([h[1] for h in habits], [h[2] for h in habits], marker="o", color="grey", label="uniform habit r = 1..64")
        for r, x, y in habits:
            ax.annotate(str(r), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        for level, marker in (("rule", "s"), ("constant", "^"), ("rank model", "v"), ("pooled", "D"),
                              (FITTED_TOKENS_RULE, "*"), ("Tinker tokens rule", "P"), ("axolotl thresholds", "X"),
                              (EVA_LEVEL, "h")):
            if level in summary and summary[level]["regret_noises_mean"] is not None:
                x, y = point(level)
                ax.plot([x], [y], marker=marker, linestyle="none", markersize=8, label=level)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("adapter parameters (x uniform r = 16)")
        ax.set_ylabel("mean regret (seed noises above the best rank)")
        ax.set_title(f"{kind}: {summary['rule']['cells']} labelled cells", fontsize=9)
        ax.legend(fontsize=7)
    path = PLOTS_DIR / f"{name}.png"
    save_figure(fig, path)
    return path


def capacity_cells(records: list[dict], ranks=CAPACITY_RANKS) -> list:
    """The capacity grids' labelled cells: alpha = 32 with alpha / r, each rank at its best learning
    rate (:func:`calibration.labels.best_over_lr_cells`), over ``ranks`` (None: every rank trained),
    complete ones only."""
    from advisor.allocation import FIXED_ALPHA
    from calibration.labels import best_over_lr_cells

    runs = [r for r in records if not r["config"].get("use_rslora") and r["config"].get("alpha") == FIXED_ALPHA
            and (ranks is None or r["config"].get("rank") in ranks)]
    return [cell for cell in best_over_lr_cells(runs) if cell.optimal_rank is not None]


def capacity_summary(records: list[dict], ranks=CAPACITY_RANKS) -> dict | None:
    """What ``calibration.fit`` stores as a calibration's ``capacity`` (the advice's level when it
    has one, :func:`advisor.calibrated.capacity_level`): over the capacity cells of ``records`` (runs
    of one kind of model), each level's :func:`level_summary` held out by task, the tokens rule's
    ratio fitted on every cell (:func:`fitted_params_per_token`), the tasks and each cell's label;
    None with fewer than two tasks' cells (nothing to hold out)."""
    from calibration.regression import training_table

    cells = capacity_cells(records, ranks)
    if len({cell.task for cell in cells}) < 2:
        return None
    cell_rows = training_table(records, cells)[0]
    return {"levels": level_summary(level_rows(cell_rows, eva_runs(records))),
            "params_per_token": fitted_params_per_token([row["cell"] for row in cell_rows]),
            "tasks": sorted({row["task"] for row in cell_rows}),
            "cell_labels": [row["label"] for row in cell_rows]}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.level_study", __doc__, [
        "python -m calibration.level_study                    # the rank grids' labels (rsLoRA, one rate)",
        "python -m calibration.level_study --labels capacity  # the capacity grids' (alpha / r, best rate)",
    ])
    parser.add_argument("--labels", choices=("rank-grid", "capacity"), default="rank-grid",
                        help="rank-grid: the shipped calibrations' cells; capacity: the capacity grids' cells "
                             "(calibration/README.md, \"Where rank becomes the limit\")")
    args = parser.parse_args(argv)
    from calibration.records import experiment_result_files, probe_task, read_records, sweep_records
    from calibration.regression import training_table

    records = read_records(experiment_result_files()) if args.labels == "capacity" else sweep_records()
    rows = []
    for kind in KINDS:  # the rank model and the constant are fitted within one kind, as shipped
        ours = [r for r in records if probe_task(r["model"]) == kind]
        cells = capacity_cells(ours) if args.labels == "capacity" else None
        rows += level_rows(training_table(ours, cells)[0], eva_runs(ours) if args.labels == "capacity" else None)
    if not rows:
        print(f"error: no labelled cell in the results ({args.labels} labels)", file=sys.stderr)
        return 2
    for kind in KINDS:
        if any(row["kind"] == kind for row in rows):
            print(f"### {kind}\n\n{summary_table(rows, kind)}\n\n{cell_table(rows, kind)}\n")
    print(f"wrote {plot(rows, 'levels' if args.labels == 'rank-grid' else 'levels-capacity')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
