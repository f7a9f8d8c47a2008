"""Does a capacity cell's need carry over from its top 4 blocks to every block, as rank or as parameters?

The capacity cells adapt a model's top 4 blocks; users adapt every block, which gives each unit of
rank about 7.5 times the parameters on SmolLM2 (305,280 against 40,704). The advice's fitted tokens
rule counts adapter parameters per loss token, so it assumes the need carries over as parameters:
the rank an all-block adapter needs is the top-4 need divided by that factor. If it carries over as
rank instead, the all-block adapter needs the top-4 rank itself.

The ``smollm2-transfer`` grid trains capacity cells again with every block adapted (the same
rows, epoch, ranks, rates and seeds). Per cell and rank trained there, at its best rate, this prints its
mean eval loss beside two predictions from the top-4 cell (each rank at its best rate too):

- ``as rank``: the top-4 cell's loss at the same rank;
- ``as parameters``: the top-4 cell's loss at the same adapter parameters, interpolated linearly in
  log2 rank between the ranks it trained (:func:`calibration.level_study.loss_at`; clipped to them);

each as a difference in the top-4 cell's seed noises. Then the all-block gap between its smallest
rank and its best one beside what each hypothesis predicts for it. Adapting every block changes more
than the parameter count (which layers move), so the levels may differ from both; the gaps, which
need no common level, are the cleaner test. Last, the shipped causal-LM calibration's tokens rule
(its ``params_per_token``) read both ways on the all-block cell: as parameters (over every block's
layers, what the advice does) and as rank (over the top-4 cell's parameters per rank), each rank
within the advice's bounds and its loss above the all-block cell's best, interpolated in log2 rank
between the ranks trained, in seed noises (the all-block cell's own when two seeds trained every
rank, else the top-4 cell's).

    python -m calibration.transfer_study
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from calibration import read_results, script_parser
from calibration.records import RESULTS_DIR, experiment_result_files, read_records

TRANSFER_FILE = RESULTS_DIR / "smollm2-transfer.jsonl"


def all_block_runs(path: Path = TRANSFER_FILE) -> list[dict]:
    """The uniform-rank runs of ``path`` with every block adapted (alpha / r, not EVA, no ``top_blocks``)."""
    return [r for r in read_results(path) if not r["config"].get("use_rslora") and r["config"].get("eva_rho") is None
            and r["config"].get("top_blocks") is None]


def rank_losses(cell) -> dict[int, dict]:
    """Per rank of an all-block ``cell`` (:func:`calibration.labels.best_over_lr_cells`: each rank at its
    best rate among the rates trained with the most seeds): {"loss": mean eval loss at that rate, "rate",
    "rates": those tried, "seeds": runs at that rate, "params": adapter parameters}."""
    by_rank = {}
    for rank in cell.ranks:
        runs = [r for r in cell.records if r["config"]["rank"] == rank]
        by_rank[rank] = {"loss": cell.mean_loss(rank), "rate": cell.best_lr[rank], "rates": cell.rates[rank],
                         "seeds": len(runs), "params": runs[0]["trainable_params"]}
    return by_rank


def top4_cell(records: list[dict], model: str, task: str, train_size: int):
    """The capacity cell (top 4 blocks, alpha / r, best rate per rank) of ``model``, ``task`` and
    ``train_size`` among ``records``, or None."""
    from calibration.level_study import capacity_cells

    cells = [c for c in capacity_cells(records, ranks=None)
             if (c.model, c.task, c.train_size) == (model, task, train_size) and c.records[0]["config"].get("top_blocks")]
    return cells[0] if cells else None


def transfer_rows(all_block: dict[int, dict], cell) -> list[dict]:
    """Per all-block rank (``all_block``: :func:`rank_losses`): its loss and the top-4 ``cell``'s
    predictions as rank and as parameters, with their differences in the cell's seed noises."""
    from calibration.level_study import loss_at

    per_rank_top4 = cell.records[0]["trainable_params"] / cell.records[0]["config"]["rank"]
    rows = []
    for rank, found in sorted(all_block.items()):
        same_params_rank = found["params"] / per_rank_top4
        as_rank, as_params = loss_at(cell, rank)[0], loss_at(cell, same_params_rank)[0]
        rows.append({**found, "rank": rank, "top4_rank_same_params": same_params_rank, "as_rank": as_rank,
                     "as_params": as_params, "vs_rank_noises": (found["loss"] - as_rank) / cell.seed_noise,
                     "vs_params_noises": (found["loss"] - as_params) / cell.seed_noise})
    return rows


