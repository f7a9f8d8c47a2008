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


def _params(run: dict) -> int:
    """A run's adapter parameters, from its adapted layers' ranks and shapes."""
    layers = run["probe"]["layers"]
    return sum(layer["r"] * sum(layers[layer["name"]]["shape"]) for layer in run["adapter_layers"])


def eva_advised_rows(params_per_token: float, study: Path = EVA_ADVISED_FILE) -> list[dict]:
    """Per capacity cell (top-4 blocks, each rank at its best rate): the advised rank at
    ``params_per_token``, and where both arms have two seeds at it, their mean losses, EVA's minus
    uniform's in the cell's seed noises and in %, each above the cell's best rank in seed noises,
    and EVA's parameters over uniform's ("uniform" / "eva" None where an arm has fewer seeds)."""
    from calibration.level_study import capacity_cells, tokens_rule_rank

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
                       params_ratio=statistics.mean(map(_params, arms["eva"])) / statistics.mean(map(_params, arms["uniform"])))
        rows.append(row)
    return rows


def eva_advised_summary(params_per_token: float | None, study: Path = EVA_ADVISED_FILE) -> dict | None:
    """What ``calibration.fit`` stores as the capacity's ``eva_at_level``: over the cells of
    :func:`eva_advised_rows` where both arms trained, the means of EVA minus uniform (seed noises,
    %) and of EVA's parameters over uniform's, the cells where EVA did more than one noise better
    or worse, and the rate; None without a ratio or such a cell."""
    if not params_per_token:
        return None
    scored = [row for row in eva_advised_rows(params_per_token, study) if "eva_minus_uniform_noises" in row]
    if not scored:
        return None

    def mean(key: str) -> float:
        return round(statistics.mean(row[key] for row in scored), 3)

    return {"cells": len(scored), "eva_minus_uniform_noises": mean("eva_minus_uniform_noises"),
            "eva_minus_uniform_percent": mean("eva_minus_uniform_percent"), "params_ratio": mean("params_ratio"),
            "better": sum(row["eva_minus_uniform_noises"] < -1 for row in scored),
            "worse": sum(row["eva_minus_uniform_noises"] > 1 for row in scored), "learning_rate": RATE}


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
    scored = [row for row in rows if "eva_minus_uniform_noises" in row]
    if scored:
        def mean(key: str) -> float:
            return statistics.mean(row[key] for row in scored)

        better = sum(row["eva_minus_uniform_noises"] < -1 for row in scored)
        worse = sum(row["eva_minus_uniform_noises"] > 1 for row in scored)
        lines += ["", f"Over {len(scored)} cells: EVA {mean('eva_minus_uniform_noises'):+.1f} seed noises "
                      f"({mean('eva_minus_uniform_percent'):+.1f} %) against uniform at the advised rank, at "
                      f"{mean('params_ratio'):.2f}x its parameters; more than one noise better on {better}, worse on "
                      f"{worse}; above the best rank: uniform {mean('uniform_above_best_noises'):.2f}, EVA "
                      f"{mean('eva_above_best_noises'):.2f} seed noises."]
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
