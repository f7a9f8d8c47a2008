"""Labels from sweep records, the regression's fit and files, and the verified loader."""

import math
import pickle

import pytest

from advisor.calibrated import Calibration, cell_features, load_calibration
from calibration.fit import fit, save
from calibration.labels import best_over_lr_cells, best_scaling, uniform_cells
from calibration.regression import grouped_errors
from calibration.synthetic import cell_records, flat_sweep, probe_layers, record, scaling_sweep, synthetic_sweep


def test_optimal_rank_is_the_smallest_within_seed_noise_of_the_best():
    # seed pairs differ by 0.02 everywhere: pooled std 0.0141; best mean 0.855 (r=8); r=4 is 0.005 worse
    records = cell_records("t", {1: [1.0, 1.02], 2: [0.9, 0.92], 4: [0.85, 0.87], 8: [0.845, 0.865], 64: [0.88, 0.9]})
    (cell,) = uniform_cells(records)
    assert cell.seed_noise == pytest.approx(0.02 / 2**0.5)
    assert cell.best_rank == 8 and cell.optimal_rank == 4
    # without r = 64 the cell is still being swept: its best rank may lie above what it has tried
    (unfinished,) = uniform_cells([r for r in records if r["config"]["rank"] != 64])
    assert unfinished.best_rank == 8 and unfinished.optimal_rank is None


def test_a_cell_without_two_seeds_at_every_rank_has_no_label():
    (cell,) = uniform_cells(cell_records("t", {1: [1.0], 2: [0.9], 4: [0.8]}))
    assert cell.seed_noise is None and cell.optimal_rank is None
    (partial,) = uniform_cells(cell_records("t", {1: [1.0, 1.01], 2: [0.9], 4: [0.8]}))
    assert partial.seed_noise is not None and partial.optimal_rank is None


def test_best_over_lr_cells_give_each_rank_its_best_rate_and_mark_a_censored_label():
    def at(lr, losses_by_rank):
        runs = cell_records("t", losses_by_rank)
        for run in runs:
            run["config"]["learning_rate"] = lr
        return runs

    records = (at(1e-3, {1: [1.0, 1.02], 4: [0.9, 0.92], 64: [0.80, 0.82]})
               + at(3e-3, {1: [0.95, 0.97], 4: [1.5, 1.6], 64: [0.81, 0.85]})
               + at(3e-4, {1: [0.5], 64: [0.1]}))  # one seed only: not compared against the two-seed rates
    (cell,) = best_over_lr_cells(records)
    assert cell.best_lr == {1: 3e-3, 4: 1e-3, 64: 1e-3}
    assert cell.rates[1] == [3e-4, 1e-3, 3e-3] and cell.rates[4] == [1e-3, 3e-3]
    assert cell.losses[1] == [0.95, 0.97] and len(cell.records) == 6
    assert cell.lr_at_edge(1) and cell.lr_at_edge(4) and not cell.lr_at_edge(64)
    assert cell.optimal_rank == 64 and cell.censored
    assert uniform_cells(records)[0].key != cell.key  # the rank grids' cells keep their rate apart
    (uncensored,) = best_over_lr_cells(at(1e-3, {1: [1.0, 1.02], 4: [0.8, 0.82], 64: [0.80, 0.82]}))
    assert uncensored.optimal_rank == 4 and not uncensored.censored


def test_relative_need_comes_from_the_largest_rank_adapters():
    names = list(probe_layers(2.0))
    erank = {names[0]: 6.0, names[1]: 2.0, names[2]: 2.0, names[3]: 2.0}
    records = cell_records("t", {1: [1.0, 1.0], 2: [0.9, 0.9]}) + cell_records("t", {8: [0.8, 0.8]}, adapter_erank=erank)
    (cell,) = uniform_cells(records)
    need = cell.relative_need()
    assert need[names[0]] == pytest.approx(2.0) and need[names[1]] == pytest.approx(2 / 3)