def gaps(rows: list[dict], noise: float) -> dict[str, float]:
    """The loss between the smallest all-block rank and the best one, measured and as each hypothesis
    predicts it, in seed noises (``noise``: the top-4 cell's); also ``best_rank``, that best rank."""
    low, high = rows[0], min(rows, key=lambda row: row["loss"])
    return {"measured": (low["loss"] - high["loss"]) / noise, "as_rank": (low["as_rank"] - high["as_rank"]) / noise,
            "as_params": (low["as_params"] - high["as_params"]) / noise, "best_rank": high["rank"]}


def tokens_rule_readings(all_block_cell, cell, params_per_token: float) -> dict[str, dict]:
    """The tokens rule at ``params_per_token`` on the all-block cell, as parameters and as rank (see the
    module docstring): {reading: {"rank", "regret_noises"}}."""
    from advisor.baselines import tokens_rank
    from calibration.level_study import loss_at, loss_tokens, within_bounds

    first = all_block_cell.records[0]
    tokens = loss_tokens(first)
    per_rank = {"as parameters": first["trainable_params"] / first["config"]["rank"],
                "as rank": cell.records[0]["trainable_params"] / cell.records[0]["config"]["rank"]}
    noise = all_block_cell.seed_noise if all_block_cell.complete else cell.seed_noise
    best = all_block_cell.mean_loss(all_block_cell.best_rank)
    readings = {}
    for reading, params in per_rank.items():
        rank = within_bounds(tokens_rank(tokens, round(params), params_per_token))
        readings[reading] = {"rank": rank, "regret_noises": (loss_at(all_block_cell, rank)[0] - best) / noise}
    return readings


def transfer_evidence(params_per_token: float | None, path: Path = TRANSFER_FILE) -> dict | None:
    """What ``calibration.fit`` stores as the capacity's ``transfer``: per all-block cell of ``path``
    with a top-4 capacity cell, the tokens rule at ``params_per_token`` read as parameters and as rank
    (:func:`tokens_rule_readings`), and the ``reading`` with the lower mean regret over those cells
    ("as parameters" on a tie), with ``blocks``, the top-4 cells' adapted blocks; None without such
    a cell or a ratio."""
    from calibration.labels import best_over_lr_cells

    runs = all_block_runs(path)
    if not params_per_token or not runs:
        return None
    top4 = read_records(experiment_result_files())
    cells, blocks = [], None
    for all_block in best_over_lr_cells(runs, min_ranks=2):
        cell = top4_cell(top4, all_block.model, all_block.task, all_block.train_size)
        if cell is None or not cell.seed_noise:
            continue
        blocks = blocks or cell.records[0]["config"]["top_blocks"]
        readings = tokens_rule_readings(all_block, cell, params_per_token)
        cells.append({"model": all_block.model, "task": all_block.task, "train_size": all_block.train_size,
                      "ranks": all_block.ranks, "seeds": min(map(len, all_block.losses.values())),
                      **{reading: {k: round(v, 3) for k, v in found.items()} for reading, found in readings.items()}})
    if not cells:
        return None
    mean = {reading: sum(c[reading]["regret_noises"] for c in cells) / len(cells) for reading in ("as parameters", "as rank")}
    return {"cells": cells, "reading": "as rank" if mean["as rank"] < mean["as parameters"] else "as parameters",
            "blocks": blocks}


