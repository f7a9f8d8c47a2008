"""Fit the calibrated regression from the committed sweep results and save it to ``models/``.

    python -m calibration.fit [--results calibration/results/*.jsonl] [--probe-task seq-cls|causal-lm|all]
                              [--name NAME] [--dry-run]

Labels come from :mod:`calibration.labels` (optimal uniform rank per cell, per-layer relative
need); features from :mod:`advisor.calibrated` (scale-free probe statistics). Two models:

- ``cell``: ridge regression (standardised features; the penalty chosen by leave-one-out within
  the training rows) of log2(optimal uniform rank), over the
  cells of one scale rule (rsLoRA, alpha 8: the rank grids'; :data:`calibration.labels.RANK_GRID_RULE`);
- ``layer``: ridge regression of log2(relative need) of each layer (its trained adapter's
  effective rank over the cell's mean);
- ``alpha``: ridge regression of log2(best PEFT scaling s) of each (cell, rank) trained at several
  scalings (:func:`calibration.labels.best_scaling`, alpha / r and rsLoRA pooled), from the cell
  features plus log2 r and its square; fitted once two tasks have such rows;
- ``curve``: ridge regression of log(mean eval loss at uniform rank r / the cell's best rank's)
  (:meth:`calibration.labels.Cell.log_loss_over_best`), from the cell features, log2 r and its
  square, and their products (:func:`advisor.calibrated.curve_features`): the predicted
  loss-vs-rank curve. Cells without a rank label (one seed somewhere) still give curve points
  when their ranks span 1 to 64.

Validation: leave-one-task-out and leave-one-model-out mean absolute error, each beside its
baseline: for ``cell`` in log2 units (1.0 = a factor of 2 in rank) against the constant
(training-fold median) best rank; for ``alpha`` in log2 units against the training folds'
median at the same rank; for ``layer`` against "every layer the same" (log2
relative need 0); for ``curve`` in log loss ratio (0.01 = 1 % of the loss) against the
training folds' median at the same rank, scored on the curve's *shape*: within each held-out
cell the predictions, the baseline's and the measured values are each centred on their mean over
the cell's ranks, since the curve's job is to compare ranks (a model that only predicts how high
a cell's curve sits would otherwise score as if it could).
Only the cells of one probe task (``--probe-task``, default seq-cls: the encoders' sequence
classification) are fitted by default: pooling SmolLM2's cells with the encoder cells made the
leave-one-model-out errors worse than the constant's (calibration/README.md, "The regression").
The metadata's ``probe_tasks`` lets ``advisor`` pick the shipped calibration for the probe's kind
of model and decline one fitted on another kind; its ``probe_protocol`` (rows and tokens per row of
the cells' step-0 probes) is how ``advise`` probes by default.
Writes ``models/NAME.joblib`` and ``models/NAME.json`` (default NAME: ``lora-rank-PROBE_TASK``;
feature names, versions, sha256 of the joblib file, sha256 of the training records, the scores, and
each labelled cell's optimal rank and loss spread, and how each way of choosing one rank fared on them
(``levels``, :mod:`calibration.level_study`), which ``advise`` quotes when its rank model is not used,
and ``pooled_level``: the uniform rank the label's rule picks on all the cells pooled, which sets the
level of advice with no budget when, leave one task out, it beat the probe's rule, as
:func:`advisor.calibrated.calibrated_level` decides);
``capacity``: how each way of choosing one rank fared on the capacity grids' cells (each rank at
its best learning rate), each task held out, with the tokens rule's fitted parameters per loss
token (:func:`calibration.level_study.capacity_summary`; None with fewer than two tasks' cells),
and ``transfer``: whether that ratio carried over to an adapter on every block as parameters or as
rank, on the cells trained both ways (:func:`calibration.transfer_study.transfer_evidence`), which
sets the advice's level when it has cells of enough tasks (:func:`advisor.calibrated.capacity_level`),
and ``eva_at_level``: PEFT's EVA against uniform at the tokens rule's rank, both at its budget
(:func:`calibration.eva_advised_study.eva_advised_summary`), which the advice quotes;
``learning_rate``: the rate the parametrization experiment found best under alpha = 32 with
alpha / r on the fit's kind of model (:func:`calibration.scaling_study.learning_rate_evidence`;
None where none was trained), which ``advise`` states in its default alpha mode;
``--dry-run`` prints the scores only. A fit is written only when its rank model (against the
constant best rank) or its per-layer model (against "every layer the same") is 10 % better than
its baseline leave-one-task-out (``--min-gain``, recorded in the JSON as ``min_gain``); ``advisor``
then uses only the models that are (:func:`advisor.calibrated.earns_its_place`): a model that is
not would dress a constant up as a measurement.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from advisor.calibrated import (
    MIN_GAIN,
    MODELS_DIR,
    earns_its_place,
    required_gain,
    sha256_of,
    why_unused,
)
from advisor.loading import TASK_CAUSAL_LM, TASK_SEQ_CLS
from calibration import script_parser
from calibration.labels import RANK_GRID_RULE
from calibration.records import experiment_result_files, probe_task, read_records, sweep_result_files
from calibration.regression import (
    MODEL_DESCRIPTION,
    alpha_table,
    feature_matrix,
    grouped_errors,
    median_baseline,
    probe_protocol,
    ridge_model,
    same_rank_median_baseline,
    training_table,
    zero_baseline,
)


def learning_rate_of(task: str) -> dict | None:
    """The rate ``advise`` states under alpha = 32 with alpha / r for models of probe ``task`` ("all":
    every model): :func:`calibration.scaling_study.learning_rate_evidence` on the experiment files, with
    ``every_block``: each rank's best rate on the cells trained with every block adapted
    (:func:`calibration.transfer_study.every_block_rates`)."""
    from calibration.scaling_study import learning_rate_evidence
    from calibration.transfer_study import every_block_rates

    evidence = learning_rate_evidence([r for r in read_records(experiment_result_files())
                                       if task in ("all", probe_task(r["model"]))])
    if evidence is not None:
        evidence["every_block"] = every_block_rates()
    return evidence


def capacity_of(task: str) -> dict | None:
    """The capacity cells' levels for models of probe ``task`` ("all": every model), which set the
    advice's level (:func:`calibration.level_study.capacity_summary` on the experiment files)."""
    from calibration.eva_advised_study import eva_advised_summary
    from calibration.level_study import capacity_summary
    from calibration.transfer_study import transfer_evidence

    summary = capacity_summary([r for r in read_records(experiment_result_files())
                                if task in ("all", probe_task(r["model"]))])
    if summary is not None:
        summary["transfer"] = transfer_evidence(summary["params_per_token"])
        summary["eva_at_level"] = eva_advised_summary(summary["params_per_token"])
    return summary


