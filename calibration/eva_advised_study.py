"""Would EVA help on top of the advised level? EVA against the advised uniform rank at its budget.

The advice's level is a uniform rank: the tokens rule's at the shipped causal-LM calibration's
ratio (:func:`calibration.level_study.tokens_rule_rank`). PEFT's EVA spends the same budget
unevenly, by each layer's activation spectrum. The ``eva-advised-budget`` grid trains, in each
capacity cell, EVA at the advised rank's budget and that uniform rank itself, both at 1e-3 with
two seeds; where the advised rank is 16 (brown-lm, shakespeare) the capacity cell's own EVA at
r = 16's budget and uniform r = 16 at 1e-3 serve. Per cell this prints the advised rank, uniform's
and EVA's mean eval loss, EVA minus uniform in the cell's seed noises and in % of uniform's loss,
each one's loss above the cell's best rank in seed noises, and EVA's parameters over uniform's;
then the means over the cells that have both.

    python -m calibration.eva_advised_study
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from calibration import read_results, script_parser
from calibration.records import RESULTS_DIR, experiment_result_files, read_records

EVA_ADVISED_FILE = RESULTS_DIR / "eva-advised-budget.jsonl"
RATE = 1e-3  # the rate both arms train at (CAPACITY_EVA's)


def _arm_runs(records: list[dict], key: tuple, rank: int, eva: bool) -> list[dict]:
    """The finished runs of one cell (``key``: model, task, rows; top blocks adapted, alpha / r) at
    uniform ``rank`` and ``RATE``, with EVA's initialisation or PEFT's default."""
    from advisor.allocation import FIXED_ALPHA

    return [r for r in records
            if (r["config"]["model"], r["config"]["task"], r["config"]["train_size"]) == key
            and r["config"].get("top_blocks") and r["config"].get("rank") == rank
            and r["config"].get("learning_rate") == RATE and r["config"].get("alpha") == FIXED_ALPHA
            and not r["config"].get("use_rslora") and (r["config"].get("eva_rho") is not None) == eva
            and isinstance(r.get("eval_loss"), (int, float))]


def eva_advised_rows(params_per_token: float, study: Path = EVA_ADVISED_FILE) -> list[dict]:
    """Per capacity cell (top-4 blocks, each rank at its best rate): the advised rank at
    ``params_per_token``, and where both arms have two seeds at it, their mean losses, EVA's minus
    uniform's in the cell's seed noises and in %, each above the cell's best rank in seed noises,
    and EVA's parameters over uniform's ("uniform" / "eva" None where an arm has fewer seeds)."""
    from calibration.level_study import adapter_params, capacity_cells, tokens_rule_rank

    capacity = read_records(experiment_result_files())
    records = capacity + read_results(study)
    rows = []
    for cell in capacity_cells(capacity):
        if not cell.records[0]["config"].get("top_blocks"):
            continue
        key, rank = (cell.model, cell.task, cell.train_size), tokens_rule_rank(cell, params_per_token)
        arms = {"uniform": _arm_runs(records, key, rank, eva=False), "eva": _arm_runs(records, key, rank, eva=True)}
        row = {"model": cell.model, "task": cell.task, "train_size": cell.train_size, "rank": rank,
               "noise": cell.seed_noise, "best_rank": cell.best_rank, "uniform": None, "eva": None}
        for arm, runs in arms.items():
            if len({run["config"]["seed"] for run in runs}) >= 2:
                row[arm] = statistics.mean(run["eval_loss"] for run in runs)
        if row["uniform"] is not None and row["eva"] is not None:
            best = cell.mean_loss(cell.best_rank)
            row.update(eva_minus_uniform_noises=(row["eva"] - row["uniform"]) / cell.seed_noise,
                       eva_minus_uniform_percent=100 * (row["eva"] - row["uniform"]) / row["uniform"],
                       uniform_above_best_noises=(row["uniform"] - best) / cell.seed_noise,
                       eva_above_best_noises=(row["eva"] - best) / cell.seed_noise,
                       params_ratio=statistics.mean(map(adapter_params, arms["eva"]))
                       / statistics.mean(map(adapter_params, arms["uniform"])))
        rows.append(row)
    return rows


MEANS = ("eva_minus_uniform_noises", "eva_minus_uniform_percent", "uniform_above_best_noises", "eva_above_best_noises",
         "params_ratio")


def summary(rows: list[dict]) -> dict | None:
    """Over the ``rows`` (:func:`eva_advised_rows`) where both arms trained: ``cells``, the mean of each
    of ``MEANS``, and ``better`` / ``worse``, the cells where EVA did more than one seed noise better
    or worse than uniform; None without such a row."""
    scored = [row for row in rows if "eva_minus_uniform_noises" in row]
    if not scored:
        return None
    return {"cells": len(scored), **{key: statistics.mean(row[key] for row in scored) for key in MEANS},
            "better": sum(row["eva_minus_uniform_noises"] < -1 for row in scored),
            "worse": sum(row["eva_minus_uniform_noises"] > 1 for row in scored)}


def eva_advised_summary(params_per_token: float | None, study: Path = EVA_ADVISED_FILE) -> dict | None:
    """What ``calibration.fit`` stores as the capacity's ``eva_at_level``: the :func:`summary` of
    EVA minus uniform (seed noises, %), EVA's parameters over uniform's and the cells better or
    worse, with the rate; None without a ratio or a cell where both arms trained."""
    found = summary(eva_advised_rows(params_per_token, study)) if params_per_token else None
    if found is None:
        return None
    return {"cells": found["cells"],
            **{key: round(found[key], 3) for key in ("eva_minus_uniform_noises", "eva_minus_uniform_percent",
                                                     "params_ratio")},
            "better": found["better"], "worse": found["worse"], "learning_rate": RATE}


def markdown(rows: list[dict], params_per_token: float) -> str:
    lines = [f"EVA at the advised rank's budget against that uniform rank (the tokens rule at {params_per_token:g} "
             f"parameters per loss token; both at {RATE:g}, two seeds; `-`: not trained yet):", "",
             "| model | task | rows | advised r | uniform: eval loss | EVA: eval loss | EVA - uniform (noises) | "
             "EVA - uniform (%) | uniform above best (noises) | EVA above best (noises) | EVA params / uniform's |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        both = "eva_minus_uniform_noises" in row
        cells = [f"{row['uniform']:.4f}" if row["uniform"] is not None else "-",
                 f"{row['eva']:.4f}" if row["eva"] is not None else "-"]
        cells += ([f"{row['eva_minus_uniform_noises']:+.1f}", f"{row['eva_minus_uniform_percent']:+.1f}",
                   f"{row['uniform_above_best_noises']:.1f}", f"{row['eva_above_best_noises']:.1f}",
                   f"{row['params_ratio']:.2f}"] if both else ["-"] * 5)
        lines.append(f"| {row['model']} | {row['task']} | {row['train_size']} | {row['rank']} | " + " | ".join(cells) + " |")
    found = summary(rows)
    if found:
        lines += ["", f"Over {found['cells']} cells: EVA {found['eva_minus_uniform_noises']:+.1f} seed noises "
                      f"({found['eva_minus_uniform_percent']:+.1f} %) against uniform at the advised rank, at "
                      f"{found['params_ratio']:.2f}x its parameters; more than one noise better on {found['better']}, "
                      f"worse on {found['worse']}; above the best rank: uniform "
                      f"{found['uniform_above_best_noises']:.2f}, EVA {found['eva_above_best_noises']:.2f} seed noises."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.eva_advised_study", __doc__, ["python -m calibration.eva_advised_study"])
    parser.add_argument("--results", type=Path, default=EVA_ADVISED_FILE, help="the study's runs (default: %(default)s)")
    args = parser.parse_args(argv)
    from calibration.transfer_study import shipped_params_per_token

    ratio = shipped_params_per_token()
    if not ratio:
        print("error: the shipped causal-LM calibration has no tokens rule ratio", file=sys.stderr)
        return 2
    print(markdown(eva_advised_rows(ratio, args.results), ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
