"""The capacity study's table: each rank at its best rate, the label and r = 1's regret in seed noises."""

import pytest

from calibration.capacity_study import cell_row, markdown, swept_cells


def run(rank, lr, seed, loss, rslora=False, eva_rho=None):
    config = {"model": "smollm2", "task": "t", "train_size": 1000, "learning_rate": lr, "steps": 125,
              "batch_size": 8, "max_length": 128, "alpha": 8.0 if rslora else 32.0, "alpha_over_r": None,
              "use_rslora": rslora, "data_seed": 0, "eval_rows": 256, "top_blocks": 4, "rank": rank, "seed": seed}
    if eva_rho is not None:
        config["eva_rho"] = eva_rho
    return {"config": config, "eval_loss": loss, "trainable_params": 100 * rank, "train_loss_tokens": 400}


def test_rows_take_each_ranks_best_rate_and_measure_r1_in_seed_noises():
    records = [run(1, 1e-3, 0, 1.10), run(1, 1e-3, 1, 1.12), run(1, 3e-3, 0, 1.30), run(1, 3e-3, 1, 1.32),
               run(16, 1e-3, 0, 1.00), run(16, 1e-3, 1, 1.02), run(64, 1e-3, 0, 1.01), run(64, 1e-3, 1, 1.01),
               run(1, 1e-3, 0, 0.5, rslora=True), run(64, 1e-3, 0, 0.4, rslora=True),  # the other arm: left out
               run(8, 1e-3, 0, 0.9),  # a rank the capacity grids do not train (the scaling grid's, one seed): left out
               run(16, 1e-3, 0, 0.8, eva_rho=2.0)]  # EVA's baseline: not a rank of the cell
    (cell,) = swept_cells(records)
    assert cell.ranks == [1, 16, 64] and swept_cells(records, ranks=None)[0].ranks == [1, 8, 16, 64]
    row = cell_row(cell)
    assert row["best_lr"] == {1: 1e-3, 16: 1e-3, 64: 1e-3} and row["params_r1"] == 100
    noise = (0.02**2 / 2 * 2 / 3) ** 0.5  # pooled sample variance over r = 1, 16 (0.0002 each) and 64 (0)
    assert row["seed_noise"] == pytest.approx(noise)
    assert row["optimal_rank"] == 16 and not row["censored"]
    assert row["regret_r1"] == pytest.approx(0.10 / noise)
    assert row["params_per_token"] == pytest.approx(100 * 16 / 400)  # r = 16's 1,600 parameters over 400 loss tokens
    text = markdown([row])
    assert "| t | 1000 | 400 | 100 | 1.1100 @0.001* |" in text and "| 16 |" in text and "| - |" in text
    with_eva = cell_row(cell, eva=(15.5, 1.01 + 2 * noise))  # the cell's EVA runs, 2 seed noises above the best
    assert with_eva["eva_loss"] == pytest.approx(1.01 + 2 * noise)
    assert f"| {1.01 + 2 * noise:.4f} (+2.0 noises) |" in markdown([with_eva])
