"""The regression's table and its leave-one-group-out scoring, shared by the fit and the studies.

:func:`training_table` turns labelled cells into feature rows (cell, layer and loss-curve rows);
:func:`held_out_predictions` and :func:`grouped_errors` fit a standardised ridge regression with
one group (a task, a model) held out at a time and score it against a baseline fitted on the
same folds (:func:`median_baseline`, :func:`zero_baseline`, :func:`same_rank_median_baseline`).
"""

from __future__ import annotations

import json
import math

from advisor.calibrated import cell_features, curve_features, curve_rank_features, layer_features
from calibration.labels import best_scaling, rank_grid, uniform_cells

MODEL_DESCRIPTION = "StandardScaler + RidgeCV(alphas=10**-2..10**4, leave-one-out)"
RIDGE_ALPHAS = tuple(10.0**k for k in (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4))
MIN_TRAIN_ROWS = 2  # one training row in a fold: no leave-one-out choice of the ridge penalty


def training_table(records: list[dict], cells=None):
    """(cell rows, layer rows, curve rows): dicts with features, target, and the task / model for grouping.
    ``cells``: the labelled cells to tabulate (default: the rank grids' uniform-rank cells of ``records``)."""
    cell_rows, layer_rows, curve_rows = [], [], []
    if cells is None:
        cells = uniform_cells(rank_grid(records))  # one scale rule only: the regression has no scaling feature
    for cell in cells:
        layers = cell.probe()["layers"]
        quantized = bool(cell.records[0]["config"].get("quantized", False))
        features = cell_features(layers, cell.train_size, quantized)
        for rank, value in (cell.log_loss_over_best() or {}).items():
            curve_rows.append({"features": curve_features(features, rank), "target": value,
                               "task": cell.task, "model": cell.model, "cell_key": cell.key})
        optimal = cell.optimal_rank
        if optimal is None:
            continue
        cell_rows.append({"features": features, "target": math.log2(optimal), "task": cell.task, "model": cell.model,
                          "probe": cell_probe_protocol(cell), "label": cell_label(cell), "cell": cell})
        need = cell.relative_need()
        per_layer = layer_features(layers, cell.train_size, quantized)
        for name, value in need.items():
            if name in per_layer and value > 0:
                layer_rows.append({"features": per_layer[name], "target": math.log2(value),
                                   "task": cell.task, "model": cell.model, "cell": cell, "layer": name})
    return cell_rows, layer_rows, curve_rows


def cell_label(cell) -> dict:
    """What the sweep measured on a labelled cell, for ``advise`` to quote when the rank model is not
    used: its optimal uniform rank and how far the worst rank's mean eval loss lies above the best's
    (``worst_over_best``: 0.02 = 2 %)."""
    best = cell.mean_loss(cell.best_rank)
    return {"model": cell.model, "task": cell.task, "train_size": cell.train_size, "optimal_rank": cell.optimal_rank,
            "worst_over_best": round(max(cell.mean_loss(r) for r in cell.ranks) / best - 1, 4)}


def cell_probe_protocol(cell) -> dict | None:
    """How the cell's step-0 probe was taken ({"num_samples", "max_length"}: rows requested, tokens per
    row; :data:`calibration.train.PROBE_SETTINGS`), None when its record does not say."""
    from calibration.train import PROBE_SETTINGS

    probe = cell.probe()
    max_length, settings = probe.get("max_length"), PROBE_SETTINGS.get(cell.model)
    if max_length is None or settings is None or probe.get("num_rows", 0) > settings["num_samples"]:
        return None  # the record does not say, or it was probed with more rows than the sweep draws today
    return {"num_samples": settings["num_samples"], "max_length": max_length}


def probe_protocol(cell_rows: list[dict]) -> dict | None:
    """The one probe protocol of all the cells, None when they differ or do not say; ``advise``
    probes this way by default (:func:`advisor.calibrated.probe_protocol`)."""
    protocols = {json.dumps(row.get("probe"), sort_keys=True) for row in cell_rows}
    return json.loads(protocols.pop()) if len(protocols) == 1 else None


def alpha_table(records: list[dict]) -> list[dict]:
    """Rows of the alpha model: one per (cell, rank) with >= 3 scalings and a seed noise; target
    log2 of the best scaling s (what multiplies B A)."""
    rows = []
    for group in best_scaling(records):
        if len(group["scales"]) < 3 or group["seed_noise"] is None or not group["probe"]:
            continue
        features = cell_features(group["probe"]["layers"], group["train_size"], group["quantized"])
        rows.append({"features": {**features, **curve_rank_features(group["rank"])},
                     "target": math.log2(group["best_scaling"]), "task": group["task"], "model": group["model"]})
    return rows


