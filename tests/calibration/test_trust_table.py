"""README.md's trust table is the one generated from models/."""

from pathlib import Path

from calibration.trust_table import trust_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

def test_readme_quotes_the_generated_trust_table():
    table = trust_table(ROOT / "models")
    assert table.count("\n") >= 2, "models/ holds no calibration description"
    assert table in README.read_text(encoding="utf-8"), (
        "README.md's trust table is stale: paste the output of `python -m calibration.trust_table`")


def test_the_capacity_column_names_what_sets_the_level_and_what_it_beat(tmp_path):
    """A description with capacity levels over three tasks: the tokens rule, 16 parameters per loss
    token, beat r = 32 (the cheapest baseline within one seed noise of the lowest); two tasks: not used."""
    import json

    meta = json.loads((ROOT / "models" / "lora-rank-causal-lm.json").read_text())
    summary = {"cells": 3, "regret_mean": 0.001, "within_noise": 1}
    meta["capacity"] = {"tasks": ["a", "b", "c"], "params_per_token": 16.0, "cell_labels": [{}, {}, {}],
                        "levels": {"tokens rule, fitted": {**summary, "regret_noises_mean": 1.22, "params_vs_r16": 1.04},
                                   "r = 32": {**summary, "regret_noises_mean": 0.87, "params_vs_r16": 2.0},
                                   "r = 64": {**summary, "regret_noises_mean": 0.2, "params_vs_r16": 4.0}}}
    (tmp_path / "c.json").write_text(json.dumps(meta))
    row = trust_table(tmp_path).splitlines()[-1]
    assert row.endswith("| 16 parameters per loss token: 1.22 at 1.04x vs r = 32 0.87 at 2.00x (3 cells, 3 tasks) |")
    assert "(used only for data whose tokens are not counted)" in row  # the pooled level, for a DataLoader
    meta["capacity"]["tasks"] = ["a", "b"]
    (tmp_path / "c.json").write_text(json.dumps(meta))
    assert trust_table(tmp_path).splitlines()[-1].endswith("| not used (2 tasks) |")


def test_calibration_readme_opens_with_the_generated_level_table():
    import json

    from calibration.level_study import EVA_LEVEL
    from calibration.trust_table import LEVEL_NAMES, level_table

    table = level_table(json.loads((ROOT / "models" / "lora-rank-causal-lm.json").read_text()))
    assert table and "(shipped)**" in table and f"| {LEVEL_NAMES[EVA_LEVEL]} |" in table  # measured or marked not
    text = (ROOT / "calibration" / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- level table -->")
    assert text.index("## Current state") < start < text.index("## Which parametrization")
    assert table in text[start:text.index("<!-- /level table -->")], (
        "calibration/README.md's level table is stale: paste the output of `python -m calibration.trust_table --levels`")


def test_the_level_table_scores_eva_where_cells_trained_it_and_marks_it_otherwise():
    import json

    from calibration.level_study import EVA_LEVEL
    from calibration.trust_table import LEVEL_NAMES, level_table

    meta = json.loads((ROOT / "models" / "lora-rank-causal-lm.json").read_text())
    summary = {"cells": 3, "regret_mean": 0.001, "regret_noises_max": 2.0, "within_noise": 1}
    levels = {"tokens rule, fitted": {**summary, "regret_noises_mean": 1.22, "params_vs_r16": 1.04},
              "r = 32": {**summary, "regret_noises_mean": 0.87, "params_vs_r16": 2.0}}
    meta["capacity"] = {"tasks": ["a", "b", "c"], "params_per_token": 16.0, "cell_labels": [{"model": "smollm2"}] * 3,
                        "levels": levels}
    assert f"| {LEVEL_NAMES[EVA_LEVEL]} | not measured | | | | |" in level_table(meta)
    levels[EVA_LEVEL] = {**summary, "cells": 2, "within_noise": 0, "regret_noises_mean": 1.5, "params_vs_r16": 0.98}
    assert f"| {LEVEL_NAMES[EVA_LEVEL]} | 1.50 | 2.00 | 0.10 % | 0 of 2 | 0.98x |" in level_table(meta)
    # the transfer check to every block: said as measured, or marked not measured
    assert level_table(meta).endswith("not measured, so the ratio is read as parameters over every adapted layer.")
    meta["capacity"]["transfer"] = {"reading": "as rank", "blocks": 4, "cells": [
        {"model": "smollm2", "task": "t", "train_size": 1000, "ranks": [1, 16], "seeds": 1,
         "as parameters": {"rank": 2, "regret_noises": 8.04}, "as rank": {"rank": 16, "regret_noises": 0.0}}]}
    assert level_table(meta).endswith(
        "on 1 cell trained again so: SmolLM2 t at 1000 rows (ranks 1, 16, 1 seed): as parameters r = 2, 8.0 seed "
        "noises above the cell's best rank; as rank r = 16, 0.0. The advice reads it as rank, counted over 4 of the "
        "adapter's blocks.")
