"""Advice from a probe: budgets, rounding, alpha modes, exports other tools read, comparison, report."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import CALIBRATIONS, calibration_description, fixture_calibration, probe_layers, tiny_llama, token_rows
from peft import LoraConfig, get_peft_model

from advisor.allocation import allocate, parse_budget, planned_rank, rounded_rank
from advisor.cli import main
from advisor.compare import compare_with
from advisor.probe_pass import probe
from advisor.recommend import Advice, advice_from_probe
from advisor.report import headline, loss_curve_text

LEARNING_RATE_EVIDENCE = {
    "parametrization": "alpha/r", "alpha": 32.0, "learning_rate": 0.001,
    "mean_regret": {"0.0003": 0.1, "0.001": 0.005, "0.003": 0.05}, "best_by_rank": {"1": 0.003, "64": 0.001},
    "at_edge": False, "groups": 2,
    "models": ["minilm"], "tasks": ["a"], "ranks": [1, 64], "top_blocks": [4], "epochs": [1.0], "batch_size": [8],
    "command": "python -m calibration.scaling_study",
}
"""What ``calibration.scaling_study.learning_rate_evidence`` writes for rank 1 liking 3e-3 a little and
rank 64 hating it (tests/calibration/test_scaling_study.py checks it computes exactly this)."""


@pytest.fixture(scope="module")
def probed():
    model = tiny_llama()
    return model, probe(model, token_rows(16, 16), num_samples=16, batch_size=4, method="exact", progress=False)


def layer_cost(advice):
    return sum(layer.rank * sum(layer.shape) for layer in advice.layers.values())


def test_budget_is_spent_by_need_and_not_exceeded(probed):
    _, result = probed
    shapes = {name: stats.shape for name, stats in result.layers.items()}
    budget = parse_budget("r=8", shapes)
    assert budget == 8 * sum(sum(shape) for shape in shapes.values())
    advice = advice_from_probe(result, budget="r=8", min_rank=1)
    assert advice.trainable_params == layer_cost(advice) <= budget
    needs = {name: layer.need for name, layer in advice.layers.items()}
    ranks, factor = allocate(needs, shapes, budget, 1, 64)
    assert ranks == advice.ranks
    # the factor is the largest that fits: twice it would not
    assert sum(r * sum(shapes[n]) for n, r in allocate({n: v * factor * 2 for n, v in needs.items()}, shapes, None, 1, 64)[0].items()) > budget
    # the top-up spends what one power-of-two factor leaves: a layer it did not double could not be
    at_factor = {n: rounded_rank(v, factor, 1, 64) for n, v in needs.items()}
    spent = advice.trainable_params
    for name, layer in advice.layers.items():
        assert layer.rank in (at_factor[name], 2 * at_factor[name])
        if layer.rank == at_factor[name] and layer.rank < 64:
            assert spent + layer.rank * sum(layer.shape) > budget, name


@pytest.mark.parametrize("budget, expected", [(1000, 1000), ("1.5M", 1_500_000), ("200k", 200_000), ("r=4", None)])
def test_budget_forms(probed, budget, expected):
    _, result = probed
    shapes = {name: stats.shape for name, stats in result.layers.items()}
    value = parse_budget(budget, shapes)
    assert value == (expected if expected is not None else 4 * sum(sum(s) for s in shapes.values()))


@pytest.mark.parametrize("budget, message", [(0, "must be positive"), ("-3", "is not a number"),
                                             ("lots", "is not a number"), (10, "is below")])
def test_bad_budgets_are_refused(probed, budget, message):
    _, result = probed
    with pytest.raises(ValueError, match=message):
        advice_from_probe(result, budget=budget)


def test_rslora_mode_reaches_peft_with_one_alpha(probed):
    model, result = probed
    advice = advice_from_probe(result, alpha_mode="rslora", budget="r=8")
    peft_model = get_peft_model(copy.deepcopy(model), advice.config)
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            rank = advice.layers[name.removeprefix("base_model.model.")].rank
            assert module.r["default"] == rank
            assert module.scaling["default"] == pytest.approx(8.0 / rank**0.5)


def test_calibrated_alpha_mode_writes_the_predicted_scaling_and_needs_an_alpha_model(probed, tmp_path):
    model, result = probed
    fixture_calibration("encoders", tmp_path, "no-alpha")
    with pytest.raises(ValueError, match="no-alpha has no alpha model"):
        advice_from_probe(result, alpha_mode="calibrated", train_size=1000, calibration=tmp_path / "no-alpha.json")
    with pytest.raises(ValueError, match="needs a calibration with an alpha model: no calibration"):
        advice_from_probe(result, alpha_mode="calibrated", calibration=None)
    fixture_calibration("encoders-alpha", tmp_path, "cal")
    advice = advice_from_probe(result, alpha_mode="calibrated", train_size=1000, budget="r=8", calibration=tmp_path / "cal.json")
    from dataclasses import asdict

    from advisor.calibrated import load_calibration

    layers = {name: asdict(stats) for name, stats in result.layers.items()}
    predicted = load_calibration(tmp_path / "cal.json").predict_scaling(layers, 1000, False)
    peft_model = get_peft_model(copy.deepcopy(model), advice.config)
    checked = 0
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            rank = advice.layers[name.removeprefix("base_model.model.")].rank
            assert module.scaling["default"] == pytest.approx(predicted[rank], rel=1e-3)
            checked += 1
    assert checked == len(advice.layers) and not advice.config.use_rslora
    assert all(0.5 <= s <= 4.0 for s in predicted.values())  # within the best scalings the fit saw
    # an alpha model less than 10 % better than its baseline in cross-validation is refused
    cv = calibration_description("encoders-alpha")["cv"]
    cv["alpha_leave_one_task_out"]["model_mae"] = 0.91 * cv["alpha_leave_one_task_out"]["baseline_mae"]
    fixture_calibration("encoders-alpha", tmp_path, "weak", cv=cv)
    with pytest.raises(ValueError, match="is not 10% better than its baseline leave-one-task-out .* the per-rank median"):
        advice_from_probe(result, alpha_mode="calibrated", train_size=1000, calibration=tmp_path / "weak.json")


def test_reasons_name_the_layer_type_with_the_most_natural_gain(probed):
    _, result = probed
    by_type = {}
    for stats in result.layers.values():
        by_type[stats.layer_type] = by_type.get(stats.layer_type, 0.0) + stats.natural_gain
    top = max(by_type, key=by_type.get)
    (reason,) = [r for r in advice_from_probe(result).reasons if "natural gain" in r]
    assert reason.startswith(f"{top} layers carry {by_type[top] / sum(by_type.values()):.0%} of the natural gain")


def test_exports_read_back_as_the_same_config(probed, tmp_path):
    _, result = probed
    advice = advice_from_probe(result, budget="r=8", min_rank=1)
    advice.save(tmp_path)
    config = advice.config
    assert LoraConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    axolotl = yaml.safe_load((tmp_path / "axolotl.yaml").read_text())
    assert axolotl["adapter"] == "lora" and axolotl["lora_r"] == config.r and axolotl["lora_alpha"] == config.lora_alpha
    assert sorted(axolotl["lora_target_modules"]) == sorted(config.target_modules)
    assert axolotl["lora_rank_pattern"] == config.rank_pattern and axolotl["lora_alpha_pattern"] == config.alpha_pattern
    namespace = {}
    exec((tmp_path / "lora_config.py").read_text(), namespace)
    assert namespace["lora_config"].to_dict() == {**config.to_dict(), "base_model_name_or_path": None}
    saved = json.loads((tmp_path / "advice.json").read_text())
    assert {n: layer["rank"] for n, layer in saved["layers"].items()} == advice.ranks
    assert Advice.load(tmp_path).to_dict() == advice.to_dict()  # advice.json + probe.json give the advice back


def test_the_noise_reason_says_how_many_drawn_rows_had_no_loss_token_within_max_length():
    rows = token_rows(16, 16)
    for row in rows[:4]:  # the completion starts after token 12: nothing to learn within 8 tokens
        row["labels"] = [-100] * 12 + row["input_ids"][12:]
    result = probe(tiny_llama(), rows, num_samples=16, batch_size=4, max_length=8, method="exact", progress=False)
    assert (result.rows_drawn, result.num_rows) == (16, 12)
    (noisy,) = [r for r in advice_from_probe(result).reasons if "dominated by sampling noise" in r]
    assert "at 12 rows (4 of the 16 drawn had no loss token within 8 tokens)" in noisy


def test_fixed_alpha_is_the_default_and_peft_scales_each_layer_by_32_over_its_rank(probed):
    model, result = probed
    advice = advice_from_probe(result, budget="r=6", min_rank=1)  # half the layers at 4, half at 8
    assert advice.alpha_mode == "fixed" and not advice.config.alpha_pattern and advice.config.lora_alpha == 32
    assert len(set(advice.ranks.values())) > 1  # several ranks, one alpha
    peft_model = get_peft_model(copy.deepcopy(model), advice.config)
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            assert module.scaling["default"] == pytest.approx(32 / advice.layers[name.removeprefix("base_model.model.")].rank)
    # no calibration measured a rate for this model: none is stated, and the advice says so
    assert advice.learning_rate["value"] is None and "not measured" in advice.learning_rate["why"]
    assert advice_from_probe(result, alpha_mode="scale").learning_rate["value"] is None




def test_a_calibration_that_measured_a_rate_states_it_in_the_advice_and_its_exports(probed, tmp_path):
    fixture_calibration("encoders", tmp_path, "cal", learning_rate=LEARNING_RATE_EVIDENCE)
    _, result = probed
    advice = advice_from_probe(result, train_size=1000, min_rank=1, calibration=tmp_path / "cal.json")
    assert advice.learning_rate["value"] == 1e-3 and "0.5%, against 10.0% at 0.0003, 5.0% at 0.003" in advice.learning_rate["why"]
    assert advice.learning_rate["why"] in advice.reasons
    # the ranks' own best rates differ (r = 1: 3e-3): the rate is a compromise, and the advice says so
    assert "the lowest mean loss above each run's best over the ranks tried; alone, r=1 did best at 0.003, r=64 " \
        "did best at 0.001" in advice.learning_rate["why"]
    assert "Train at learning rate 0.001 (measured: the best on average over ranks; some did best at 0.003)." in \
        headline(advice.to_dict())[0]
    # cells trained with every block adapted, whose ranks each did best at the stated rate: said in both places
    every_block = [{"model": "smollm2", "task": "t", "rank": rank, "best": 1e-3, "rates": [3e-4, 1e-3, 3e-3]}
                   for rank in (1, 16)]
    fixture_calibration("encoders", tmp_path, "all", learning_rate={**LEARNING_RATE_EVIDENCE, "every_block": every_block})
    both = advice_from_probe(result, train_size=1000, min_rank=1, calibration=tmp_path / "all.json")
    assert both.learning_rate["why"].endswith("; with every block adapted, on t, r=1 did best at 0.001 of 0.0003, 0.001, "
                                              "0.003; with every block adapted, on t, r=16 did best at 0.001 of 0.0003, "
                                              "0.001, 0.003")
    assert (f"Train at learning rate 0.001 (measured: the best on average over ranks, and at r = 1, 16 with every "
            f"block adapted; with the top {both.learning_rate['top_blocks']} blocks some did best at 0.003).") in \
        headline(both.to_dict())[0]
    agreeing = {**LEARNING_RATE_EVIDENCE, "best_by_rank": {"1": 0.001, "64": 0.001}}
    fixture_calibration("encoders", tmp_path, "agree", learning_rate=agreeing)
    agreed = advice_from_probe(result, train_size=1000, min_rank=1, calibration=tmp_path / "agree.json")
    assert "the best single rate at every rank tried (1, 64)" in agreed.learning_rate["why"]
    assert "(measured; the best at every rank tried under alpha / r)" in headline(agreed.to_dict())[0]
    advice.save(tmp_path / "out")
    assert yaml.safe_load((tmp_path / "out" / "axolotl.yaml").read_text())["learning_rate"] == 1e-3
    namespace = {}
    exec((tmp_path / "out" / "lora_config.py").read_text(), namespace)
    assert namespace["learning_rate"] == 1e-3
    assert json.loads((tmp_path / "out" / "advice.json").read_text())["learning_rate"]["value"] == 1e-3
    # the rate belongs to alpha = 32 with alpha / r: another alpha mode states none
    assert advice_from_probe(result, train_size=1000, alpha_mode="rslora", calibration=tmp_path / "cal.json").learning_rate["value"] is None
    # a planned config whose alpha differs gets the rate scaled to the same steps; one whose steps grow with rank a warning
    (same,) = compare_with(advice, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))["scale_warnings"]
    assert "need a learning rate of about 0.002" in same
    assert compare_with(advice, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))["scale_warnings"] == []
    assert compare_with(advice, LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules="all-linear"))["scale_warnings"] == []
    habit = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", rank_pattern={"q_proj": 64}, alpha_pattern={"q_proj": 128})
    (grows,) = compare_with(advice, habit)["scale_warnings"]
    assert grows.startswith("your layers' steps (alpha under alpha / r) differ 4x (r=16: 32, r=64: 128)")


PLANNED_CONFIGS = [
    {"target_modules": ["q_proj", "down_proj"], "rank_pattern": {r"model\.layers\.1\.self_attn\.q_proj": 4}},
    {"target_modules": ["q_proj", "v_proj", "down_proj"], "layers_to_transform": [0], "rank_pattern": {"down_proj": 2}},
    {"target_modules": "all-linear", "exclude_modules": ["up_proj"]},
]


@pytest.mark.parametrize("options", PLANNED_CONFIGS)
def test_planned_ranks_follow_peft(probed, options):
    model, result = probed
    names = list(result.layers)
    config = LoraConfig(r=16, lora_alpha=32, **options)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    applied = {name.removeprefix("base_model.model."): module.r["default"] for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A") and "default" in module.lora_A}
    assert applied and len(applied) < len(names)
    assert {n: planned_rank(config, n) for n in names if planned_rank(config, n)} == applied
    comparison = compare_with(advice_from_probe(result, min_rank=1), config)
    assert comparison["planned_params"] == sum(r * sum(result.layers[n].shape) for n, r in applied.items())
    if options["target_modules"] == ["q_proj", "down_proj"]:
        assert comparison["by_type"]["v_proj"]["planned_rank"] == "0"


def test_report_is_written_and_redrawn(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "advice"
    assert main(["advise", "--model", str(tiny_checkpoint), "--samples", "8", "--budget", "r=4", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "of uniform r=16" in stdout
    for name in ("adapter_config.json", "advice.json", "probe.json", "axolotl.yaml", "lora_config.py",
                 "report.html", "spectra.png", "ranks.png", "parameters.png"):
        assert (out / name).is_file(), name
    (out / "ranks.png").unlink()
    assert main(["report", str(out)]) == 0 and (out / "ranks.png").is_file()
    saved = json.loads((out / "advice.json").read_text())
    assert f"budget {saved['budget']:,} parameters;" in (out / "report.html").read_text()
    # advice whose level a calibration set (no budget given) says so in the report's header
    (out / "advice.json").write_text(json.dumps({**saved, "budget": None, "level_rank": 16}))
    assert main(["report", str(out)]) == 0
    assert "budget none given; the calibration's pooled level spends uniform r = 16's parameters;" in (out / "report.html").read_text()
    assert main(["report", str(tmp_path)]) == 2
    assert "has no advice.json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_compare_flag_prints_the_comparison(capsys, tmp_path, tiny_checkpoint):
    planned = tmp_path / "planned"
    LoraConfig(r=64, lora_alpha=128, target_modules="all-linear").save_pretrained(planned)
    code = main(["advise", "--model", str(tiny_checkpoint), "--samples", "8", "--out", str(tmp_path / "a"),
                 "--compare", str(planned / "adapter_config.json"), "--json"])
    assert code == 0
    comparison = json.loads(capsys.readouterr().out)["comparison"]
    assert all(entry["planned_rank"] == "64" for entry in comparison["by_type"].values())
    assert code == 0 and main(["advise", "--model", str(tiny_checkpoint), "--compare", str(tmp_path)]) == 2


def test_calibrated_advice_follows_the_regression(probed, tmp_path):
    """With a calibration file, need = 2 ** (predicted log2 rank + log2 relative need), the
    interval is the leave-one-task-out error either side, and the loss curve reaches the report."""
    import math
    from dataclasses import asdict

    from advisor.calibrated import load_calibration
    from advisor.report import write_html_report

    metadata = json.loads(fixture_calibration("encoders", tmp_path, "cal").read_text())
    calibration = load_calibration(tmp_path / "cal.json")
    _, result = probed
    advice = advice_from_probe(result, train_size=1000, alpha_mode="rslora", min_rank=1, calibration=tmp_path / "cal.json")
    layers = {name: asdict(stats) for name, stats in result.layers.items()}
    log2_rank = calibration.predict_log2_rank(layers, 1000, False)
    relative = calibration.predict_log2_relative_need(layers, 1000, False)
    error = metadata["cv"]["cell_leave_one_task_out"]["model_mae"]
    for name, layer in advice.layers.items():
        center = log2_rank + relative[name]
        assert layer.need == pytest.approx(2**center, abs=1e-3)
        assert layer.rank == rounded_rank(2**center, 1.0, 1, 64)
        assert layer.rank_low == min(layer.rank, rounded_rank(2 ** (center - error), 1.0, 1, 64))
    decision = advice.decision
    assert (decision.calibration, decision.level, decision.shape) == ("cal", "rank model", "uniform")  # no per-layer model
    assert advice.calibration.startswith("calibrated: cal (fitted on minilm")  # the decision as a sentence
    assert advice.config.use_rslora
    assert advice.loss_curve == pytest.approx(calibration.predict_loss_curve(layers, 1000, False), abs=1e-4)
    assert advice.loss_curve_error == pytest.approx(math.exp(metadata["cv"]["curve_leave_one_task_out"]["model_mae"]), abs=1e-4)
    advice.save(tmp_path / "out")
    assert Advice.load(tmp_path / "out").to_dict() == advice.to_dict()
    write_html_report(tmp_path / "out")
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 0
    assert "Predicted eval loss against rank" in (tmp_path / "out" / "report.html").read_text()
    # a curve model within 10 % of its baseline's error is not shown; the ranks still follow the regression
    scores = metadata["cv"]["curve_leave_one_task_out"]
    scores["model_mae"] = 0.95 * scores["baseline_mae"]
    fixture_calibration("encoders", tmp_path, "flat-curve", cv=metadata["cv"])
    withheld = advice_from_probe(result, train_size=1000, alpha_mode="rslora", min_rank=1,
                                 calibration=tmp_path / "flat-curve.json")
    assert withheld.loss_curve is None and withheld.loss_curve_error is None
    withheld.save(tmp_path / "withheld")
    write_html_report(tmp_path / "withheld")
    assert "Not shown: the calibration's loss-curve model" in (tmp_path / "withheld" / "report.html").read_text()
    assert [a.rank for a in withheld.layers.values()] == [a.rank for a in advice.layers.values()]


def test_a_calibration_without_a_rank_model_gives_the_shape_at_its_pooled_level_or_the_rules(probed, tmp_path):
    """A fit whose rank model is no better than the constant but whose per-layer model is: the
    need is 2 ** (mean log2 signal effective rank + the layer's predicted log2 relative need less
    its mean), at a budget's level, else at its pooled level when that beat the rule, else at the
    rule's; a fit with neither model is not used at all."""
    import math
    import statistics
    from dataclasses import asdict

    from advisor.calibrated import load_calibration

    _, result = probed
    fixture_calibration("smollm2-shape", tmp_path, "shape")
    advice = advice_from_probe(result, train_size=1000, min_rank=1, budget="r=8", calibration=tmp_path / "shape.json")
    assert (advice.decision.calibration, advice.decision.level, advice.decision.shape) == ("shape", "budget", "calibration")
    assert advice.decision.rank_model_unused == ("is not 10% better than its baseline leave-one-task-out "
                                                 "(0.000 against 0.000)")
    # the decision as the one sentence the advice carries
    assert advice.calibration.startswith("calibrated shape, uncalibrated level: the per-layer need of shape")
    assert advice.calibration.endswith("its rank model " + advice.decision.rank_model_unused)
    # the sweeps' measured level is quoted: rank 4 best on all three cells, r=1 at 1.105 against 1.005;
    # with a budget (and ranks from 1) the level is the budget's, so the rule's record is not
    measured = ("the rank level is not calibrated: the sweeps behind shape found optimal uniform ranks 4 on 3 of 3 "
                "cells (3 tasks), and on each cell the worst uniform rank from 1 to 64 lost 10.0 % more eval loss "
                "than the best")
    assert advice.reasons[-1] == measured
    # with no budget the calibration's pooled level sets it: rank 4 is best on every cell, so leave one task
    # out the pooled level lost nothing, where the rule (signal 1, 7, 3: ranks 2, 8, 4) lost task a's 7 seed
    # noises (r = 2 interpolates to 1.055, 0.0071 a noise): the budget is uniform r = 4's, spent along the shape
    shapes = {n: s.shape for n, s in result.layers.items()}
    no_budget = advice_from_probe(result, train_size=1000, calibration=tmp_path / "shape.json")
    assert (no_budget.decision.level, no_budget.decision.level_rank, no_budget.decision.shape) == ("pooled level", 4, "calibration")
    assert no_budget.calibration.startswith("calibrated shape, pooled level: the per-layer need of shape (fitted on smollm2")
    level_text = (
        "the rank level is the calibration's pooled level: uniform r = 4's parameters, the smallest uniform rank whose "
        "mean regret (in seed noises) over the 3 cells (3 tasks) behind shape is within one seed noise of the best "
        "uniform rank's; chosen that way leave one task out, its eval loss was on average 0.00 % (0.00 seed noises; "
        "within one seed noise of the best on 3 of 3 cells) above each cell's best uniform rank's, the probe's "
        "rule's 1.66 % (2.36; 2 of 3)")
    assert no_budget.reasons[-1] == level_text
    assert parse_budget("r=2", shapes) < no_budget.trainable_params <= parse_budget("r=4", shapes)
    assert no_budget.budget is None and no_budget.level_rank == 4  # the user gave no budget; the level spent r = 4's
    assert [a.rank for a in advice_from_probe(result, train_size=1000, calibration=tmp_path / "shape.json",
                                              budget="r=4").layers.values()] == [a.rank for a in no_budget.layers.values()]
    # ranks capped at 2: the level is r = 2's parameters, and the label says the pooled level was moved
    capped = advice_from_probe(result, train_size=1000, calibration=tmp_path / "shape.json", max_rank=2)
    assert capped.level_rank == 2 and {a.rank for a in capped.layers.values()} == {2}
    assert (capped.decision.level, capped.decision.level_rank) == ("pooled level", 2)
    assert "at uniform r = 2's parameters, the pooled level r = 4 within the ranks asked for;" in capped.calibration
    assert capped.reasons[-1] == level_text
    # a calibration whose pooled level did not beat the rule by 10 %: the rule sets the level, and how it fared is quoted
    description = tmp_path / "shape.json"
    metadata = json.loads(description.read_text())
    metadata["levels"]["pooled"]["regret_noises_mean"] = 0.95 * metadata["levels"]["rule"]["regret_noises_mean"]
    description.write_text(json.dumps(metadata))
    ruled = advice_from_probe(result, train_size=1000, calibration=description)
    assert (ruled.decision.level, ruled.decision.shape) == ("probe's rule", "calibration")
    assert ruled.reasons[-1] == measured + (
        "; the probe's rule, which sets the level here (the calibration's shape spreads the ranks around it), gave "
        "uniform-equivalent ranks 2-8 on those cells, within one seed noise of the best uniform rank on 2 of 3 cells; "
        "uniform r = 16 on 3 and r = 64 on 3")
    layers = {name: asdict(stats) for name, stats in result.layers.items()}
    relative = load_calibration(tmp_path / "shape.json").predict_log2_relative_need(layers, 1000, False)
    level = statistics.mean(math.log2(max(s.signal_effective_rank, 1.0)) for s in result.layers.values())
    shift = statistics.mean(relative.values())
    for name, layer in advice.layers.items():
        assert layer.need == pytest.approx(2 ** (level + relative[name] - shift), abs=1e-3)
    mlp = [a for a in advice.layers.values() if a.layer_type in ("gate_proj", "up_proj", "down_proj")]
    attention = [a for a in advice.layers.values() if a.layer_type in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert min(a.need for a in mlp) > 1.5 * max(a.need for a in attention)  # the learned shape (4x in training)
    assert sum(a.rank for a in mlp) / len(mlp) > 1.5 * sum(a.rank for a in attention) / len(attention)
    assert advice.trainable_params <= parse_budget("r=8", {n: s.shape for n, s in result.layers.items()})
    fixture_calibration("smollm2-flat", tmp_path, "flat")  # neither model beats its baseline: the advice is uncalibrated
    unused = advice_from_probe(result, train_size=1000, min_rank=1, calibration=tmp_path / "flat.json")
    assert unused.decision.calibration is None and unused.decision.declined.startswith(
        "flat is not used: its rank model is not 10% better")
    assert "and its per-layer model is not 10% better" in unused.decision.declined


def test_auto_uses_the_shipped_calibration_and_says_when_it_extrapolates(probed, tmp_path, monkeypatch):
    from advisor import calibrated

    _, result = probed
    monkeypatch.setattr(calibrated, "MODELS_DIR", tmp_path)
    assert advice_from_probe(result, min_rank=1).decision.calibration is None  # models/ ships none
    fixture_calibration("encoders", tmp_path)  # fitted on sequence classifiers: "auto" declines it for the tiny causal LM
    other_kind = advice_from_probe(result, min_rank=1, train_size=1000)
    assert other_kind.decision.calibration is None
    assert "a causal-lm model, fitted on seq-cls models only" in other_kind.decision.declined
    fixture_calibration("smollm2", tmp_path, "shipped")
    advice = advice_from_probe(result, min_rank=1, train_size=1000)
    # the tiny random model's spectra lie outside the synthetic cells' ranges: "auto" sets the rank
    # model aside, and as its per-layer model earns no place either, the advice is uncalibrated
    assert advice.decision.calibration is None and advice.decision.declined.startswith(
        "shipped is not used: its rank model is not used for this probe: 18 of its 18 spectral features lie outside "
        "the ranges it was fitted on")
    fixture_calibration("encoders", tmp_path, "zz-encoders")  # last by name, but for another kind of model
    assert advice_from_probe(result, min_rank=1, train_size=1000).decision == advice.decision
    # an explicit path extrapolates: the tiny model is 32 wide, the synthetic calibration's layers
    # 64 (within the 2x that "auto" trusts, but outside the fitted range), which the label says
    explicit = advice_from_probe(result, min_rank=1, train_size=1000, calibration=tmp_path / "shipped.json")
    assert (explicit.decision.calibration, explicit.decision.level) == ("shipped", "rank model")
    assert "log2_width" in explicit.decision.outside and "extrapolating" in explicit.calibration
    # 100 training rows, 10x below the calibration's 1,000: "auto" declines, an explicit path does not
    declined = advice_from_probe(result, min_rank=1, train_size=100)
    assert declined.decision.calibration is None and "does not cover" in declined.decision.declined
    assert "training rows 100, fitted on 1,000" in declined.decision.declined and declined.loss_curve is None
    forced = advice_from_probe(result, min_rank=1, train_size=100, calibration=tmp_path / "shipped.json")
    assert forced.decision.calibration == "shipped" and "log2_train_size" in forced.decision.outside
    assert advice_from_probe(result, min_rank=1, calibration=None).decision.calibration is None
    assert advice_from_probe(result, min_rank=1, calibration="none").decision.calibration is None


def test_advise_lets_auto_decline_a_calibration_that_does_not_cover_the_probe(tmp_path, monkeypatch):
    """advise() (the CLI's path) must let "auto" decline a calibration that does not cover the probe,
    and take the one fitted on the model's kind when models/ ships one per kind."""
    from advisor import calibrated
    from advisor.recommend import advise

    fixture_calibration("smollm2", tmp_path, "shipped")
    fixture_calibration("encoders", tmp_path, "zz-encoders")  # last by name, fitted on sequence classifiers
    monkeypatch.setattr(calibrated, "MODELS_DIR", tmp_path)
    options = dict(num_samples=16, batch_size=4, progress=False, min_rank=1, return_advice=True)
    advice = advise(tiny_llama(), token_rows(16, 16), train_size=100, **options)
    assert advice.decision.calibration is None and "training rows 100, fitted on 1,000" in advice.decision.declined
    # at 1,000 rows "auto" takes the causal-LM calibration (and sets its rank model aside for the
    # tiny model's spectra, outside its fitted ranges)
    assert advise(tiny_llama(), token_rows(16, 16), train_size=1000, **options).decision.declined.startswith(
        "shipped is not used: its rank model is not used for this probe")
    # neither synthetic calibration has an alpha model: refused before the probe, naming the causal-LM one
    with pytest.raises(ValueError, match="shipped has no alpha model"):
        advise(tiny_llama(), None, alpha_mode="calibrated", **options)


def test_advise_probes_as_the_calibrations_cells_were_unless_told(tmp_path, monkeypatch):
    """advise() takes num_samples and max_length from the calibration's probe_protocol (the shipped
    one for the model's kind under "auto", or an explicit file's) and, with num_samples not given,
    grows from there until the spectra converge (here random tokens: the noise share stops falling
    at the first doubling), the calibration reading the first rows' statistics; given values win,
    and without a protocol (the uncalibrated rule) the probe's own defaults apply (64 rows, here all 40)."""
    from advisor import calibrated
    from advisor.recommend import advise

    assert calibration_description("smollm2")["probe_protocol"] is None  # the synthetic records do not say
    fixture_calibration("smollm2", tmp_path, "shipped", probe_protocol={"num_samples": 12, "max_length": 10})
    monkeypatch.setattr(calibrated, "MODELS_DIR", tmp_path)
    rows = token_rows(40, 16)
    options = dict(batch_size=4, progress=False, min_rank=1, return_advice=True, train_size=1000)
    auto = advise(tiny_llama(), rows, **options).probe
    assert (auto.growth["stopped"], [rows for rows, _ in auto.growth["checks"]]) == ("stopped falling", [12, 24])
    assert (auto.num_rows, auto.max_length, auto.tokens) == (24, 10, 240)
    assert {s.tokens for s in auto.calibration_layers.values()} == {120}  # the calibration reads the first 12 rows
    assert (auto.config["max_samples"], auto.config["max_seconds"]) == (256, 300.0)
    explicit = advise(tiny_llama(), rows, calibration=tmp_path / "shipped.json", **options).probe
    assert (explicit.growth["checks"][0][0], explicit.max_length) == (12, 10)
    told = advise(tiny_llama(), rows, num_samples=8, max_length=None, **options).probe
    assert (told.num_rows, told.max_length, told.growth) == (8, 10, None)
    uncalibrated = advise(tiny_llama(), rows, calibration=None, **options).probe
    assert (uncalibrated.num_rows, uncalibrated.max_length) == (40, 256)  # 64 rows asked, 40 there: one check
    # a whole ProbeConfig is used as given, the protocol left aside; a bad setting fails before the probe
    from advisor.probe_config import ProbeConfig

    config = ProbeConfig(num_samples=16, batch_size=4, max_length=12)
    given = advise(tiny_llama(), rows, probe_config=config, **{k: v for k, v in options.items() if k != "batch_size"})
    assert ProbeConfig.from_dict(given.probe.config) == config and given.probe.num_rows == 16
    with pytest.raises(ValueError, match="max_length must be a positive integer, got -1"):
        advise("no/such/checkpoint", rows, max_length=-1)
    # 100 training rows: "auto" will decline the calibration (fitted on 1,000), so the probe's defaults
    declined = advise(tiny_llama(), rows, **{**options, "train_size": 100})
    assert (declined.probe.num_rows, declined.probe.max_length) == (40, 256)
    assert "training rows 100, fitted on 1,000" in declined.decision.declined
    # a hand-edited protocol that is not one is ignored, not passed to the probe
    for broken in ({"num_samples": None, "max_length": 10}, [12, 10], "32x128"):
        fixture_calibration("smollm2", tmp_path, "shipped", probe_protocol=broken)
        expected = {"max_length": 10} if isinstance(broken, dict) else {}
        assert calibrated.probe_protocol(calibrated.load_calibration(tmp_path / "shipped.json")) == expected
    assert calibrated.probe_protocol(None) == {}


def test_auto_sets_a_rank_model_aside_for_a_probe_outside_its_spectral_ranges():
    """rank_model_extrapolates: a probe like the calibration's cells is covered; one whose noise
    share, subspace overlap and rank growth lie outside (half the 18 spectral features plus the
    rest) is not, and the message counts them."""
    from advisor.calibrated import load_calibration, rank_model_extrapolates

    calibration = load_calibration(CALIBRATIONS / "encoders.json")
    assert rank_model_extrapolates(calibration, probe_layers(3.0), 1000, False) is None
    shifted = probe_layers(3.0)
    for stats in shifted.values():
        stats.update(noise_fraction=0.6, subspace_overlap=0.2, rank_growth=2.0)
    assert rank_model_extrapolates(calibration, shifted, 1000, False) is None  # 9 of 18: not more than half
    for stats in shifted.values():
        stats["stable_rank"] = 9.0
    why = rank_model_extrapolates(calibration, shifted, 1000, False)
    assert why.startswith("is not used for this probe: 12 of its 18 spectral features lie outside")


def test_loss_curve_text_says_when_the_whole_curve_lies_within_its_error():
    """A curve spanning 1.00-1.11 with an error factor of 1.14 cannot separate the ranks; one
    spanning 1.00-1.30 can, and one without an error factor makes no claim either way."""
    flat = {"loss_curve": {"1": 1.0, "16": 1.06, "64": 1.11}, "loss_curve_error": 1.142}
    steep = {"loss_curve": {"1": 1.0, "16": 1.1, "64": 1.3}, "loss_curve_error": 1.142}
    assert "does not tell these ranks apart" in loss_curve_text(flat)
    assert "x/÷ 1.142" in loss_curve_text(steep) and "does not tell" not in loss_curve_text(steep)
    assert "does not tell" not in loss_curve_text({**flat, "loss_curve_error": None})


def test_the_advice_states_the_ranks_the_users_rules_give_its_dataset():
    from advisor.probe_pass import probe

    result = probe(tiny_llama(), token_rows(40, 12), num_samples=8, batch_size=4, method="exact", progress=False)
    advice = advice_from_probe(result, calibration=None, train_size=4000)
    per_rank = sum(out + inp for out, inp in (stats.shape for stats in result.layers.values()))
    tokens = 4000 * 11  # 11 loss tokens a row, scaled from the 40 counted rows to the 4,000 trained on
    tinker = advice.users_rules["tinker"]
    assert advice.users_rules == {"rows": 4000, "loss_tokens": tokens, "max_length": result.max_length,
                                  "params_per_rank": per_rank, "blocks": 2, "tinker": tinker, "axolotl": 16}
    assert tinker * per_rank >= tokens > tinker // 2 * per_rank
    assert any(reason.startswith(f"your data: 4,000 rows, 44,000 loss tokens within {result.max_length} tokens a row")
               and f"r = {tinker}" in reason
               for reason in advice.reasons)
    assert json.loads(advice.to_json())["users_rules"] == advice.users_rules


def test_short_names_select_exactly_the_advised_layers_by_peft_matching():
    """Type names and pattern keys are shortened only as far as PEFT's own matching
    (planned_rank) still selects each advised rank and nothing else among the model's modules."""
    from advisor.allocation import build_lora_config

    blocks = [f"model.layers.{i}" for i in range(12)]
    bert = [f"bert.encoder.layer.{i}.{t}" for i in range(2) for t in ("attention.output.dense", "output.dense")]
    stacked = [f"{side}.block.{i}.layer.0.SelfAttention.q" for side in ("encoder", "decoder") for i in range(2)]
    cases = [
        # every q_proj / down_proj adapted, two ranks: short type names, keys like "3.mlp.down_proj"
        ({f"{b}.{t}": 4 + 4 * (i == 3) for i, b in enumerate(blocks) for t in ("self_attn.q_proj", "mlp.down_proj")},
         ["lm_head"]),
        # the top blocks only: "q_proj" would also match the lower blocks, so full names stay
        ({f"{b}.self_attn.q_proj": 8 for b in blocks[8:]}, [f"{b}.self_attn.q_proj" for b in blocks[:8]]),
        # BERT: "output.dense" also ends "attention.output.dense"
        ({name: 2 + 2 * name.endswith("attention.output.dense") for name in bert}, ["bert.pooler.dense"]),
        # an encoder and a decoder with the same block paths
        ({name: 2 + 6 * name.startswith("decoder.block.1") for name in stacked}, []),
        # a convolution outside the blocks ends like the blocks' linear layers (PEFT matches every module)
        ({f"blocks.{i}.attn.proj": 4 for i in range(2)}, ["patch_embed.proj"]),
    ]
    for ranks, others in cases:
        config = build_lora_config(ranks, {n: 2.0 * r for n, r in ranks.items()}, task_type="CAUSAL_LM",
                                   known_modules=[*ranks, *others])
        for name in [*ranks, *others]:
            assert planned_rank(config, name) == ranks.get(name, 0), (name, config.target_modules, config.rank_pattern)
    first = build_lora_config(cases[0][0], {n: 2.0 * r for n, r in cases[0][0].items()}, task_type=None,
                              known_modules=[*cases[0][0], "lm_head"])
    assert first.target_modules == {"down_proj", "q_proj"}
    assert set(first.rank_pattern) == {r"3\.self_attn\.q_proj", r"3\.mlp\.down_proj"}


def test_a_users_rule_that_did_better_on_the_calibrations_cells_sets_the_level(probed, tmp_path):
    """Never a level worse than a rule the user could apply by hand: when a users' rule had a
    mean regret 10 % lower, with no more parameters, than the level the advice would set (here
    the probe's rule), the advice spends that rule's rank for this dataset along the calibrated shape."""
    from advisor.report import how_sure

    _, result = probed
    description = fixture_calibration("smollm2-shape", tmp_path, "shape")
    metadata = json.loads(description.read_text())
    levels = metadata["levels"]
    levels["pooled"]["regret_noises_mean"] = 0.95 * levels["rule"]["regret_noises_mean"]  # the rule sets the level
    rule = levels["rule"]
    levels["Tinker tokens rule"] = {**rule, "regret_noises_mean": 0.5 * rule["regret_noises_mean"],
                                    "params_vs_r16": rule["params_vs_r16"]}
    levels["axolotl thresholds"] = {**rule, "regret_noises_mean": 0.1 * rule["regret_noises_mean"],
                                    "params_vs_r16": 2 * rule["params_vs_r16"]}  # better, but bigger: not a level
    description.write_text(json.dumps(metadata))
    # a training set whose loss tokens fill uniform r = 6: Tinker's rule gives r = 8, inside the rank bounds
    per_rank = sum(sum(stats.shape) for stats in result.layers.values())
    per_row = result.dataset_tokens["loss_tokens"] / result.dataset_tokens["rows"]
    rows = int(6 * per_rank / per_row)
    advice = advice_from_probe(result, train_size=rows, calibration=description)
    tinker = advice.users_rules["tinker"]
    assert tinker == 8
    shapes = {n: s.shape for n, s in result.layers.items()}
    assert advice.level_rank == min(max(tinker, 2), 64)
    assert advice.trainable_params <= parse_budget(f"r={advice.level_rank}", shapes)
    decision = advice.decision
    assert (decision.level, decision.level_rule, decision.shape, decision.calibration) == (
        "users' rule", "Tinker tokens rule", "calibration", "shape")
    assert advice.calibration.startswith("calibrated shape, level of Tinker tokens rule: the per-layer need of shape")
    assert json.loads(advice.to_json())["decision"]["level_rank"] == advice.level_rank
    assert any(r.startswith(f"the rank level is Tinker tokens rule's, uniform r = {advice.level_rank} for your data")
               and r.endswith("worse than a rule you could apply by hand") for r in advice.reasons)
    # a rank past the bounds is spent within them, the text says so, and every layer gets it
    huge = advice_from_probe(result, train_size=1000 * rows, calibration=description)
    assert huge.users_rules["tinker"] > 64 and huge.level_rank == 64 and {a.rank for a in huge.layers.values()} == {64}
    assert huge.decision.shape == "uniform" and f"(r={huge.users_rules['tinker']} for your data, spent as r=64" in \
        how_sure(huge.to_dict())
    # with a budget the user's budget sets the level, whatever the rules did
    budgeted = advice_from_probe(result, train_size=rows, calibration=description, budget="r=8")
    assert budgeted.level_rank is None and budgeted.decision.level == "budget"
    # a rule less than 10 % better than the level (a tie within noise, the bar every fitted choice must clear),
    # or worse, leaves it alone
    levels["Tinker tokens rule"]["regret_noises_mean"] = 0.95 * rule["regret_noises_mean"]
    description.write_text(json.dumps(metadata))
    assert advice_from_probe(result, train_size=rows, calibration=description).decision.level == "probe's rule"
    levels["Tinker tokens rule"]["regret_noises_mean"] = 2 * rule["regret_noises_mean"]
    description.write_text(json.dumps(metadata))
    ruled = advice_from_probe(result, train_size=rows, calibration=description)
    assert (ruled.decision.level, ruled.decision.shape) == ("probe's rule", "calibration")
    assert how_sure(advice.to_dict()).startswith("rough, since the size is Tinker tokens rule's (r=")
    assert how_sure(ruled.to_dict()).startswith("rough, since the size comes from the probe's uncalibrated rule")


def _with_capacity(description: Path, ratio: float, fitted: float, best: float, fitted_params: float = 0.5,
                   tasks=("a", "b", "c")) -> None:
    """Give a fixture calibration capacity levels: the fitted tokens rule at ``ratio`` parameters per
    token with mean regret ``fitted`` (seed noises) and ``fitted_params`` x r = 16's parameters; uniform
    r = 16 and r = 64 the lowest users' baselines at ``best``, so r = 16 (fewer parameters) is the best."""
    metadata = json.loads(description.read_text())
    summary = {"cells": len(tasks), "regret_mean": 0.01, "within_noise": 1, "params_vs_r16": 1.0}
    metadata["capacity"] = {
        "tasks": list(tasks), "params_per_token": ratio, "cell_labels": [],
        "levels": {"tokens rule, fitted": {**summary, "regret_noises_mean": fitted, "params_vs_r16": fitted_params},
                   "Tinker tokens rule": {**summary, "regret_noises_mean": 3 * best, "params_vs_r16": 0.1},
                   "axolotl thresholds": {**summary, "regret_noises_mean": 2 * best},
                   "r = 8": {**summary, "regret_noises_mean": 1.5 * best, "params_vs_r16": 0.5},
                   "r = 16": {**summary, "regret_noises_mean": best},
                   "r = 64": {**summary, "regret_noises_mean": best, "params_vs_r16": 4.0},
                   "rule": {**summary, "regret_noises_mean": 0.1 * best}},  # not a users' rule: never a capacity level
    }
    description.write_text(json.dumps(metadata))


def test_capacity_cells_set_the_level_by_the_tokens_rule_that_beat_the_users_rules(probed, tmp_path):
    """A calibration with capacity cells: its tokens rule (k parameters per loss token of the whole
    dataset) sets the level when, held out, it beat the best users' baseline by 10 %; the rank is
    the smallest power of two whose parameters over the probed layers hold k x the loss tokens."""
    from advisor.report import how_sure

    _, result = probed
    description = fixture_calibration("smollm2-shape", tmp_path, "shape")
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)
    per_rank = sum(sum(stats.shape) for stats in result.layers.values())
    per_row = result.dataset_tokens["loss_tokens"] / result.dataset_tokens["rows"]
    rows = int(3 * per_rank / per_row)  # about 3 ranks' parameters in loss tokens: 8 per token needs r = 32
    advice = advice_from_probe(result, train_size=rows, calibration=description)
    tokens = advice.users_rules["loss_tokens"]
    expected = next(r for r in (1, 2, 4, 8, 16, 32, 64, 128) if r * per_rank >= 8 * tokens)
    assert expected == 32 and advice.level_rank == expected
    assert advice.trainable_params <= parse_budget(f"r={expected}", {n: s.shape for n, s in result.layers.items()})
    decision = advice.decision
    assert (decision.level, decision.level_rule, decision.level_rank) == ("tokens rule", "tokens rule, fitted", 32)
    assert any(r.startswith("the rank level is the calibrated tokens rule, 8 adapter parameters per loss token of your "
                            "data: uniform r = 32") and r.endswith("the cheapest rule you could apply by hand within one "
                                                                    "seed noise of the best of them, r = 16, cost "
                                                                    "1.00 % (4.00; 1 of 3) with 1.00x") for r in advice.reasons)
    assert how_sure(advice.to_dict()).startswith(
        "measured on other data: the size is the calibrated tokens rule's (r=32 for your data's loss tokens), which beat "
        "r = 16, the cheapest rule you could apply by hand within one seed noise of the best of them (2.00 seed noises "
        "above each task's best rank at 0.50x r=16's "
        "parameters, against 4.00 at 1.00x) on the calibration's capacity sweeps")
    assert decision.level_evidence == {"level": {"regret_noises": 2.0, "regret": 0.01, "params_vs_r16": 0.5},
                                       "beat": "r = 16",
                                       "baseline": {"regret_noises": 4.0, "regret": 0.01, "params_vs_r16": 1.0},
                                       "blocks": None}
    assert Advice.from_dict(json.loads(advice.to_json()), advice.probe).decision == decision  # round trip
    # a 4-bit probe of the same data reads the same tokens: the same level whatever its gradients
    quantized = replace(result, quantization={"load_in_4bit": True})
    assert advice_from_probe(quantized, train_size=rows, calibration=description).level_rank == 32
    # a loss within one seed noise of the best baseline's with half its parameters also beats it
    _with_capacity(description, ratio=8.0, fitted=4.8, best=4.0)
    traded = advice_from_probe(result, train_size=rows, calibration=description)
    assert traded.decision.level == "tokens rule"
    assert "which traded a little more loss for fewer parameters than r = 16, the cheapest rule" in how_sure(traded.to_dict())
    # neither 10 % less loss nor 10 % fewer parameters: the best baseline (the cheaper of the two within one
    # seed noise of the lowest) sets the level, and says so
    _with_capacity(description, ratio=8.0, fitted=3.7, best=4.0, fitted_params=1.0)
    tied = advice_from_probe(result, train_size=rows, calibration=description)
    assert (tied.decision.level, tied.decision.level_rule, tied.level_rank) == ("best users' rule", "r = 16", 16)
    assert any(r.startswith("the rank level is r = 16's, uniform r = 16 for your data") and "neither 10% less loss" in r
               for r in tied.reasons)
    assert how_sure(tied.to_dict()).startswith("rough, since the size is r = 16's (r=16 for your data), the best of")
    _with_capacity(description, ratio=8.0, fitted=5.5, best=4.0, fitted_params=0.1)  # fewer parameters, more loss
    assert advice_from_probe(result, train_size=rows, calibration=description).decision.level == "best users' rule"
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0, fitted_params=1.09)  # less loss, parameters tied
    assert advice_from_probe(result, train_size=rows, calibration=description).decision.level == "tokens rule"
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0, fitted_params=1.2)  # less loss, more parameters
    assert advice_from_probe(result, train_size=rows, calibration=description).decision.level == "best users' rule"
    # fewer than three tasks behind the capacity cells, or a budget: not the capacity level
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0, tasks=("a", "b"))
    two_tasks = advice_from_probe(result, train_size=rows, calibration=description).decision
    assert two_tasks.level_evidence is None and two_tasks.level not in ("tokens rule", "best users' rule")
    # data whose tokens were not counted (a DataLoader): no tokens rule, the level the calibration gives otherwise
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)
    uncounted = advice_from_probe(replace(result, dataset_tokens=None), train_size=rows, calibration=description)
    assert uncounted.users_rules is None and uncounted.decision.level_evidence is None
    assert uncounted.decision.level not in ("tokens rule", "best users' rule")
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)
    assert advice_from_probe(result, train_size=rows, calibration=description, budget="r=4").decision.level == "budget"