def fit(records: list[dict]) -> tuple[dict, dict]:
    """(models, metadata without the file hashes)."""
    from calibration.level_study import level_rows, level_summary, pooled_level

    cell_rows, layer_rows, curve_rows = training_table(records)
    if len(cell_rows) < 2:
        raise ValueError(f"only {len(cell_rows)} labelled cells in the results: need at least 2 to fit")
    levels = level_rows(cell_rows)
    alpha_rows = alpha_table(records)
    if len({row["task"] for row in alpha_rows}) < 2:
        alpha_rows = []  # one task: nothing to validate a scaling model on
    tables = {"cell": (cell_rows, median_baseline), "layer": (layer_rows, zero_baseline),
              "curve": (curve_rows, same_rank_median_baseline), "alpha": (alpha_rows, same_rank_median_baseline)}
    names = {kind: list(rows[0]["features"]) if rows else [] for kind, (rows, _) in tables.items()}
    cv, models = {}, {}
    for kind, (rows, baseline) in tables.items():
        if not rows:
            continue
        for group in ("task", "model"):
            cv[f"{kind}_leave_one_{group}_out"] = grouped_errors(rows, names[kind], group, baseline,
                                                                 centre_by="cell_key" if kind == "curve" else None)
        models[kind] = ridge_model().fit(*feature_matrix(rows, names[kind]))
    metadata = {
        "cell_features": names["cell"],
        "cell_feature_ranges": {k: [min(r["features"][k] for r in cell_rows), max(r["features"][k] for r in cell_rows)]
                                for k in names["cell"]},
        "layer_features": names["layer"],
        "curve_features": names["curve"],
        "alpha_features": names["alpha"],
        "targets": {"cell": "log2 optimal uniform rank", "layer": "log2 relative need (adapter erank / cell mean)",
                    "curve": "log(eval loss at uniform rank r / eval loss at the cell's best rank)",
                    "alpha": "log2 best PEFT scaling s (multiplies B A) at rank r"},
        "model": MODEL_DESCRIPTION,
        "scale_rule": RANK_GRID_RULE,
        "cells": len(cell_rows),
        "cell_labels": [row["label"] for row in cell_rows],
        "levels": level_summary(levels),
        "pooled_level": pooled_level(levels),
        "layers": len(layer_rows),
        "curve_points": len(curve_rows),
        "alpha_points": len(alpha_rows),
        "alpha_target_range": [min(r["target"] for r in alpha_rows), max(r["target"] for r in alpha_rows)] if alpha_rows else None,
        "runs": len(records),
        "tasks": sorted({row["task"] for row in cell_rows}),
        "models_seen": sorted({row["model"] for row in cell_rows}),
        "probe_tasks": sorted({probe_task(row["model"]) for row in cell_rows}),
        "probe_protocol": probe_protocol(cell_rows),
        "cv": cv,
    }
    return models, metadata


