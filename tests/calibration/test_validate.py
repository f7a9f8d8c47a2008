"""The validation's hand-made allocations and its exclusion from the regression's training data."""

from collections import Counter

import pytest

from calibration.labels import uniform_cells
from calibration.synthetic import cell_records
from calibration.validate import adapter_params, attention_heavy_weights, linear_decay_weights, scaled_ranks

SHAPES = {f"layers.{d}.{kind}": shape for d in range(4)
          for kind, shape in (("attn.q", (64, 64)), ("attn.v", (64, 64)), ("mlp.up", (256, 64)), ("mlp.down", (64, 256)))}


def test_linear_decay_spends_the_budget_in_proportion_to_depth():
    depths = {name: int(name.split(".")[1]) for name in SHAPES}
    budget = 8 * sum(sum(s) for s in SHAPES.values())  # what uniform r=8 costs
    ranks = scaled_ranks(linear_decay_weights(depths), SHAPES, budget)
    assert adapter_params(ranks, SHAPES) <= budget
    by_depth = {d: {r for n, r in ranks.items() if depths[n] == d} for d in range(4)}
    assert all(len(v) == 1 for v in by_depth.values())  # one rank per block
    first, last = by_depth[0].pop(), by_depth[3].pop()
    assert first == pytest.approx(4 * last, rel=0.25)
    # the scale is the largest that fits: one more step of it would not
    more = {n: r + (1 if depths[n] == 0 else 0) for n, r in ranks.items()}
    assert adapter_params(more, SHAPES) > budget or first >= 4 * last


def test_attention_heavy_gives_attention_twice_the_mlp_rank():
    budget = 6 * sum(sum(s) for s in SHAPES.values())
    ranks = scaled_ranks(attention_heavy_weights(list(SHAPES)), SHAPES, budget)
    attention = {r for n, r in ranks.items() if ".attn." in n}
    mlp = {r for n, r in ranks.items() if ".mlp." in n}
    assert len(attention) == len(mlp) == 1
    assert abs(attention.pop() - 2 * mlp.pop()) <= 1  # twice, up to rounding to integer ranks
    assert adapter_params(ranks, SHAPES) <= budget


def test_a_budget_below_rank_one_everywhere_gives_rank_one():
    ranks = scaled_ranks({n: 1.0 for n in SHAPES}, SHAPES, 10)
    assert set(ranks.values()) == {1}


def test_eva_runs_are_not_uniform_rank_cells():
    records = cell_records("t", {1: [1.0, 1.0], 2: [0.9, 0.9], 4: [0.8, 0.8]})
    eva = cell_records("t", {8: [0.1, 0.1]})
    for record in eva:
        record["config"]["eva_rho"] = 2.0
    (cell,) = uniform_cells(records + eva)
    assert cell.ranks == [1, 2, 4]


