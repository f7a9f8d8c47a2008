"""The level study: every way of choosing one rank, scored on labelled cells."""

from dataclasses import asdict, replace

import pytest
from conftest import tiny_llama, token_rows

from advisor.probe_pass import probe
from advisor.recommend import advice_from_probe
from calibration.labels import uniform_cells
from calibration.level_study import level_rows, level_summary, loss_at, rule_rank
from calibration.regression import training_table
from calibration.synthetic import cell_records, synthetic_sweep


def test_the_rule_is_the_uniform_rank_with_the_uncalibrated_advices_parameters():
    """Computed from a probe's statistics as a sweep record stores them, against the advice itself
    (the layers' signal effective ranks spread over 1-40 so the advice mixes ranks 2 to 64)."""
    result = probe(tiny_llama(), token_rows(16, 16), num_samples=16, batch_size=4, method="exact", progress=False)
    result = replace(result, layers={name: replace(stats, signal_effective_rank=1.0 + 3.0 * i)
                                     for i, (name, stats) in enumerate(result.layers.items())})
    advice = advice_from_probe(result, calibration=None)
    per_unit_rank = sum(sum(stats.shape) for stats in result.layers.values())
    layers = {name: asdict(stats) for name, stats in result.layers.items()}
    assert rule_rank(layers) == pytest.approx(advice.trainable_params / per_unit_rank)
    assert {layer.rank for layer in advice.layers.values()} >= {2, 4, 8, 16, 32}


def test_loss_between_trained_ranks_is_interpolated_in_log2_rank_and_clipped_to_the_grid():
    (cell,) = uniform_cells(cell_records("t", {1: [1.0, 1.02], 4: [0.8, 0.82], 64: [0.7, 0.72]}))
    assert loss_at(cell, 4) == (pytest.approx(0.81), False)
    assert loss_at(cell, 2) == (pytest.approx(0.91), True)  # halfway from 1 to 4 in log2
    assert loss_at(cell, 16)[0] == pytest.approx(0.81 - 0.1 * 2 / 4)  # 2 of the 4 doublings from 4 to 64
    assert loss_at(cell, 0.25) == (pytest.approx(1.01), False) and loss_at(cell, 500)[0] == pytest.approx(0.71)


def test_every_level_is_scored_against_the_cells_label_and_loss():
    """synthetic_sweep: optimal ranks 2, 8, 32, 4 grow with the signal (1, 3, 7, 2)."""
    rows = level_rows(training_table(synthetic_sweep())[0])
    by = {(row["task"], row["level"]): row for row in rows}
    assert {row["level"] for row in rows} == {"rule", "rank model", "constant", "pooled",
                                               *(f"r = {r}" for r in (1, 2, 4, 8, 16, 32, 64))}
    # the rule: signal 3 -> rank 4 on every layer; the optimal rank there is 8, the loss 0.2 * (8 - 4) / 8 above the best
    assert by[("b", "rule")]["rank"] == 4 and by[("b", "rule")]["log2_error"] == pytest.approx(1.0)
    assert by[("b", "rule")]["regret"] == pytest.approx(0.1 / 1.005)
    assert not by[("b", "rule")]["within_noise"] and by[("b", "r = 8")]["within_noise"]
    assert by[("b", "rule")]["noise_share"] == pytest.approx(0.01 / 2**0.5 / 1.005)  # seeds 0.01 apart, best 1.005
    # the constant is the other tasks' median optimal rank: of 2, 8 and 4 when c (32) is out, 4
    assert by[("c", "constant")]["rank"] == pytest.approx(4) and by[("c", "constant")]["log2_error"] == pytest.approx(3)
    # pooled: the other tasks need up to 32 (c's cell) until c is held out, when 8 is enough for a, b, d
    assert {row["task"]: row["rank"] for row in rows if row["level"] == "pooled"} == {"a": 32, "b": 32, "c": 8, "d": 32}
    summary = level_summary(rows)
    assert summary["r = 64"]["within_noise"] == 4 and summary["r = 1"]["within_noise"] == 0
    assert summary["r = 8"]["log2_error"] == pytest.approx((2 + 0 + 2 + 1) / 4)
    assert summary["r = 32"]["params_vs_r16"] == 2.0 and summary["rule"]["params_vs_r16"] == pytest.approx((2 + 4 + 8 + 2) / 64)
    # the fitted levels are rounded as the advice rounds a need: powers of two from 2 to 64
    assert {row["rank"] for row in rows if row["level"] in ("rank model", "constant")} <= {2, 4, 8, 16, 32, 64}


def test_the_fit_stores_the_levels_and_the_advice_quotes_them_only_when_it_has_them():
    from advisor.calibrated import measured_levels
    from calibration.fit import fit

    metadata = fit(synthetic_sweep())[1]
    assert metadata["levels"] == level_summary(level_rows(training_table(synthetic_sweep())[0]))
    assert "the probe's rule, which sets the level here" in measured_levels(metadata, "rule")
    assert "the probe's rule" not in measured_levels(metadata, None)
    older = {k: v for k, v in metadata.items() if k != "levels"}  # a calibration fitted before the study
    assert measured_levels(older, "rule") == measured_levels(metadata, None)


