"""Which features can see capacity: each alone, leave one task out, against the constant."""

import math

from calibration.capacity_features import data_features, feature_rows, single_feature_scores
from calibration.level_study import capacity_cells
from calibration.regression import training_table
from calibration.synthetic import synthetic_sweep


def capacity_records(tokens_by_task: dict[str, int]) -> list[dict]:
    """synthetic_sweep (optimal ranks a 2, b 8, c 32, d 4) as alpha / r runs with these loss tokens."""
    records = synthetic_sweep()
    for r in records:
        r["config"].update(alpha=32.0, use_rslora=False)
        r["train_loss_tokens"] = tokens_by_task[r["config"]["task"]]
        r["train_rows_used"] = 1000
    return records


def test_data_features_are_read_from_the_records():
    records = capacity_records({"a": 1000, "b": 4000, "c": 16000, "d": 2000})
    (cell, *_) = capacity_cells(records, ranks=None)
    assert data_features(cell) == {"log2_loss_tokens": math.log2(1000), "log2_loss_tokens_per_row": 0.0,
                                   "base_loss": 2.0, "log2_loss_nats": math.log2(2000)}


def test_a_feature_that_tracks_the_optimal_rank_beats_the_constant_and_one_that_does_not_is_reported():
    """Loss tokens proportional to the optimal rank: that feature predicts each held-out task's
    rank far better than the training folds' median; the probe's features (the same synthetic
    spectra up to the signal) and the base loss (2.0 everywhere) are reported for what they are."""
    cells_records = capacity_records({"a": 1000, "b": 4000, "c": 16000, "d": 2000})
    cells = capacity_cells(cells_records, ranks=None)
    rows = feature_rows(training_table(cells_records, cells)[0])
    scores = {s["feature"]: s for s in single_feature_scores(rows)}
    tokens = scores["log2_loss_tokens"]
    assert tokens["folds"] == 4 and tokens["model_mae"] < 0.5 * tokens["baseline_mae"]
    assert scores["base_loss"] == {"feature": "base_loss", "constant_feature": True}
    assert scores["log2_train_size"].get("constant_feature")  # every cell has 1000 rows