def every_block_rates(path: Path = TRANSFER_FILE) -> list[dict] | None:
    """Each rank's best learning rate on the all-block cells of ``path`` (alpha / r), among the rates
    it tried with the most seeds: one {"model", "task", "rank", "best", "rates"} per (cell, rank)
    that tried at least two rates; None without such a rank."""
    from calibration.labels import best_over_lr_cells

    found = [{"model": cell.model, "task": cell.task, "rank": rank, "best": cell.best_lr[rank], "rates": cell.rates[rank]}
             for cell in best_over_lr_cells(all_block_runs(path), min_ranks=1) for rank in cell.ranks if len(cell.rates[rank]) > 1]
    return found or None


def shipped_params_per_token() -> float | None:
    """The causal-LM calibration's fitted tokens rule ratio (``capacity.params_per_token``), or None."""
    from advisor.calibrated import load_calibration, shipped_calibration

    path = shipped_calibration("causal-lm")
    capacity = load_calibration(path).metadata.get("capacity") if path else None
    return (capacity or {}).get("params_per_token")


def _of(rates: list[float] | None) -> str:
    return f" (of {', '.join(f'{rate:g}' for rate in rates)})" if rates and len(rates) > 1 else ""


def markdown(rows: list[dict], cell, gap: dict[str, float]) -> str:
    lines = [f"{cell.model} on {cell.task}, {cell.train_size} rows: every block adapted against the top 4 (each rank at "
             f"its best rate; the top-4 cell's seed noise {cell.seed_noise:.4f}):", "",
             "| rank | parameters | all blocks: eval loss | best rate | seeds | top 4, same rank | top 4, same parameters "
             "(as its rank) | above same rank (noises) | above same parameters (noises) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['rank']} | {row['params']:,} | {row['loss']:.4f} | {row['rate']:g}{_of(row.get('rates'))} | "
                     f"{row['seeds']} | "
                     f"{row['as_rank']:.4f} | {row['as_params']:.4f} (r = {row['top4_rank_same_params']:.3g}) | "
                     f"{row['vs_rank_noises']:+.1f} | {row['vs_params_noises']:+.1f} |")
    low, high = rows[0]["rank"], gap["best_rank"]
    lines += ["", f"r = {low} above r = {high}, the best, with every block adapted: {gap['measured']:.1f} seed noises "
              "measured; "
              f"{gap['as_rank']:.1f} if the need carries over as rank, {gap['as_params']:.1f} if as parameters."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.transfer_study", __doc__, ["python -m calibration.transfer_study"])
    parser.add_argument("--results", type=Path, default=TRANSFER_FILE, help="the all-block runs (default: %(default)s)")
    args = parser.parse_args(argv)
    from calibration.labels import best_over_lr_cells

    all_block_cells = best_over_lr_cells(all_block_runs(args.results), min_ranks=1)
    if not all_block_cells:
        print(f"error: no all-block run in {args.results}", file=sys.stderr)
        return 2
    top4 = read_records(experiment_result_files())
    ratio = shipped_params_per_token()
    for number, all_block_cell in enumerate(all_block_cells):
        model, task, size = all_block_cell.model, all_block_cell.task, all_block_cell.train_size
        cell = top4_cell(top4, model, task, size)
        if cell is None or not cell.seed_noise or math.isnan(cell.seed_noise):
            print(f"error: no top-4 capacity cell with a seed noise for {model} {task} {size}", file=sys.stderr)
            return 2
        rows = transfer_rows(rank_losses(all_block_cell), cell)
        print(("\n" if number else "") + markdown(rows, cell, gaps(rows, cell.seed_noise)))
        if ratio:
            readings = tokens_rule_readings(all_block_cell, cell, ratio)
            print(f"\nThe shipped tokens rule ({ratio:g} adapter parameters per loss token) on the all-block cell: "
                  + "; ".join(f"{reading}, r = {found['rank']}, {found['regret_noises']:.1f} seed noises above its "
                              "best rank" for reading, found in readings.items()) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