def test_the_pooled_level_is_the_labels_rule_on_every_cell_and_is_used_only_when_it_beat_the_rule():
    """synthetic_sweep: optimal ranks 2, 8, 32, 4; pooled over all four cells the label's rule
    needs 32 (c's cell needs it); leave one task out it cost less than the rule did."""
    from advisor.calibrated import calibrated_level, measured_levels
    from calibration.fit import fit
    from calibration.level_study import pooled_level

    rows = level_rows(training_table(synthetic_sweep())[0])
    habits = {(row["task"], row["rank"]): row["regret_noises"] for row in rows if row["level"].startswith("r = ")}
    means = {r: sum(habits[(t, r)] for t in "abcd") / 4 for r in (1, 2, 4, 8, 16, 32, 64)}
    assert pooled_level(rows) == min(r for r, m in means.items() if m <= min(means.values()) + 1) == 32
    metadata = fit(synthetic_sweep())[1]
    assert metadata["pooled_level"] == 32
    pooled, rule = metadata["levels"]["pooled"], metadata["levels"]["rule"]
    assert pooled["regret_noises_mean"] < 0.9 * rule["regret_noises_mean"] and calibrated_level(metadata) == 32
    assert measured_levels(metadata, "calibration").startswith(
        "the rank level is the calibration's pooled level: uniform r = 32's parameters, the smallest uniform rank whose "
        "mean regret (in seed noises) over the 4 cells (4 tasks) behind the calibration is within one seed noise of the "
        f"best uniform rank's; chosen that way leave one task out, its eval loss was on average {100 * pooled['regret_mean']:.2f} % (")
    # not 10 % better than the rule (or no pooled score, as a calibration fitted before it was stored): the rule's level
    close = {**metadata, "levels": {**metadata["levels"], "pooled": {**pooled, "regret_noises_mean": 0.91 * rule["regret_noises_mean"]}}}
    assert calibrated_level(close) is None
    assert calibrated_level({k: v for k, v in metadata.items() if k != "pooled_level"}) is None
    assert calibrated_level({**metadata, "pooled_level": True}) is None  # not a rank
    assert calibrated_level({**metadata, "levels": {"rule": rule}}) is None  # no held-out score for the pooled level
    assert measured_levels(close, "calibration") == measured_levels(close, None)  # not used: not quoted as the level
    assert calibrated_level({**metadata, "min_gain": 0.05, "levels": close["levels"]}) == 32


def test_the_users_rules_read_the_cells_loss_tokens_and_rows():
    """Tinker: the smallest power-of-two rank whose parameters (sum of in + out over the adapted
    layers: 2 blocks x (128 + 192) = 640 per rank here) hold the loss tokens; axolotl: by rows;
    both within the advice's rank bounds (2-64)."""
    records = synthetic_sweep()
    tokens = {"a": 100, "b": 641, "c": 5_000, "d": 40_000}
    for r in records:
        r["train_loss_tokens"] = tokens[r["config"]["task"]]
    rows = level_rows(training_table(records)[0])
    by = {(row["task"], row["level"]): row["rank"] for row in rows}
    assert [by[(t, "Tinker tokens rule")] for t in "abcd"] == [2, 2, 8, 64]  # r = 1 is spent as the advice's least, 2
    assert {by[(t, "axolotl thresholds")] for t in "abcd"} == {16}  # 1000 rows each


def test_capacity_labels_take_each_ranks_best_rate_and_are_scored_like_the_rank_grids():
    """The synthetic sweep retrained under alpha = 32 with alpha / r at two rates, the second worse
    by 0.5 everywhere: the capacity cells hold the better rate's runs, so every level scores as on
    the original one-rate cells."""
    import copy

    from calibration.level_study import capacity_cells

    records = []
    for original in synthetic_sweep():
        for rate, worse in ((1e-3, 0.0), (3e-3, 0.5)):
            run = copy.deepcopy(original)
            run["run_id"] += f"-{rate}"
            run["config"].update(alpha=32.0, use_rslora=False, learning_rate=rate)
            run["eval_loss"] += worse
            records.append(run)
    cells = capacity_cells(records, ranks=None)
    assert len(cells) == 4 and all(set(cell.best_lr.values()) == {1e-3} for cell in cells)
    assert capacity_cells([r for r in synthetic_sweep()]) == []  # rsLoRA runs are not capacity runs

    def scored(rows):
        return sorted((row["task"], row["level"], row["rank"], round(row["regret"], 9)) for row in rows)

    assert scored(level_rows(training_table(records, cells)[0])) == scored(level_rows(training_table(synthetic_sweep())[0]))


