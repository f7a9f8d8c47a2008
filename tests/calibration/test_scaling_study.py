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


def test_the_learning_rate_evidence_is_the_rate_with_the_lowest_mean_regret():
    from test_recommend import LEARNING_RATE_EVIDENCE

    from calibration.scaling_study import learning_rate_evidence

    # rank 1 likes 3e-3 a little, rank 64 hates it: 1e-3 has the lowest mean regret (0 and 1 % against 5 % and 10 %)
    losses = {("a", 1): {1e-3: 1.01, 3e-3: 1.0, 3e-4: 1.1}, ("a", 64): {1e-3: 1.0, 3e-3: 1.1, 3e-4: 1.1}}
    runs = [{"config": {"model": "minilm", "task": task, "train_size": 1000, "rank": rank, "seed": 0, "steps": 125,
                        "batch_size": 8, "learning_rate": lr, "alpha": 32.0, "use_rslora": False, "top_blocks": 4},
             "eval_loss": loss}
            for (task, rank), by_rate in losses.items() for lr, loss in by_rate.items()]
    assert learning_rate_evidence(runs) == LEARNING_RATE_EVIDENCE
    assert learning_rate_evidence(runs[:1]) is None  # no (task, rank) trained at two rates