def test_table_and_goal_check_from_records(tmp_path, monkeypatch):
    """summary() pairs the validation records with the uniform grid's by run_id; goal_check
    compares the advice with the best uniform rank and with EVA."""
    import dataclasses
    import json

    from calibration import validate
    from calibration.regression import MODEL_DESCRIPTION
    from calibration.sweep import ENCODER_ALPHA, _encoder, _rslora, _smollm2
    from calibration.validate import goal_check, summary

    layers = {f"l{i}": {"shape": [10, 10]} for i in range(3)}

    def record(config, loss, ranks, arm=None, **info):
        out = {"run_id": config.run_id, "config": config.to_dict(), "eval_loss": loss, "eval_accuracy": 0.5,
               "total_params": 1000, "trainable_params": 100, "probe": {"layers": layers},
               "adapter_layers": [{"name": n, "r": r} for n, r in zip(layers, ranks)]}
        if arm:
            out["validation"] = {"task": config.task, "arm": arm, "fit": MODEL_DESCRIPTION, **info}
        return out

    uniform = [record(_encoder("spam", 1000, seed, **_rslora(r, ENCODER_ALPHA)), loss + 0.01 * seed, [r] * 3)
               for r, loss in ((4, 1.00), (8, 0.90), (16, 0.95)) for seed in (0, 1)]
    pattern = {"advised": ([2, 2, 1], 0.905), "eva": ([3, 2, 0], 0.95)}
    validation = [record(_encoder("spam", 1000, seed, rank_pattern={"x": 1}, alpha=8.0, use_rslora=True), loss, ranks, arm)
                  for arm, (ranks, loss) in pattern.items() for seed in (0, 1)]
    # SmolLM2's protocol: every arm at uniform r=16's budget; its uniform arm not trained yet
    validation.append(record(_smollm2("brown-lm", 1000, 0, rank_pattern={"x": 1}, alpha=8.0, use_rslora=True), 2.0,
                             [16, 16, 16], "advised", model="smollm2", budget_rank=16))
    for path, records in ((tmp_path / "u.jsonl", uniform), (tmp_path / "v.jsonl", validation)):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(validate, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(validate, "VALIDATION_FILE", "v.jsonl")
    monkeypatch.setattr(validate, "PROTOCOLS", {"minilm": dataclasses.replace(validate.PROTOCOLS["minilm"], grid="u"),
                                                "smollm2": validate.PROTOCOLS["smollm2"]})
    table = summary()
    assert list(table) == ["spam (MiniLM, 1000 rows)", "brown-lm (SmolLM2, 1000 rows, budget of uniform r=16)"]
    smollm2 = table["brown-lm (SmolLM2, 1000 rows, budget of uniform r=16)"]
    assert smollm2.budget_rank == 16 and list(smollm2.arms) == ["advised"]
    assert goal_check(smollm2.arms, smollm2.budget_rank) == ["uniform-16, the arm of the same budget, is not run yet"]
    arms = table["spam (MiniLM, 1000 rows)"].arms
    assert table["spam (MiniLM, 1000 rows)"].budget_rank is None
    assert list(arms) == ["advised", "uniform-4", "uniform-8", "uniform-16", "eva"]
    assert arms["advised"]["adapter_params"] == 5 * 20 and arms["uniform-8"]["adapter_params"] == 8 * 60
    assert arms["advised"]["base_params"] == 900
    assert validate.allocation_text(arms["advised"]["allocations"]) == "2 layers at rank 2, 1 at 1"
    differing = {1: Counter({16: 2, 8: 1}), 0: Counter({16: 1, 8: 2})}  # an advice refitted between its seeds' runs
    assert validate.allocation_text(differing) == "seed 0: 2 layers at rank 8, 1 at 16; seed 1: 2 layers at rank 16, 1 at 8"
    lines = goal_check(arms)
    assert "best uniform r in 4-32 (uniform-8)" in lines[0] and "goal (<= x1.01, <= x0.6) met" in lines[0]
    assert "advised lower" in lines[1]
    assert lines[2].endswith(f"{0.01 / 2**0.5:.4f}")  # seeds 0.01 apart at every uniform rank
    # at a fixed budget (SmolLM2's protocol) the advice is set against the uniform rank of that budget
    fixed = goal_check(arms, budget_rank=16)
    assert fixed[0] == ("advised vs uniform-16 at the same budget: loss 0.9050 vs 0.9550 "
                        f"(-0.0500 = {-0.05 / (0.01 / 2**0.5):+.1f} seed noises), parameters x0.10")
    # an arm with fewer seeds than the uniform one is also compared on the seeds both ran
    arms["advised"] = {**arms["advised"], "eval_loss": 0.95, "by_seed": {0: 0.95}}
    paired = goal_check(arms, budget_rank=16)[0]
    assert paired.startswith("advised vs uniform-16 at the same budget: loss 0.9500 vs 0.9550 (-0.0050")
    assert paired.endswith("; on the seeds both ran (0): 0.9500 vs 0.9500 (+0.0000 = +0.0 seed noises)")


def test_the_held_out_calibration_is_fitted_on_the_encoders_without_the_task():
    """As the shipped seq-cls calibration: the validated task and the causal LM's cells are left out."""
    from calibration.synthetic import synthetic_sweep
    from calibration.validate import held_out_calibration

    records = [{**r, "model": r["config"]["model"], "task": r["config"]["task"]}
               for r in synthetic_sweep() + synthetic_sweep(model="smollm2")]
    calibration = held_out_calibration("a", records)
    assert calibration.metadata["models_seen"] == ["minilm"] and calibration.metadata["tasks"] == ["b", "c", "d"]
