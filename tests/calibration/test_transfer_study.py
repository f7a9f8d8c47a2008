"""The transfer study: an all-block cell against its top-4 cell, as rank and as parameters."""

import pytest

from calibration.labels import uniform_cells
from calibration.synthetic import cell_records
from calibration.transfer_study import gaps, transfer_rows


def test_all_block_ranks_are_read_against_the_top4_cell_at_the_same_rank_and_at_the_same_parameters():
    """A top-4 cell (1,000 parameters per rank) and an all-block adapter with 4x
    the parameters per rank whose losses are exactly the top-4 losses at 4x its rank: 0 noises
    from the parameters prediction, and the rank prediction off by the top-4 cell's own drop."""
    (cell,) = uniform_cells(cell_records("t", {1: [1.0, 1.01], 4: [0.8, 0.81], 16: [0.7, 0.71], 64: [0.68, 0.69]}))
    noise = cell.seed_noise
    all_block = {1: {"loss": 0.805, "rate": 1e-3, "seeds": 1, "params": 4000},
                 4: {"loss": 0.705, "rate": 3e-3, "seeds": 1, "params": 16000}}
    rows = transfer_rows(all_block, cell)
    assert [row["top4_rank_same_params"] for row in rows] == [4.0, 16.0]
    assert [row["vs_params_noises"] for row in rows] == pytest.approx([0.0, 0.0])
    assert [row["vs_rank_noises"] for row in rows] == pytest.approx([(0.805 - 1.005) / noise, (0.705 - 0.805) / noise])
    assert gaps(rows, noise) == pytest.approx({"measured": 0.1 / noise, "as_rank": 0.2 / noise, "as_params": 0.1 / noise,
                                               "best_rank": 4})
    worse_at_the_top = transfer_rows({**all_block, 16: {**all_block[4], "loss": 0.75, "params": 64000}}, cell)
    assert gaps(worse_at_the_top, noise)["best_rank"] == 4  # the gap runs to the best rank, not the largest


def test_the_tokens_rule_is_read_as_parameters_over_every_block_and_as_rank_over_the_top4_cells():
    """8,000 loss tokens at 4 parameters each: 32,000 parameters, r = 8 at the all-block adapter's 4,000
    per rank, r = 32 at the top-4 cell's 1,000; each scored on the all-block cell, whose own seeds
    give the noise (0.01 apart at every rank)."""
    from calibration.labels import best_over_lr_cells
    from calibration.transfer_study import tokens_rule_readings

    (top4,) = uniform_cells(cell_records("t", {1: [1.0, 1.01], 4: [0.8, 0.81], 16: [0.7, 0.71], 64: [0.68, 0.69]}))
    records = cell_records("t", {1: [0.6, 0.61], 4: [0.5, 0.51], 16: [0.45, 0.46], 64: [0.44, 0.45]})
    for record in records:
        record.update(trainable_params=4000 * record["config"]["rank"], train_loss_tokens=8000)
        record["config"].update(alpha=32.0, use_rslora=False)
    (all_block,) = best_over_lr_cells(records, min_ranks=1)
    noise = all_block.seed_noise
    readings = tokens_rule_readings(all_block, top4, 4.0)
    assert readings["as parameters"]["rank"] == 8 and readings["as rank"]["rank"] == 32
    assert readings["as parameters"]["regret_noises"] == pytest.approx((0.48 - 0.445) / noise)  # halfway 4 to 16
    assert readings["as rank"]["regret_noises"] == pytest.approx((0.45 - 0.445) / noise)  # halfway 16 to 64


def test_transfer_evidence_reads_the_committed_all_block_runs_against_their_top4_cell(tmp_path):
    """On the committed shakespeare runs: the ratio of 4 read as parameters gives the all-block
    adapter a rank 7-8x below the one read as rank (its r = 1 holds 7.5x the top-4 cell's), and the
    reading kept is the one with the lower mean regret over the cells; nothing without all-block
    runs or a ratio."""
    from calibration.transfer_study import transfer_evidence

    evidence = transfer_evidence(4.0)
    (cell,) = [c for c in evidence["cells"] if c["task"] == "shakespeare"]
    assert (cell["model"], cell["train_size"], evidence["blocks"]) == ("smollm2", 1000, 4)
    assert (cell["as parameters"]["rank"], cell["as rank"]["rank"]) == (2, 16)
    mean = {reading: sum(c[reading]["regret_noises"] for c in evidence["cells"]) / len(evidence["cells"])
            for reading in ("as parameters", "as rank")}
    assert evidence["reading"] == min(mean, key=mean.get)
    assert transfer_evidence(4.0, tmp_path / "none.jsonl") is None and transfer_evidence(None) is None
