"""Today's advice, pinned: a restructure must not move it. Work on the level model or the shape
that changes it on purpose updates these figures, with its evidence, in the same commit.

The pin reads a committed sweep record's step-0 probe (SmolLM2 on stdlib-code, 1000 training
rows, one of the shipped causal-LM calibration's cells) and the shipped calibration: no model
runs, so the advice is the same on every machine. The record did not count its dataset's loss
tokens (as for a DataLoader), so the calibration's tokens rule cannot apply and its pooled level
sets the level; tests/test_smollm2.py pins the tokens rule's advice on the embedded default."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

from advisor.probe_pass import ProbeResult
from advisor.recommend import advice_from_probe
from advisor.spectrum import LayerStats

RECORDS = Path(__file__).resolve().parent.parent / "calibration" / "results" / "smollm2-rank.jsonl"
PINNED_RUN = "4ad4b6271654"


def recorded_probe(run_id: str) -> tuple[ProbeResult, int]:
    """(the run's step-0 probe as a ProbeResult, its training rows); a record keeps each layer's
    scalar statistics, not its singular values, which the advice does not read."""
    record = next(r for line in RECORDS.read_text().splitlines() if (r := json.loads(line))["run_id"] == run_id)
    probe, fields = record["probe"], {f.name for f in dataclasses.fields(LayerStats)}
    layers = {name: LayerStats(**{**{k: v for k, v in stats.items() if k in fields}, "shape": tuple(stats["shape"]),
                                  "singular_values": [], "noise_singular_values": []})
              for name, stats in probe["layers"].items()}
    result = ProbeResult(model=record["model"], task="causal-lm", method=probe["method"], num_rows=probe["num_rows"],
                         tokens=probe["tokens"], loss_tokens=probe["loss_tokens"], batch_size=probe["batch_size"],
                         max_length=probe["max_length"], seed=probe["seed"], seconds=probe["seconds"],
                         spectra_seconds=0.0, layers=layers)
    return result, record["train_size"]


def test_the_advice_on_a_calibration_cell_is_pinned():
    result, train_size = recorded_probe(PINNED_RUN)
    advice = advice_from_probe(result, train_size=train_size)
    decision = advice.decision
    assert (decision.level, decision.shape, decision.level_rank, decision.calibration) == (
        "pooled level", "calibration", 32, "lora-rank-causal-lm")
    assert advice.trainable_params == 9_765_888  # uniform r = 32's parameters, spent along the calibrated shape
    assert sorted(Counter(advice.ranks.values()).items()) == [(16, 17), (32, 189), (64, 4)]
    assert sorted(name for name, rank in advice.ranks.items() if rank == 64) == [
        "model.layers.10.mlp.down_proj", "model.layers.3.mlp.down_proj", "model.layers.4.mlp.down_proj",
        "model.layers.6.mlp.down_proj"]
    assert (advice.config.lora_alpha, advice.config.use_rslora, advice.learning_rate["value"]) == (32.0, False, 1e-3)