def test_the_fitted_tokens_rule_finds_the_parameters_per_token_the_cells_need():
    """synthetic_sweep's optimal ranks 2, 8, 32, 4 with loss tokens such that each needs 4 adapter
    parameters per token (640 per rank): the label's rule picks 4 on all cells, and on each
    task's held-out cell from the other three, where Tinker's one per token gives ranks 4x smaller."""
    from calibration.level_study import FITTED_TOKENS_RULE, fitted_params_per_token

    records = synthetic_sweep()
    optimal = {"a": 2, "b": 8, "c": 32, "d": 4}
    for r in records:
        r["train_loss_tokens"] = optimal[r["config"]["task"]] * 640 // 4
    table = training_table(records)[0]
    assert fitted_params_per_token([row["cell"] for row in table]) == 4.0
    assert fitted_params_per_token([row["cell"] for row in table if row["task"] in "bd"]) == 4.0
    rows = level_rows(table)
    by = {(row["task"], row["level"]): row for row in rows}
    assert {t: by[(t, FITTED_TOKENS_RULE)]["rank"] for t in "abcd"} == optimal
    assert all(by[(t, FITTED_TOKENS_RULE)]["regret"] == 0 for t in "abcd")
    assert {t: by[(t, "Tinker tokens rule")]["rank"] for t in "abcd"} == {"a": 2, "b": 2, "c": 8, "d": 2}
    assert fitted_params_per_token([]) is None


def test_the_fit_stores_the_capacity_cells_levels_and_the_fitted_ratio():
    """capacity_summary over alpha / r runs of synthetic_sweep with loss tokens needing 4 parameters
    per token: the levels held out by task, the ratio fitted on all cells; one task: nothing."""
    from calibration.level_study import FITTED_TOKENS_RULE, capacity_summary

    records = synthetic_sweep()
    optimal = {"a": 2, "b": 8, "c": 32, "d": 4}
    for r in records:
        r["config"].update(alpha=32.0, use_rslora=False)
        r["train_loss_tokens"] = optimal[r["config"]["task"]] * 640 // 4
    summary = capacity_summary(records, ranks=None)
    assert summary["params_per_token"] == 4.0 and summary["tasks"] == ["a", "b", "c", "d"]
    assert set(summary["levels"]) >= {FITTED_TOKENS_RULE, "Tinker tokens rule", "axolotl thresholds", "r = 64"}
    assert summary["levels"]["r = 64"]["regret_noises_mean"] == 0  # every optimal rank is at most 64
    assert summary["levels"][FITTED_TOKENS_RULE]["regret_noises_mean"] == 0
    assert [label["optimal_rank"] for label in summary["cell_labels"]] == [2, 8, 32, 4]
    assert capacity_summary([r for r in records if r["config"]["task"] == "a"], ranks=None) is None


def test_eva_runs_in_a_cell_are_scored_at_their_own_loss_and_parameters():
    """A cell's EVA runs (two seeds, r = 16 redistributed): the EVA row's rank is their adapter
    parameters over one uniform rank's, its regret their mean loss over the cell's best; a cell
    with one EVA seed, or none, has no EVA row, and the summary counts only the cells that have one."""
    from calibration.level_study import EVA_CELLS_R16, EVA_LEVEL, capacity_cells, capacity_summary, eva_runs
    from calibration.synthetic import record

    records = synthetic_sweep()
    for r in records:
        r["config"].update(alpha=32.0, use_rslora=False)
        r["train_loss_tokens"] = 1000
    layers = list(records[0]["probe"]["layers"])  # 64x64 and 64x128 layers: 128 and 192 parameters per unit rank
    eva = []
    for seed, loss in ((0, 1.02), (1, 1.06)):  # task b: best mean loss 1.005 (r = 8 and above)
        run = record("b", 16, seed, loss)
        run["config"].update(alpha=32.0, use_rslora=False, eva_rho=2.0)
        run["adapter_layers"] = [{"name": name, "r": r} for name, r in zip(layers, (32, 8, 16, 8))]
        eva.append(run)
    lonely = record("c", 16, 0, 1.0)
    lonely["config"].update(alpha=32.0, use_rslora=False, eva_rho=2.0)
    lonely["adapter_layers"] = [{"name": name, "r": 16} for name in layers]
    baselines = eva_runs(records + eva + [lonely])
    assert list(baselines) == [("minilm", "b", 1000)]
    expected_rank = (32 * 128 + 8 * 192 + 16 * 128 + 8 * 192) / (2 * 128 + 2 * 192)
    assert baselines[("minilm", "b", 1000)] == (pytest.approx(expected_rank), pytest.approx(1.04))
    cells = capacity_cells(records, ranks=None)
    rows = [row for row in level_rows(training_table(records, cells)[0], baselines) if row["level"] == EVA_LEVEL]
    assert [(row["task"], row["interpolated"]) for row in rows] == [("b", False)]
    assert rows[0]["rank"] == pytest.approx(expected_rank)
    noise = next(cell.seed_noise for cell in cells if cell.task == "b")
    assert rows[0]["regret"] == pytest.approx(1.04 / 1.005 - 1) and rows[0]["regret_noises"] == pytest.approx(0.035 / noise)
    summary = capacity_summary(records + eva + [lonely], ranks=None)
    assert summary["levels"][EVA_LEVEL]["cells"] == 1 and summary["levels"]["r = 16"]["cells"] == 4
    paired = summary["levels"][EVA_CELLS_R16]  # uniform r = 16 on b alone: b's best (r = 8 and above)
    assert paired["cells"] == 1 and paired["regret_mean"] == 0
