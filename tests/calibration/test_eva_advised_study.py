"""The EVA-at-the-advised-budget study, read against the committed capacity runs."""

import json
import statistics

import pytest

from calibration.eva_advised_study import eva_advised_rows, eva_advised_summary, markdown
from calibration.records import RESULTS_DIR


def test_cells_advised_r16_read_their_own_eva_and_uniform_runs_at_1e3(tmp_path):
    """At 4 parameters per loss token, shakespeare's and brown-lm's top-4 cells (about 10^5 loss
    tokens, 40,704 parameters per rank) are advised r = 16: their rows are the means of the
    committed EVA and uniform r = 16 runs at 1e-3, computed here from the raw lines; cells whose
    advised rank was never trained have no figures (an empty study file)."""
    rows = {(row["model"], row["task"], row["train_size"]): row
            for row in eva_advised_rows(4.0, tmp_path / "none.jsonl")}
    records = [json.loads(line) for line in (RESULTS_DIR / "smollm2-capacity.jsonl").read_text().splitlines()]
    for task in ("shakespeare", "brown-lm"):
        row = rows[("smollm2", task, 1000)]
        assert row["rank"] == 16
        runs = [r for r in records if r["config"]["task"] == task and r["config"]["train_size"] == 1000
                and r["config"]["rank"] == 16 and r["config"]["learning_rate"] == 1e-3]
        eva = [r["eval_loss"] for r in runs if r["config"].get("eva_rho")]
        uniform = [r["eval_loss"] for r in runs if not r["config"].get("eva_rho")]
        assert len(eva) == len(uniform) == 2
        assert row["eva"] == pytest.approx(statistics.mean(eva)) and row["uniform"] == pytest.approx(statistics.mean(uniform))
        assert row["eva_minus_uniform_noises"] == pytest.approx((row["eva"] - row["uniform"]) / row["noise"])
    assert rows[("smollm2", "spam-verdict", 1000)]["rank"] == 2 and rows[("smollm2", "spam-verdict", 1000)]["eva"] is None
    assert "Over 2 cells" in markdown(list(rows.values()), 4.0)
    summary = eva_advised_summary(4.0, tmp_path / "none.jsonl")
    scored = [rows[("smollm2", task, 1000)] for task in ("shakespeare", "brown-lm")]
    assert summary["cells"] == 2 and summary["eva_minus_uniform_noises"] == pytest.approx(
        statistics.mean(row["eva_minus_uniform_noises"] for row in scored), abs=1e-3)
    assert summary["better"] + summary["worse"] <= 2 and summary["learning_rate"] == 1e-3
    assert eva_advised_summary(None) is None