def records_hash(records: list[dict]) -> str:
    lines = sorted(json.dumps(r, sort_keys=True) for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def save(models: dict, metadata: dict, records: list[dict], name: str, directory: Path = MODELS_DIR) -> Path:
    import joblib
    import sklearn
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / f"{name}.joblib"
    joblib.dump(models, model_path)
    metadata = {
        **metadata,
        "name": name,
        "versions": {"scikit-learn": sklearn.__version__, "joblib": joblib.__version__, "torch": torch.__version__},
        "records_sha256": records_hash(records),
        "sha256": sha256_of(model_path),
    }
    (directory / f"{name}.json").write_text(json.dumps(metadata, indent=1) + "\n")
    return model_path


def release_shortfall(metadata: dict) -> str | None:
    """Why this fit should not be shipped (None: it may be): neither its rank model nor its
    per-layer model earns its place (:func:`advisor.calibrated.earns_its_place`, at the fit's
    ``min_gain``), so ``advise`` would use none of it."""
    if any(earns_its_place(metadata, kind) for kind in ("cell", "layer")):
        return None
    return (f"neither its rank model (baseline: the constant best rank) nor its per-layer model (baseline: every "
            f"layer the same) earns its place: the rank model {why_unused(metadata, 'cell')}; the per-layer model "
            f"{why_unused(metadata, 'layer')}")


def used_models(metadata: dict) -> list[str]:
    """The models of a fit that ``advise`` will use (:func:`advisor.calibrated.earns_its_place`)."""
    return [kind for kind in ("cell", "layer", "curve", "alpha") if earns_its_place(metadata, kind)]


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.fit", __doc__, [
        "python -m calibration.fit --dry-run                      # scores only",
        "python -m calibration.fit --dry-run --probe-task all     # the pooled fit, leave-one-model-out",
        "python -m calibration.fit                                # refit models/lora-rank-seq-cls",
        "python -m calibration.fit --probe-task causal-lm         # fit models/lora-rank-causal-lm",
    ])
    parser.add_argument("--results", nargs="+", type=Path, help="results files (default: calibration/results/*.jsonl)")
    parser.add_argument("--probe-task", choices=(TASK_SEQ_CLS, TASK_CAUSAL_LM, "all"), default=TASK_SEQ_CLS,
                        help="fit the runs of one kind of model only (default: seq-cls, the encoders), or pool all")
    parser.add_argument("--name", help="file name in models/ (default: lora-rank-PROBE_TASK; advise picks the "
                                       "shipped file whose probe_tasks cover the probe)")
    parser.add_argument("--dry-run", action="store_true", help="print the scores, write nothing")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help=f"write only when the rank or the per-layer model's leave-one-task-out error is at "
                             f"least this share below its baseline's (default {MIN_GAIN:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.min_gain < 1:
        parser.error(f"--min-gain is a share in [0, 1), got {args.min_gain}")
    paths = args.results or sweep_result_files()
    records = [r for r in read_records(paths) if args.probe_task in ("all", probe_task(r["model"]))]
    try:
        models, metadata = fit(records)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: metadata[k] for k in ("cells", "layers", "alpha_points", "runs", "tasks", "models_seen", "cv")},
                     indent=1))
    metadata["min_gain"] = args.min_gain  # the bar advise holds each of its models to
    metadata["learning_rate"] = learning_rate_of(args.probe_task)
    metadata["capacity"] = capacity_of(args.probe_task)
    shortfall = release_shortfall(metadata)
    if not shortfall:
        names = {"cell": "rank", "layer": "per-layer", "curve": "loss-curve", "alpha": "alpha"}
        print(f"advise would use its models: {', '.join(names[kind] for kind in used_models(metadata))} "
              f"(each at least {required_gain(metadata):.0%} better than its baseline)", file=sys.stderr)
    if args.dry_run:
        print(f"would {'not be written: ' + shortfall if shortfall else 'be written'}", file=sys.stderr)
        return 0
    if shortfall:
        print(f"error: not written: {shortfall}", file=sys.stderr)
        return 2
    name = args.name or f"lora-rank-{args.probe_task}"
    print(f"wrote {save(models, metadata, records, name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
