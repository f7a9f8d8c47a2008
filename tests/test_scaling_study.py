"""The parametrization study's summary: each rank's best learning rate and the spreads across ranks."""

import pytest

from calibration.scaling_study import grid, markdown, summary


def run(rank, lr, loss, rslora=False, task="t"):
    return {"config": {"task": task, "rank": rank, "learning_rate": lr, "alpha": 8.0 if rslora else 32.0,
                       "use_rslora": rslora}, "eval_loss": loss}


def test_best_rate_per_rank_its_edge_and_the_spreads():
    losses = {1: {1e-4: 1.2, 1e-3: 1.0, 1e-2: 1.1}, 64: {1e-4: 1.1, 1e-3: 1.05, 1e-2: 1.3}}
    records = [run(r, lr, loss) for r, by_lr in losses.items() for lr, loss in by_lr.items()]
    records += [run(1, 1e-3, 2.0, rslora=True), run(64, 1e-3, 1.0, rslora=True)]
    rows = {row["parametrization"]: row for row in summary(grid(records))}
    fixed, rs = rows["alpha/r (alpha 32)"], rows["rsLoRA (alpha 8)"]
    assert fixed["best"] == {1: (1e-3, 1.0, False), 64: (1e-3, 1.05, False)}
    assert fixed["best_spread"] == pytest.approx(0.05) and fixed["complete"]
    assert fixed["spread_at_rate"] == {1e-4: pytest.approx(0.1 / 1.1), 1e-3: pytest.approx(0.05), 1e-2: pytest.approx(0.2 / 1.1)}
    assert rs["best_spread"] == pytest.approx(1.0) and rs["best"][64] == (1e-3, 1.0, False)
    text = markdown(summary(grid(records[:-1])))
    assert "| 1 | 0.0010 | 0.001 | 1.0000 |" not in text and "| 1 | 1.2000 | 1.0000 | 1.1000 | 0.001 | 1.0000 |" in text
