"""Does a layer's step-0 natural gain say which layers use more of their rank once trained?

For every labelled uniform-rank cell of the rank grids (rsLoRA alpha 8, the rule the regression
is fitted on), the step-0 probe of the cell's training rows is taken from the sweep's record
when it has the probe's ``natural_gain``, else recomputed exactly as the sweep stored it
(``calibration.train.probe_training_rows``; records written before the probe had natural gain),
and each layer's statistic is set against its *relative need*:
the effective rank of its trained B A at the cell's largest rank over the cell's mean
(``calibration.labels.Cell.relative_need``, the target of the per-layer regression).

Per cell it records Spearman's rho between the relative need and natural gain, ||G||_F and
signal effective rank (each over the cell's layers), and each layer group's share of the summed
natural gain beside its mean relative need. One record per cell in
``calibration/results/gain.jsonl`` (append-only, with the command); cells already there are
skipped, so a rerun studies only newly labelled cells.

``--regression`` asks the question the advice turns on: does the natural gain, as a per-layer
feature (log2 of the layer's gain over the cell's median layer gain, so scale-free), make the
per-layer regression of :mod:`calibration.fit` better leave-one-task-out? It prints the fit's
per-layer errors without and with that feature, per probe task (gains from the records, else
from ``gain.jsonl``).

    python -m calibration.gain_study [--models minilm smollm2]
    python -m calibration.gain_study --table
    python -m calibration.gain_study --regression
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path

from calibration import read_results, script_parser

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "gain.jsonl"
STATISTICS = {"natural gain": "natural_gain", "||G||_F": "frobenius_norm", "signal effective rank": "signal_effective_rank"}


def study_cell(cell) -> dict:
    """The record of one labelled cell (see the module docstring)."""
    from advisor.calibrated import layer_group
    from calibration.findings import spearman
    from calibration.train import RunConfig, probe_training_rows

    layers = cell.probe()["layers"]
    if any(stats.get("natural_gain") is None for stats in layers.values()):
        result = probe_training_rows(RunConfig.from_dict(cell.records[0]["config"]))
        layers = {name: {field: getattr(stats, field) for field in STATISTICS.values()}
                  for name, stats in result.layers.items()}
    need = cell.relative_need()
    names = [name for name in need if name in layers]
    rho = {label: round(spearman([layers[n][field] for n in names], [need[n] for n in names]), 3)
           for label, field in STATISTICS.items()}
    total_gain = sum(layers[n]["natural_gain"] for n in names)
    groups = {}
    for group in ("attention", "mlp"):
        members = [n for n in names if layer_group(n) == group]
        groups[group] = {"gain_share": round(sum(layers[n]["natural_gain"] for n in members) / total_gain, 4),
                         "mean_relative_need": round(statistics.mean(need[n] for n in members), 4)}
    return {"model": cell.model, "task": cell.task, "train_size": cell.train_size, "optimal_rank": cell.optimal_rank,
            "largest_rank": cell.ranks[-1], "layers": len(names), "spearman_with_relative_need": rho, "groups": groups,
            "per_layer": {n: [round(layers[n]["natural_gain"], 4), round(need[n], 4)] for n in names}}


def _log2_relative_gains(cell, studied: dict) -> dict[str, float]:
    """Per layer of a cell: log2 of its natural gain over the cell's median layer's, from the
    record's probe or else from ``gain.jsonl`` (``studied``); empty when neither has them."""
    gains = {name: stats.get("natural_gain") for name, stats in cell.probe()["layers"].items()}
    if None in gains.values():
        stored = studied.get((cell.model, cell.task, cell.train_size)) or {}
        gains = {name: gain for name, (gain, _) in stored.items()}
    if not gains:
        return {}
    median = statistics.median(gains.values())
    return {name: math.log2(max(gain, 1e-12) / median) for name, gain in gains.items()}