def test_best_scaling_pools_the_two_rules_and_keeps_the_scalings_within_noise():
    # alpha / r = 0.5 (no rsLoRA) and rsLoRA alpha 8 at r = 16 (s = 2) are one group: only s reaches the forward pass
    records = [record("t", 16, seed, loss, scaling=s) for s, losses in ((0.5, (0.9, 0.92)), (2.0, (0.8, 0.82)),
                                                                         (4.0, (0.81, 0.83))) for seed, loss in enumerate(losses)]
    for r in records[:2]:
        r["config"].update(alpha=None, alpha_over_r=0.5, use_rslora=False)
    (row,) = best_scaling(records)
    assert row["scales"] == {0.5: pytest.approx(0.91), 2.0: pytest.approx(0.81), 4.0: pytest.approx(0.82)}
    assert row["best_scaling"] == 2.0 and row["seed_noise"] == pytest.approx(0.02 / 2**0.5)
    assert row["within_noise"] == [2.0, 4.0]  # 4.0 is 0.01 worse, inside the 0.014 noise; 0.5 is not


def test_best_scaling_counts_a_seed_once_and_reports_divergence():
    # rsLoRA alpha 2 and alpha / r = 1 at r = 4 are both s = 1: the same training, one seed
    same = [record("t", 4, 0, 0.7, scaling=1.0), record("t", 4, 0, 0.7, scaling=1.0)]
    same[1]["config"].update(alpha=None, alpha_over_r=1.0, use_rslora=False)
    other = [record("t", 4, seed, 0.8 + 0.01 * seed, scaling=2.0) for seed in (0, 1)]
    blown = record("t", 4, 0, float("nan"), scaling=8.0)
    (row,) = best_scaling(same + other + [blown])
    assert row["losses"][1.0] == [0.7] and row["diverged"] == {8.0: 1} and 8.0 not in row["scales"]


def test_loss_rise_measures_spikes_above_the_running_minimum():
    from calibration.findings import loss_rise

    assert loss_rise({"train_loss_curve": [[10, 2.0], [20, 1.5], [30, 1.2]]}) == 0.0
    assert loss_rise({"train_loss_curve": [[10, 2.0], [20, 1.0], [30, 1.6], [40, 1.1], [50, 2.5]]}) == pytest.approx(1.5)
    assert loss_rise({"train_loss_curve": [[10, 2.0], [20, float("nan")]]}) == float("inf")


def test_permutation_p_value_matches_brute_force_over_orderings():
    import itertools

    import numpy as np
    from scipy.stats import rankdata, spearmanr

    from calibration.findings import permutation_p_value

    # five cells, two labels: perfect separation happens in 2 of the 10 ways to pick the two 1s
    assert permutation_p_value([1.1, 1.2, 0.8, 0.9, 0.5], [1, 1, 4, 4, 4]) == pytest.approx(0.2)
    xs, ys = [0.3, 2.0, 1.1, 4.0, 3.5, 0.9], [1, 8, 2, 64, 16, 4]
    observed = abs(spearmanr(xs, ys).statistic)
    brute = [abs(spearmanr(xs, list(order)).statistic) >= observed - 1e-12 for order in itertools.permutations(ys)]
    assert permutation_p_value(xs, ys) == pytest.approx(sum(brute) / len(brute))
    assert permutation_p_value([1, 2, 3, 4, 5, 6], [1, 2, 4, 8, 16, 32]) == pytest.approx(2 / 720)  # perfect order
    # nine cells: 100,000 sampled orderings against all 362,880
    xs, ys = [0.3, 2.0, 1.1, 4.0, 3.5, 0.9, 2.5, 0.1, 1.7], [1, 8, 2, 64, 16, 4, 1, 2, 4]
    observed = abs(spearmanr(xs, ys).statistic)
    x = rankdata(xs) - 5
    orderings = np.array(list(itertools.permutations(rankdata(ys) - 5)))  # Pearson of ranks = Spearman
    rhos = np.abs(orderings @ x) / np.sqrt((x @ x) * (orderings[0] @ orderings[0]))
    assert rhos[0] == pytest.approx(observed)
    exact = float((rhos >= observed - 1e-12).mean())
    assert permutation_p_value(xs, ys) == pytest.approx(exact, abs=0.005)


