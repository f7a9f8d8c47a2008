"""advisor.rules.decide: the Decision is made once, from the probe, the calibration and the options."""

import pytest
from conftest import fixture_calibration, tiny_llama, token_rows

from advisor.calibrated import resolve_calibration
from advisor.probe_pass import probe
from advisor.recommend import advice_from_probe
from advisor.rules import Decision, decide


@pytest.fixture(scope="module")
def result():
    return probe(tiny_llama(), token_rows(16, 16), num_samples=16, batch_size=4, method="exact", progress=False)


def test_uncalibrated_the_need_is_each_layers_signal_effective_rank_and_the_probe_sets_level_and_shape(result):
    ruling = decide(result, None, budget_params=None, train_size=1000)
    assert ruling.decision == Decision(level="probe's rule", shape="probe")
    assert ruling.calibration is None and ruling.layer_dicts == {}
    assert ruling.need == {name: max(stats.signal_effective_rank, 1.0) for name, stats in result.layers.items()}
    assert all(ruling.need_high[name] >= ruling.need[name] for name in ruling.need)
    # a budget sets the level, whatever else
    assert decide(result, None, budget_params=10_000, train_size=1000).decision.level == "budget"


def test_the_advice_carries_the_rules_decision(result, tmp_path):
    calibration = resolve_calibration(fixture_calibration("smollm2-shape", tmp_path, "shape"), task=result.task)
    ruling = decide(result, calibration, budget_params=None, train_size=1000)
    advice = advice_from_probe(result, train_size=1000, calibration=calibration)
    shape = "uniform" if len(set(advice.ranks.values())) == 1 else ruling.decision.shape
    assert advice.decision.level == ruling.decision.level and advice.decision.shape == shape
    assert advice.decision.level_rank == ruling.decision.level_rank and advice.calibration == ruling.label
    assert ruling.calibration is calibration and ruling.decision.calibration == "shape"