def layer_rows_with_gain(probe_task: str) -> list[dict]:
    """The per-layer regression's rows (:func:`calibration.fit.training_table`) of one probe task,
    each with ``log2_relative_gain`` (the layer's natural gain over its cell's median layer's) added;
    a cell with no natural gain in its record nor in ``gain.jsonl`` is left out."""
    from calibration.records import probe_task as task_of
    from calibration.records import sweep_records
    from calibration.regression import training_table

    studied = {(r["model"], r["task"], r["train_size"]): r["per_layer"] for r in read_results(RESULTS)}
    _, layer_rows, _ = training_table([r for r in sweep_records() if task_of(r["model"]) == probe_task])
    by_cell: dict[int, dict[str, float]] = {}  # id(cell) -> its layers' log2 relative gains
    rows = []
    for row in layer_rows:
        cell = row["cell"]
        if id(cell) not in by_cell:
            by_cell[id(cell)] = _log2_relative_gains(cell, studied)
        gain = by_cell[id(cell)].get(row["layer"])
        if gain is not None:
            rows.append({**row, "features": {**row["features"], "log2_relative_gain": gain}})
    return rows


def regression_ablation(probe_task: str) -> str:
    """The per-layer regression's leave-one-task-out error without and with the natural-gain feature."""
    from calibration.regression import grouped_errors, zero_baseline

    rows = layer_rows_with_gain(probe_task)
    if not rows:
        return f"{probe_task}: no labelled cell with natural gains"
    names = list(rows[0]["features"])
    without = grouped_errors(rows, [n for n in names if n != "log2_relative_gain"], "task", zero_baseline)
    with_gain = grouped_errors(rows, names, "task", zero_baseline)
    cells = len({(r["model"], r["task"], r["features"]["log2_train_size"]) for r in rows})
    lines = [f"{probe_task}: {cells} cells, {len(rows)} layers; per-layer leave-one-task-out MAE (log2 relative need): "
             f"without gain {without['model_mae']:.4f}, with gain {with_gain['model_mae']:.4f}, "
             f"every layer the same {without['baseline_mae']:.4f}"]
    for task in without["folds"]:
        lines.append(f"  {task}: {without['folds'][task]['model_mae']:.4f} -> {with_gain['folds'][task]['model_mae']:.4f}")
    return "\n".join(lines)


def markdown_table() -> str:
    """Every stored cell: the correlations and the groups' gain shares (for calibration/README.md)."""
    lines = ["| model | task | train rows | layers | Spearman with relative need: " + " / ".join(STATISTICS)
             + " | attention: gain share / mean relative need | MLP: gain share / mean relative need |",
             "|---|---|---|---|---|---|---|"]
    for record in read_results(RESULTS):
        rho = " / ".join(f"{record['spearman_with_relative_need'][label]:+.2f}" for label in STATISTICS)
        cells = [f"{record['groups'][g]['gain_share']:.0%} / {record['groups'][g]['mean_relative_need']:.2f}"
                 for g in ("attention", "mlp")]
        lines.append(f"| {record['model']} | {record['task']} | {record['train_size']} | {record['layers']} | {rho} | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.gain_study", __doc__, [
        "python -m calibration.gain_study --table",
        "python -m calibration.gain_study --models smollm2",
        "python -m calibration.gain_study --regression",
    ])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2", "mpnet"], help="the sweeps' models to study")
    parser.add_argument("--table", action="store_true", help="print the stored records as a markdown table")
    parser.add_argument("--regression", action="store_true",
                        help="does natural gain as a per-layer feature improve the per-layer regression?")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    if args.regression:
        print("\n".join(regression_ablation(task) for task in ("causal-lm", "seq-cls")))
        return 0
    import torch

    from calibration.labels import rank_grid, uniform_cells
    from calibration.records import sweep_records

    torch.set_num_threads(1)
    cells = [c for c in uniform_cells(rank_grid(sweep_records())) if c.optimal_rank is not None and c.model in args.models]
    stored = {(r["model"], r["task"], r["train_size"]) for r in read_results(RESULTS)}
    cells = [c for c in cells if (c.model, c.task, c.train_size) not in stored]
    print(f"{len(cells)} labelled cells not studied yet", file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        record = study_cell(cell)
        record["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        record["command"] = "python -m calibration.gain_study " + shlex.join(["--models", *args.models])
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{cell.model}/{cell.task}: {record['spearman_with_relative_need']}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