def test_fit_saves_files_the_verified_loader_reads(tmp_path):
    records = synthetic_sweep()
    models, metadata = fit(records)
    assert metadata["cells"] == 4 and metadata["tasks"] == ["a", "b", "c", "d"]
    loto = metadata["cv"]["cell_leave_one_task_out"]
    assert loto["n"] == 4 and set(loto["folds"]) == {"a", "b", "c", "d"}
    save(models, metadata, records, "test-calibration", tmp_path)
    calibration = load_calibration(tmp_path / "test-calibration.json")
    layers = probe_layers(7.0)
    low = calibration.predict_log2_rank(probe_layers(1.0), 1000, False)
    high = calibration.predict_log2_rank(layers, 1000, False)
    assert high > low  # more gradient signal, higher advised rank
    assert set(calibration.predict_log2_relative_need(layers, 1000, False)) == set(layers)
    assert list(cell_features(layers, 1000, False)) == calibration.metadata["cell_features"]
    # the loss curve: task c (signal 7) keeps gaining up to r=32, where it is ~19 % below r=1
    curve = calibration.predict_loss_curve(layers, 1000, False)
    assert list(curve) == [1, 2, 4, 8, 16, 32, 64]
    assert curve[1] > curve[4] > curve[32] and curve[1] > 1.1 * curve[32] and curve[32] == pytest.approx(1.0, abs=0.1)
    # over the predicted best rank, and its shape follows the probe: a low-signal probe (task a's,
    # best rank 2) bottoms out at a smaller rank than task c's
    low_curve = calibration.predict_loss_curve(probe_layers(1.0), 1000, False)
    assert min(curve.values()) == 1.0 == min(low_curve.values())
    assert min(low_curve, key=low_curve.get) < min(curve, key=curve.get)
    assert metadata["cv"]["curve_leave_one_task_out"]["n"] == metadata["curve_points"] == 28
    # what each cell measured, for advice to quote: a's best rank 2, c's 32; r=1 is 0.2 (1 - 1/best) worse
    labels = {label["task"]: label for label in calibration.metadata["cell_labels"]}
    assert [labels[t]["optimal_rank"] for t in "abcd"] == [2, 8, 32, 4]
    assert labels["c"]["worst_over_best"] == pytest.approx(0.2 * 31 / 32 / 1.005, abs=1e-4)


def test_the_probe_protocol_is_recorded_when_every_cell_shares_it():
    """probe_protocol: the rows the sweep's probe drew for the model (PROBE_SETTINGS) and the tokens
    its records state; None when the cells differ or do not say."""
    from calibration.train import PROBE_SETTINGS

    records = synthetic_sweep()
    for r in records:
        r["probe"] = {**r["probe"], "max_length": 64}
    assert fit(records)[1]["probe_protocol"] == {"num_samples": PROBE_SETTINGS["minilm"]["num_samples"], "max_length": 64}
    records[0]["probe"] = {**records[0]["probe"], "max_length": 128}  # the first cell's probe
    assert fit(records)[1]["probe_protocol"] is None


def test_alpha_model_needs_two_tasks_and_learns_the_best_scaling():
    # task "a" (signal 1) is best at s = 0.5 at every rank, "b" (signal 3) at 2, "c" (signal 7) at 4
    records = synthetic_sweep()
    _, one_task = fit(records + scaling_sweep("a", 1.0, 0.5))
    assert one_task["alpha_points"] == 0 and "alpha_leave_one_task_out" not in one_task["cv"]
    assert one_task["cells"] == 4  # the alpha runs add no rank cell: another scale rule
    models, metadata = fit(records + scaling_sweep("a", 1.0, 0.5) + scaling_sweep("c", 7.0, 4.0)
                           + scaling_sweep("b", 3.0, 2.0))
    assert metadata["alpha_points"] == 9 and metadata["cv"]["alpha_leave_one_task_out"]["n"] == 9
    assert sorted(2 ** metadata["alpha_target_range"][i] for i in (0, 1)) == [0.5, 4.0]  # the planted bests
    calibration = Calibration("t", metadata, models)
    assert calibration.predict_scaling(probe_layers(7.0), 1000, False)[8] > calibration.predict_scaling(probe_layers(1.0), 1000, False)[8]
    assert Calibration("t", metadata, {k: v for k, v in models.items() if k != "alpha"}).predict_scaling(
        probe_layers(1.0), 1000, False) is None