def ridge_model():
    """Standardised features, ridge whose penalty is chosen by leave-one-out on the training rows
    only (RidgeCV's efficient LOO), so the outer leave-one-task-out scores stay honest."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def feature_matrix(rows, names):
    return [[row["features"][k] for k in names] for row in rows], [row["target"] for row in rows]


def held_out_predictions(rows: list[dict], names: list[str], group: str, baseline):
    """Per ``group`` held out: (the group, its rows, the ridge model's predictions and the baseline's),
    both fitted on the other groups' rows (``baseline(train_rows)`` returns a function of a test row);
    a group whose training side has fewer than MIN_TRAIN_ROWS rows (its penalty could not be chosen
    by leave-one-out) comes with None for both. Nothing when there are fewer than two groups. The
    folds are scikit-learn's ``LeaveOneGroupOut`` (groups in sorted order)."""
    from sklearn.model_selection import LeaveOneGroupOut

    labels = [row[group] for row in rows]
    if len(set(labels)) < 2:
        return
    for train_index, test_index in LeaveOneGroupOut().split(rows, groups=labels):
        train, test = [rows[i] for i in train_index], [rows[i] for i in test_index]
        held_out = test[0][group]
        if len(train) < MIN_TRAIN_ROWS:
            yield held_out, test, None, None
            continue
        predicted = ridge_model().fit(*feature_matrix(train, names)).predict(feature_matrix(test, names)[0])
        guess = baseline(train)
        yield held_out, test, [float(p) for p in predicted], [guess(row) for row in test]


def centred(values: list[float], keys: list) -> list[float]:
    """Each value minus the mean of the values that share its key (e.g. a cell's points over ranks)."""
    sums: dict = {}
    for key, value in zip(keys, values):
        total, count = sums.get(key, (0.0, 0))
        sums[key] = (total + value, count + 1)
    return [value - sums[key][0] / sums[key][1] for key, value in zip(keys, values)]


def grouped_errors(rows: list[dict], names: list[str], group: str, baseline, centre_by: str | None = None) -> dict | None:
    """Leave-one-``group``-out MAE of the ridge model and of the baseline
    (:func:`held_out_predictions`); a fold that could not be fitted is named in ``skipped``; None
    when no fold is left. With ``centre_by`` (a row key, e.g. the cell of a curve point) the
    predictions, the baseline's and the targets are each centred within the rows sharing that key
    before the errors are taken: what is scored is the shape within each, not its height."""
    model_errors, baseline_errors, folds, skipped = [], [], {}, {}
    for held_out, test, predicted, guessed in held_out_predictions(rows, names, group, baseline):
        if predicted is None:
            skipped[held_out] = f"{len(rows) - len(test)} training rows"
            continue
        targets = [row["target"] for row in test]
        if centre_by is not None:
            keys = [row[centre_by] for row in test]
            predicted, guessed, targets = centred(predicted, keys), centred(guessed, keys), centred(targets, keys)
        fold_model = [abs(p - t) for p, t in zip(predicted, targets)]
        fold_base = [abs(g - t) for g, t in zip(guessed, targets)]
        model_errors += fold_model
        baseline_errors += fold_base
        folds[held_out] = {"model_mae": round(sum(fold_model) / len(fold_model), 4),
                           "baseline_mae": round(sum(fold_base) / len(fold_base), 4), "n": len(test)}
    if not folds:
        return None
    return {"model_mae": round(sum(model_errors) / len(model_errors), 4),
            "baseline_mae": round(sum(baseline_errors) / len(baseline_errors), 4),
            "n": len(model_errors), "folds": folds, "skipped": skipped}


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def median_baseline(train: list[dict]):
    value = _median([row["target"] for row in train])
    return lambda row: value


def zero_baseline(train: list[dict]):
    return lambda row: 0.0


def same_rank_median_baseline(train: list[dict]):
    """The training folds' median target at the test row's rank (overall median at an unseen rank)."""
    overall = _median([row["target"] for row in train])
    by_rank: dict[float, list[float]] = {}
    for row in train:
        by_rank.setdefault(row["features"]["log2_rank"], []).append(row["target"])
    medians = {rank: _median(values) for rank, values in by_rank.items()}
    return lambda row: medians.get(row["features"]["log2_rank"], overall)
