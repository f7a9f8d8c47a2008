"""Which features can see capacity: each one alone, leave one task out, on the capacity cells.

The capacity cells (``calibration.level_study.capacity_cells``: alpha = 32 with alpha / r, each
rank at its best learning rate, two seeds) label each cell with its optimal uniform rank. This
fits log2(optimal rank) on one feature at a time (the calibration's ridge regression,
:func:`calibration.regression.grouped_errors`) with each task held out in turn, and prints its
mean absolute error (log2 units: 1.0 = a factor of 2 in rank) beside the constant's (the training
folds' median optimal rank). A feature earns a place in a level model only where its error is
clearly below the constant's; a negative result is printed the same way.

Features: what the advice can read before training, cheaply:

- ``log2_loss_tokens``: the training rows' loss (completion) tokens, counted with the tokenizer;
- ``log2_loss_tokens_per_row``: the same per row (completion length);
- ``base_loss``: the base model's eval loss before training (nats per loss token: how much there
  is left to learn per token, at most);
- ``log2_loss_nats``: log2 of loss tokens x base loss (the nats the training rows could teach, at most);
- the probe's cell features (:func:`advisor.calibrated.cell_features`: spectra, the split-half
  noise share, which grows with the spread of per-batch gradients, sizes).

    python -m calibration.capacity_features
"""

from __future__ import annotations

import math
import sys

from calibration import script_parser


def data_features(cell) -> dict[str, float] | None:
    """The dataset-side features of a cell (see the module docstring); None when its loss tokens
    or base loss are unknown."""
    from calibration.level_study import loss_tokens

    record = cell.records[0]
    tokens, base = loss_tokens(record), record.get("initial_eval_loss")
    if not tokens or base is None:
        return None
    rows = record.get("train_rows_used") or cell.train_size
    return {"log2_loss_tokens": math.log2(tokens), "log2_loss_tokens_per_row": math.log2(tokens / rows),
            "base_loss": float(base), "log2_loss_nats": math.log2(tokens * base)}


def feature_rows(cell_rows: list[dict]) -> list[dict]:
    """``cell_rows`` (:func:`calibration.regression.training_table`'s) with the data features added
    to each row's features; rows whose data features are unknown are left out."""
    rows = []
    for row in cell_rows:
        extra = data_features(row["cell"])
        if extra is not None:
            rows.append({**row, "features": {**extra, **row["features"]}})
    return rows


def single_feature_scores(rows: list[dict]) -> list[dict]:
    """Per feature that varies across ``rows``: its leave-one-task-out MAE and the constant's
    (:func:`calibration.regression.grouped_errors`), best first; features that are the same on
    every cell (nothing to learn from) are listed with ``constant_feature``."""
    from calibration.regression import grouped_errors, median_baseline

    scores = []
    for name in rows[0]["features"]:
        values = {round(row["features"][name], 12) for row in rows}
        if len(values) < 2:
            scores.append({"feature": name, "constant_feature": True})
            continue
        errors = grouped_errors(rows, [name], "task", median_baseline)
        if errors is None:
            continue
        scores.append({"feature": name, "model_mae": errors["model_mae"], "baseline_mae": errors["baseline_mae"],
                       "folds": len(errors["folds"]), "skipped": len(errors["skipped"])})
    return sorted(scores, key=lambda s: (s.get("constant_feature", False), s.get("model_mae", 0.0)))


def markdown(scores: list[dict], cells: int, tasks: int) -> str:
    lines = [f"Each feature alone, {cells} capacity cells of {tasks} tasks, each task held out "
             "(log2 units: 1.0 = a factor of 2 in rank):", "",
             "| feature | its MAE | the constant's | gain over the constant |", "|---|---|---|---|"]
    for s in scores:
        if s.get("constant_feature"):
            lines.append(f"| {s['feature']} | - | - | the same on every cell |")
        else:
            gain = 1 - s["model_mae"] / s["baseline_mae"] if s["baseline_mae"] else float("nan")
            lines.append(f"| {s['feature']} | {s['model_mae']:.3f} | {s['baseline_mae']:.3f} | {gain:+.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.capacity_features", __doc__, ["python -m calibration.capacity_features"])
    parser.parse_args(argv)
    from calibration.level_study import capacity_cells
    from calibration.records import experiment_result_files, read_records
    from calibration.regression import training_table

    records = read_records(experiment_result_files())
    cells = capacity_cells(records)
    rows = feature_rows(training_table(records, cells)[0]) if cells else []
    tasks = len({row["task"] for row in rows})
    if tasks < 3:
        print(f"error: capacity cells of {tasks} tasks with known loss tokens: need 3 to hold one out and fit on two",
              file=sys.stderr)
        return 2
    print(markdown(single_feature_scores(rows), len(rows), tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