def test_the_curve_is_scored_on_its_shape_not_its_height():
    """Three tasks whose curves share one shape (0.1 per doubling of r) at different heights: a
    model that predicts the height beats the per-rank median by far on raw errors, but centred
    within each cell neither has anything left to predict, so the curve earns nothing."""
    from calibration.regression import centred, same_rank_median_baseline

    assert centred([1.0, 3.0, 10.0, 20.0], ["a", "a", "b", "b"]) == [-1.0, 1.0, -5.0, 5.0]
    rows = [{"features": {"height": height, "log2_rank": x}, "target": height + 0.1 * x, "task": task,
             "cell_key": task} for task, height in (("a", 0.0), ("b", 0.5), ("c", 1.5)) for x in (0.0, 2.0, 4.0)]
    raw = grouped_errors(rows, ["height", "log2_rank"], "task", same_rank_median_baseline)
    shape = grouped_errors(rows, ["height", "log2_rank"], "task", same_rank_median_baseline, centre_by="cell_key")
    assert raw["model_mae"] < 0.5 * raw["baseline_mae"]
    assert shape["baseline_mae"] == pytest.approx(0.0, abs=1e-9) and shape["model_mae"] < 0.05


def test_loss_curve_is_over_the_best_rank_and_needs_ranks_1_to_64():
    (cell,) = uniform_cells(cell_records("t", {1: [1.0, 0.6], 4: [0.9, 0.9], 16: [0.5, 0.7], 64: [0.85, 0.85]}))
    curve = cell.log_loss_over_best()
    assert curve == pytest.approx({1: math.log(0.8 / 0.6), 4: math.log(1.5), 16: 0.0, 64: math.log(0.85 / 0.6)})
    (short,) = uniform_cells(cell_records("t", {1: [1.0, 1.0], 2: [0.9, 0.9], 4: [0.8, 0.8]}))
    assert short.log_loss_over_best() is None


class _Tripwire:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_the_loader_never_unpickles_a_file_whose_hash_differs(tmp_path):
    records = synthetic_sweep()
    models, metadata = fit(records)
    save(models, metadata, records, "cal", tmp_path)
    marker = tmp_path / "unpickled"
    (tmp_path / "cal.joblib").write_bytes(pickle.dumps(_Tripwire(marker)))
    with pytest.raises(ValueError, match="not a verified calibration"):
        load_calibration(tmp_path / "cal.joblib")
    assert not marker.exists()
    (tmp_path / "cal.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a calibration description"):
        load_calibration(tmp_path / "cal.json")
    with pytest.raises(ValueError, match="calibration file not found"):
        load_calibration(tmp_path / "missing.json")