def test_eva_at_r16s_budget_is_quoted_beside_the_capacity_level_and_never_chosen(probed, tmp_path):
    """EVA fixes the budget (r = 16's): with the lowest regret in seed noises it still does not set
    the level, and the reason says how it compared on both measures and on parameters."""
    from advisor.calibrated import EVA_LEVEL

    _, result = probed
    description = fixture_calibration("smollm2-shape", tmp_path, "shape")
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)
    metadata = json.loads(description.read_text())
    metadata["capacity"]["levels"][EVA_LEVEL] = {"cells": 3, "regret_mean": 0.02, "within_noise": 1,
                                                 "regret_noises_mean": 0.1, "params_vs_r16": 0.97}
    description.write_text(json.dumps(metadata))
    per_rank = sum(sum(stats.shape) for stats in result.layers.values())
    rows = int(3 * per_rank / (result.dataset_tokens["loss_tokens"] / result.dataset_tokens["rows"]))
    advice = advice_from_probe(result, train_size=rows, calibration=description)
    assert (advice.decision.level, advice.level_rank) == ("tokens rule", 32)
    (reason,) = [r for r in advice.reasons if r.startswith("the rank level is the calibrated tokens rule")]
    assert reason.endswith("; PEFT's EVA initialisation at uniform r = 16's budget (init_lora_weights=\"eva\"), trained "
                           "on 3 of these cells, cost 2.00 % (0.10; 1 of 3) with 0.97x: less loss than this level in "
                           "seed noises and more in % of the loss, with more parameters")


