"""Integration tests on the real embedded SmolLM2-135M-Instruct (fp32, CPU)."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_probe_pass import assert_same_state, autograd_weight_gradients, model_state

from advisor.baselines import tokens_rank
from advisor.calibrated import resolve_calibration, training_rows_gap
from advisor.cli import main
from advisor.data import load_rows
from advisor.embedded_data import stdlib_code_rows
from advisor.probe_pass import probe

pytestmark = pytest.mark.slow


def test_probe_equals_autograd_on_the_real_model(smollm2):
    model, tokenizer = smollm2
    # the code of four embedded rows cut to exactly 32 tokens: equal lengths, no padding
    codes = (tokenizer(row["output"])["input_ids"] for row in stdlib_code_rows()[:20])
    rows = [{"input_ids": ids[:32]} for ids in codes if len(ids) >= 32][:4]
    assert len(rows) == 4
    targets = ["model.layers.0.self_attn.q_proj", "model.layers.15.mlp.gate_proj", "model.layers.29.mlp.down_proj"]
    result = probe(model, rows, target_modules=targets, num_samples=4, batch_size=2, method="exact", progress=False)
    expected = autograd_weight_gradients(model, rows, "causal-lm")
    for name in targets:
        reference = torch.linalg.svdvals(expected[name].double())
        measured = torch.tensor(result.layers[name].singular_values, dtype=torch.float64)
        torch.testing.assert_close(measured / measured[0], reference / reference[0], atol=1e-4, rtol=0)


def test_probe_on_the_embedded_data_leaves_the_model_as_it_was(smollm2):
    model, tokenizer = smollm2
    before = model_state(model)
    result = probe(model, None, tokenizer=tokenizer, num_samples=8, batch_size=4, max_length=96, progress=False)
    assert_same_state(before, model_state(model))
    assert len(result.layers) == 30 * 7
    assert list(result.by_type()) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert sorted(result.by_depth()) == list(range(30))
    for stats in result.layers.values():
        assert len(stats.singular_values) == min(stats.shape)
        assert 1 <= stats.effective_rank <= min(stats.shape)
        assert stats.energy_rank_90 <= stats.energy_rank_95 <= stats.energy_rank_99
        assert 0 <= stats.noise_fraction <= 1 and 0 <= stats.subspace_overlap <= 1 + 1e-9
        # the gradient's rank cannot exceed the tokens that went through the layer
        assert sum(v > 1e-6 * stats.singular_values[0] for v in stats.singular_values) <= result.tokens


def test_advised_config_is_applied_by_peft_with_the_advised_ranks(smollm2, tmp_path, capsys):
    model, _ = smollm2
    out = tmp_path / "advice"
    assert main(["advise", "--samples", "8", "--max-length", "64", "--out", str(out), "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    # the rows you will train on default to the whole embedded dataset, not to the 8 the probe drew
    assert advice["train_size"] == len(load_rows(None)) > 1000
    # ... and "auto" judges the shipped calibration on those rows: it declines it for them exactly
    # when they lie more than 2x outside the rows it was fitted on
    gap = training_rows_gap(resolve_calibration("auto", task="causal-lm"), advice["train_size"])
    decision = advice["decision"]
    if gap is None:
        assert "training rows" not in (decision["declined"] or "")
    else:
        assert gap in decision["declined"] and decision["calibration"] is None
    # today's advice on the embedded default, pinned (tests/test_advice_pin.py says when to update it): the
    # calibration's tokens rule on the dataset's loss tokens (cut at 64 tokens a row), within the rank bounds
    rules, metadata = advice["users_rules"], resolve_calibration("auto", task="causal-lm").metadata
    transfer = metadata["capacity"].get("transfer") or {}  # counted over the cells' blocks when the need carried as rank
    per_rank = (round(rules["params_per_rank"] * transfer["blocks"] / 30) if transfer.get("reading") == "as rank"
                else rules["params_per_rank"])
    assert rules["blocks"] == 30
    expected = tokens_rank(rules["loss_tokens"], per_rank, metadata["capacity"]["params_per_token"])
    assert advice["level_rank"] == max(2, expected)
    assert (decision["level"], decision["calibration"], advice["level_rank"], advice["trainable_params"]) == (
        "tokens rule", "lora-rank-causal-lm", 2, 610_560)
    ranks = {name: layer["rank"] for name, layer in advice["layers"].items()}
    config = LoraConfig.from_pretrained(out)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    adapted = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    assert set(adapted) == set(ranks)
    for name, module in adapted.items():
        assert module.r["default"] == ranks[name]
        assert module.scaling["default"] == pytest.approx(32 / ranks[name])  # alpha = 32 on every layer, alpha / r
    # the rate the shipped calibration measured for SmolLM2 under that alpha, unless it was declined
    measured = resolve_calibration("auto", task="causal-lm").metadata["learning_rate"]["learning_rate"]
    assert advice["learning_rate"]["value"] == (measured if gap is None else None)