def test_an_unloadable_calibration_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch):
    import json

    from advisor import calibrated
    from advisor.calibrated import resolve_calibration, sha256_of

    records = synthetic_sweep()
    models, metadata = fit(records)
    save(models, metadata, records, "broken", tmp_path)
    (tmp_path / "broken.joblib").write_bytes(b"not a pickle at all")
    description = json.loads((tmp_path / "broken.json").read_text())
    description["sha256"] = sha256_of(tmp_path / "broken.joblib")  # verified, but not loadable
    (tmp_path / "broken.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="cannot be loaded with scikit-learn"):
        load_calibration(tmp_path / "broken.json")
    monkeypatch.setattr(calibrated, "MODELS_DIR", tmp_path)
    with pytest.warns(UserWarning, match="using the uncalibrated rule"):
        assert resolve_calibration("auto") is None


def test_auto_picks_the_shipped_calibration_fitted_on_the_probes_kind_of_model(tmp_path, monkeypatch):
    from advisor import calibrated
    from advisor.calibrated import resolve_calibration, shipped_calibration

    monkeypatch.setattr(calibrated, "MODELS_DIR", tmp_path)
    assert shipped_calibration("seq-cls") is None and resolve_calibration("auto", task="seq-cls") is None
    for name, model in (("a-causal", "smollm2"), ("b-encoders", "minilm")):
        records = synthetic_sweep(model=model)
        save(*fit(records), records, name, tmp_path)
    (tmp_path / "c-notes.json").write_text("[1, 2]")  # not a calibration description: never picked
    (tmp_path / "d-odd.json").write_text('{"cell_features": [], "probe_tasks": null}')  # a description, kinds unknown
    assert shipped_calibration("causal-lm").name == "d-odd.json"  # one that does not list its kinds covers all
    (tmp_path / "d-odd.json").unlink()
    assert shipped_calibration("causal-lm").name == "a-causal.json"
    assert shipped_calibration("seq-cls").name == "b-encoders.json"
    assert shipped_calibration(None).name == shipped_calibration("token-cls").name == "b-encoders.json"
    resolved = resolve_calibration("auto", task="causal-lm")
    assert resolved.automatic and resolved.metadata["probe_tasks"] == ["causal-lm"]
    assert resolve_calibration("AUTO", task="seq-cls").name == "b-encoders"
    for path in tmp_path.glob("[ab]-*.json"):
        path.unlink()
    assert shipped_calibration("seq-cls").name == "c-notes.json"  # only a non-description: load_calibration says why
    (tmp_path / "c-notes.joblib").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a calibration description"):
        load_calibration(shipped_calibration("seq-cls"))


def test_layer_type_arms_pair_restricted_runs_with_the_cells_uniform_runs():
    from calibration.findings import layer_type_arms, layer_types

    uniform = cell_records("t", {8: [1.0, 1.02], 32: [0.9, 0.92], 4: [1.1, 1.1]})
    restricted = []
    for (attention, mlp), losses in (((8, 0), (0.95, 0.97)), ((0, 8), (1.05, 1.07))):
        for seed, loss in enumerate(losses):
            run = record("t", None, seed, loss)
            run["config"].update(attention_rank=attention, mlp_rank=mlp)
            restricted.append(run)
    other_task = cell_records("u", {8: [1.0, 1.0]})  # no restricted runs: not a layer-type cell
    (arms,) = layer_type_arms(uniform + restricted + other_task).values()
    assert arms == {(8, 8): [1.0, 1.02], (32, 32): [0.9, 0.92], (8, 0): [0.95, 0.97], (0, 8): [1.05, 1.07]}
    table = layer_types(uniform + restricted)
    # every arm's seeds differ by 0.02: seed noise 0.0141; MLP-only - attention-only at r 8 = 0.1 / 0.0141
    assert "| 0.014 | +7.1 / - |" in table
    assert "- minilm/t: 8/0 1, 0/8 1, 8/8 8, 32/32 32" in table  # trainable parameters in thousands


def test_data_size_table_pairs_a_tasks_cells_across_training_set_sizes():
    from calibration.findings import data_size

    small = cell_records("t", {1: [0.99, 1.01], 4: [0.98, 1.0], 64: [0.99, 1.01]}, train_size=250)
    large = cell_records("t", {1: [1.0, 1.02], 4: [0.8, 0.82], 64: [0.7, 0.72]}, train_size=4000)
    single_size = cell_records("u", {1: [1.0, 1.0], 4: [1.0, 1.0], 64: [1.0, 1.0]})
    rows = data_size(small + large + single_size).splitlines()[2:]
    assert [row.split(" | ")[2:5] for row in rows] == [["250", "3", "1"], ["4000", "3", "64"]]
    assert rows[1].endswith("| 21.2 |")  # (1.01 - 0.71) / 0.0141 (the seeds' sd): the r=1 gap in seed noises
    assert "No task" in data_size(single_size)


def test_scale_rule_table_pairs_cells_that_differ_only_in_how_ba_is_scaled():
    from calibration.findings import scale_rule_ranks

    rslora = cell_records("t", {1: [1.0, 1.02], 4: [0.8, 0.82], 16: [0.85, 0.87], 64: [0.9, 0.92]})
    two_r = [{**r, "config": {**r["config"], "alpha": None, "alpha_over_r": 2.0, "use_rslora": False},
              "lora": {**r["lora"], "scaling_by_group": {"attention": 2.0}}}
             for r in cell_records("t", {1: [0.95, 0.97], 4: [0.96, 0.98], 16: [0.851, 0.87], 64: [1.2, 1.22]})]
    other_task = cell_records("u", {1: [1.0, 1.02], 4: [0.8, 0.82], 64: [0.9, 0.92]})
    table = scale_rule_ranks(rslora + two_r + other_task)
    rows = [row for row in table.splitlines()[2:] if row.startswith("| minilm")]
    assert [row.split(" | ")[3] for row in rows] == ["rsLoRA alpha 8", "alpha/r 2"]
    assert [row.split(" | ")[6] for row in rows] == ["4", "16"]
    # best 0.81 against 0.8605, pooled seed noise 0.0141: alpha = 2r's best is 3.6 noises behind
    assert rows[0].endswith("| 0.0 |") and rows[1].endswith("| 3.6 |")
    # at r = 16 both rules give s = 8 / sqrt(16) = 2 = alpha / r: the same training, listed per seed
    assert "- minilm/t n=1000 r=16 seed 0 (s = 2): 0.850000 vs 0.851000 (|difference| 0.0010)" in table
    assert "r=16 seed 1 (s = 2): 0.870000 vs 0.870000" in table and "r=4 seed" not in table
    assert "No cell" in scale_rule_ranks(rslora + other_task)


def test_a_fit_is_released_only_when_its_rank_or_per_layer_model_beats_its_baseline():
    from calibration.fit import release_shortfall, used_models

    learned = fit(synthetic_sweep())[1]  # the rank grows with the signal: the model beats the constant
    assert release_shortfall(learned) is None and used_models(learned) == ["cell", "curve"]
    flat = fit(flat_sweep())[1]  # same best rank whatever the signal, every layer the same need
    scores = flat["cv"]["cell_leave_one_task_out"]
    assert scores["baseline_mae"] == 0 and release_shortfall(flat) == (
        "neither its rank model (baseline: the constant best rank) nor its per-layer model (baseline: every layer "
        "the same) earns its place: the rank model is not 10% better than its baseline leave-one-task-out (0.000 "
        "against 0.000); the per-layer model is not 10% better than its baseline leave-one-task-out (0.000 against 0.000)")
    shaped = fit(flat_sweep(mlp_need=4.0))[1]  # the MLP layers use 4x the attention's rank on every task
    assert release_shortfall(shaped) is None and used_models(shaped) == ["layer"]
    one_task = fit([r for size in (250, 1000) for r in cell_records("a", {1: [1.1, 1.11], 4: [1.0, 1.01], 64: [1.0, 1.01]},
                                                                  train_size=size)])[1]
    assert "the rank model has no leave-one-task-out score (fewer than 2 tasks" in release_shortfall(one_task)
    # a rank model without a score and no per-layer rows (no adapter spectra): nothing advise would use
    no_layers = fit([{**r, "adapter_layers": []} for r in flat_sweep()])[1]
    no_layers["cv"]["cell_leave_one_task_out"] = None
    assert "per-layer model has no leave-one-task-out score" in release_shortfall(no_layers)
    # the bar is the one the fit was written with (--min-gain): the rank model is 75 % better than
    # the constant, the curve 11 %; at 0.8 neither is used
    assert used_models({**learned, "min_gain": 0.8}) == [] and "min_gain" not in learned


def test_training_runs_counts_the_trainings_not_the_probe_studies(tmp_path, monkeypatch):
    import json

    from calibration import records as records_module
    from calibration.findings import training_runs

    def write(name, configs):
        (tmp_path / name).write_text("".join(json.dumps({"run_id": c["task"] + c["model"], "config": c}) + "\n"
                                             for c in configs))

    write("grid.jsonl", [{"model": "minilm", "task": "a"}, {"model": "mpnet", "task": "b"}])
    write("planted.jsonl", [{"model": "smollm2", "task": "planted"}])  # probes only, no training
    write("validate.jsonl", [{"model": "minilm", "task": "c"}, {"model": "minilm", "task": "a"}])  # a: also a grid run
    with open(tmp_path / "validate.jsonl", "a") as f:
        f.write('{"run_id": "x", "note": "no config"}\n{"run_id": "cut sh')  # a record being written
    monkeypatch.setattr(records_module, "RESULTS_DIR", tmp_path)
    rows = training_runs().splitlines()
    assert rows[2:] == ["| grid.jsonl | 2 | minilm 1, mpnet 1 | 2 |", "| validate.jsonl | 2 | minilm 2 | 2 |",
                        "| all | 3 | 2 models | 3: a, b, c |"]


def test_permutation_p_value_is_nan_for_a_constant_or_missing_value():
    from calibration.findings import permutation_p_value

    assert math.isnan(permutation_p_value([1.0, 2.0, 3.0, 4.0], [4, 4, 4, 4]))
    assert math.isnan(permutation_p_value([1.0, float("nan"), 3.0, 4.0], [1, 2, 4, 8]))
    assert math.isnan(permutation_p_value([float(i) for i in range(9)], [1, 2, 4, 8, 16, 32, 64, 1, float("nan")]))


def test_q4_correlates_the_probe_with_the_optimal_rank_and_flags_a_tasks_repeated_cells():
    from calibration.findings import prediction

    best_by_task = {"a": 1, "b": 4, "c": 16, "d": 64}  # signal effective rank grows with the optimal rank
    records = []
    for signal, (task, best) in enumerate(best_by_task.items(), 1):
        losses = {r: [1.0 + 0.5 * (r < best), 1.01 + 0.5 * (r < best)] for r in (1, 4, 16, 64)}
        records += cell_records(task, losses, signal=float(signal))
    lines = prediction(records).splitlines()
    assert "mean signal effective rank at step 0: Spearman +1.00" in lines[0] and "p = 0.083) over 4 cells" in lines[0]
    assert "mean stable rank at step 0: Spearman +nan (bootstrap 95% interval +nan to +nan" in lines[2]  # constant
    records += cell_records("a", {1: [1.0, 1.01], 4: [1.0, 1.01], 64: [1.0, 1.01]}, signal=0.5, train_size=250)
    lines = prediction(records).splitlines()
    assert "5 cells from 4 tasks" in lines[0] and "over 5 cells (all sizes)" in lines[1]
    assert "Spearman +1.00" in lines[5] and "over 4 tasks at 1000 rows (one cell per task)" in lines[5]


def test_a_fold_with_too_few_training_rows_is_skipped_not_scored():
    """Leave-one-model-out with one cell of a second model: the fold that trains on that one
    cell cannot choose its ridge penalty, so it is named in ``skipped`` and scores nothing."""
    records = synthetic_sweep() + cell_records("e", {r: [1.0, 1.01] for r in (1, 2, 4, 8, 16, 32, 64)},
                                               signal=1.0, model="mpnet")
    _, metadata = fit(records)
    lomo = metadata["cv"]["cell_leave_one_model_out"]
    assert lomo["skipped"] == {"minilm": "1 training rows"}
    assert set(lomo["folds"]) == {"mpnet"} and lomo["n"] == 1
    assert grouped_errors([{"features": {"x": 1.0}, "target": 0.0, "task": t} for t in "ab"],
                          ["x"], "task", lambda train: lambda row: 0.0) is None


def test_the_gain_ablation_adds_only_the_gain_feature_to_the_fits_per_layer_rows():
    """On the committed results: the ablation's rows are the fit's per-layer rows plus
    log2(gain / the cell's median gain), so its 'without' error is the shipped fit's."""
    import statistics

    from calibration.gain_study import layer_rows_with_gain
    from calibration.records import sweep_records as read_records
    from calibration.regression import training_table

    records = [r for r in read_records() if r["model"] == "smollm2"]
    _, fit_rows, _ = training_table(records)
    rows = layer_rows_with_gain("causal-lm")
    assert len(rows) == len(fit_rows) > 0
    gains = {}
    for mine, theirs in zip(rows, fit_rows):
        gain = mine["features"].pop("log2_relative_gain")
        assert mine["features"] == theirs["features"] and mine["target"] == theirs["target"] and math.isfinite(gain)
        gains[(mine["task"], mine["features"]["log2_train_size"], mine["layer"])] = gain
    cell = [r for r in records if r["task"] == "debian-summary" and r["train_size"] == 1000][0]["probe"]["layers"]
    median = statistics.median(stats["natural_gain"] for stats in cell.values())
    name = "model.layers.5.mlp.down_proj"
    expected = math.log2(cell[name]["natural_gain"] / median)
    assert gains[("debian-summary", math.log2(1000), name)] == pytest.approx(expected)


def test_gemma3_is_probed_as_a_causal_lm_and_its_capacity_grid_is_kept_out_of_the_rank_labels(tmp_path, monkeypatch):
    from calibration import records

    assert records.probe_task("gemma3") == records.probe_task("smollm2") == "causal-lm"
    for name in ("smollm2-rank.jsonl", "smollm2-capacity.jsonl", "gemma3-capacity.jsonl"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(records, "RESULTS_DIR", tmp_path)
    assert [p.name for p in records.sweep_result_files()] == ["smollm2-rank.jsonl"]