def test_eva_at_the_levels_own_budget_is_quoted_after_the_tokens_rule_and_only_there(probed, tmp_path):
    """The capacity's ``eva_at_level`` (EVA against uniform at the tokens rule's rank) ends the tokens
    rule's reason with its figures; without it, or when a users' rule sets the level, nothing is said."""
    _, result = probed
    description = fixture_calibration("smollm2-shape", tmp_path, "shape")
    per_rank = sum(sum(stats.shape) for stats in result.layers.values())
    rows = int(3 * per_rank / (result.dataset_tokens["loss_tokens"] / result.dataset_tokens["rows"]))

    def level_reason(fitted: float) -> str:
        _with_capacity(description, ratio=8.0, fitted=fitted, best=4.0)
        metadata = json.loads(description.read_text())
        metadata["capacity"]["eva_at_level"] = {"cells": 6, "eva_minus_uniform_noises": -1.7, "eva_minus_uniform_percent": 0.04,
                                                "params_ratio": 0.95, "better": 2, "worse": 1, "learning_rate": 0.001}
        description.write_text(json.dumps(metadata))
        advice = advice_from_probe(result, train_size=rows, calibration=description)
        (reason,) = [r for r in advice.reasons if r.startswith("the rank level is")]
        return reason

    assert level_reason(2.0).endswith(
        "; at this level's own rank, EVA's initialisation (its budget redistributed: 0.95x its parameters, rate 0.001) against "
        "uniform, trained on 6 cells: -1.7 seed noises (+0.0 % of the loss) on average, more than one seed noise "
        "lower on 2 and higher on 1")
    assert "EVA" not in level_reason(5.5)  # the users' best rule sets the level: the figures are not about it
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)  # not measured: not said
    advice = advice_from_probe(result, train_size=rows, calibration=description)
    assert not any("at this level's own rank" in reason for reason in advice.reasons)


def test_a_tokens_rule_that_carried_over_as_rank_counts_its_parameters_over_the_cells_blocks(probed, tmp_path):
    """When the calibration's transfer check found the need carried over to every block as rank, the
    ratio counts parameters over as many of the probed blocks as the cells adapted: on a probe of B
    blocks with cells of one block, the same tokens need B times the rank (within the bounds)."""
    from advisor.layers import block_depth
    from advisor.report import how_sure

    _, result = probed
    blocks = len({block_depth(name) for name in result.layers})
    assert blocks >= 2
    description = fixture_calibration("smollm2-shape", tmp_path, "shape")
    _with_capacity(description, ratio=8.0, fitted=2.0, best=4.0)
    per_rank = sum(sum(stats.shape) for stats in result.layers.values())
    rows = int(0.3 * per_rank / (result.dataset_tokens["loss_tokens"] / result.dataset_tokens["rows"]))
    as_parameters = advice_from_probe(result, train_size=rows, calibration=description)
    assert as_parameters.users_rules["blocks"] == blocks
    metadata = json.loads(description.read_text())
    metadata["capacity"]["transfer"] = {"reading": "as rank", "blocks": 1, "cells": []}
    description.write_text(json.dumps(metadata))
    as_rank = advice_from_probe(result, train_size=rows, calibration=description)
    tokens = as_rank.users_rules["loss_tokens"]
    expected = next(r for r in (1, 2, 4, 8, 16, 32, 64, 128) if r * round(per_rank / blocks) >= 8 * tokens)
    assert as_parameters.level_rank < expected == as_rank.level_rank <= 64
    (reason,) = [r for r in as_rank.reasons if r.startswith("the rank level is the calibrated tokens rule")]
    assert "per loss token of your data, counted over 1 of your model's blocks as the cells adapted them" in reason
    assert as_rank.decision.level_evidence["blocks"] == 1
    assert "(r=" + str(expected) + " for your data's loss tokens, its parameters counted per 1 blocks as the sweeps " \
        "adapted them)" in how_sure(as_rank.to_dict())
    metadata["capacity"]["transfer"]["reading"] = "as parameters"  # the check found parameters: every layer counts
    description.write_text(json.dumps(metadata))
    assert advice_from_probe(result, train_size=rows, calibration=description).level_rank == as_parameters.level_rank
