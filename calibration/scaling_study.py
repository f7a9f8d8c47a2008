"""Which LoRA parametrization lets one learning rate serve every rank: the ``smollm2-scaling`` grid.

PEFT scales the update B A by alpha / r, or by alpha / sqrt(r) with rsLoRA. Under Adam the
part of a rank-r adapter's early update that lowers the loss grows like r * scaling, so a fixed
alpha with alpha / r keeps it the same at every rank, while rsLoRA lets it grow like sqrt(r):
at one learning rate, higher ranks then win by moving faster, and a rank label measures step
size. This study reads the grid's runs (SmolLM2, top 4 blocks adapted, r 1, 8, 64, three
learning rates, alpha = 32 with alpha / r against rsLoRA alpha = 8, one epoch over 1000 rows,
256 eval rows, seed 0) and prints, per task and parametrization:

- the eval loss of every (rank, learning rate) run;
- each rank's best learning rate and its best-over-LR loss (marked ``edge`` when the best rate
  is the grid's lowest or highest: the true optimum may lie beyond it);
- the spread of the best-over-LR losses across ranks (do the ranks coincide once each has its
  best rate?) and the spread at each single learning rate (do they coincide at one rate?).

Writes ``calibration/plots/scaling.png`` (eval loss against learning rate, a line per rank, a
panel per task and parametrization).

    python -m calibration.scaling_study
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from advisor.allocation import FIXED_ALPHA  # the winner's alpha (alpha / r), written in "fixed" mode
from calibration import read_results, script_parser
from calibration.records import experiment_result_files, read_records

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "smollm2-scaling.jsonl"
PLOTS_DIR = HERE / "plots"


def parametrization(config: dict) -> str:
    """"alpha/r (alpha 32)" or "rsLoRA (alpha 8)": the scale rule of a run's config."""
    rule = "rsLoRA" if config.get("use_rslora") else "alpha/r"
    return f"{rule} (alpha {config['alpha']:g})"


def grid(records: list[dict]) -> dict[tuple[str, str], dict[int, dict[float, float]]]:
    """{(task, parametrization): {rank: {learning rate: eval loss}}} over the uniform-rank runs."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for record in records:
        config = record["config"]
        if config.get("rank") is None or record.get("eval_loss") is None:
            continue
        table[(config["task"], parametrization(config))][config["rank"]][config["learning_rate"]] = record["eval_loss"]
    return table


def best_over_lr(losses: dict[float, float]) -> tuple[float, float, bool]:
    """(best learning rate, its loss, whether it is an edge of the rates tried)."""
    rate = min(losses, key=losses.get)
    return rate, losses[rate], len(losses) > 1 and rate in (min(losses), max(losses))


def spread(values: list[float]) -> float:
    """(max - min) / min: how far apart losses are, as a share of the lowest."""
    return (max(values) - min(values)) / min(values)


def summary(table) -> list[dict]:
    """Per (task, parametrization): each rank's best rate and loss, and the spreads across ranks."""
    rows = []
    for (task, rule), by_rank in sorted(table.items()):
        ranks = sorted(by_rank)
        rates = sorted({rate for losses in by_rank.values() for rate in losses})
        best = {rank: best_over_lr(by_rank[rank]) for rank in ranks}
        at_rate = {rate: spread([by_rank[r][rate] for r in ranks]) for rate in rates
                   if all(rate in by_rank[r] for r in ranks) and len(ranks) > 1}
        rows.append({
            "task": task, "parametrization": rule, "ranks": ranks, "rates": rates, "losses": by_rank,
            "best": best, "best_spread": spread([best[r][1] for r in ranks]) if len(ranks) > 1 else None,
            "spread_at_rate": at_rate,
            "complete": all(len(by_rank[r]) == len(rates) for r in ranks),
        })
    return rows


def learning_rate_evidence(records: list[dict]) -> dict | None:
    """The one learning rate to advise under alpha = ``FIXED_ALPHA`` with alpha / r, from the runs
    of each (model, task, rows, rank, seed) trained at least at the scaling grid's three rates
    (``SCALING_LRS``): the rate, among those every such group tried, with the lowest mean regret
    (eval loss over the group's best among those rates, as a share). None when no group was.
    Also: each rate's mean regret, each rank's own best rate over the rates all its groups tried
    (``best_by_rank``, which may be one the others lack; where ranks differ, one rate is a compromise), the groups, and the settings the rate was measured under (models,
    tasks, ranks, adapted top blocks, epochs, batch size)."""
    from calibration.sweep import SCALING_LRS

    groups: dict[tuple, dict[float, float]] = defaultdict(dict)
    configs = {}
    for record in records:
        config = record["config"]
        if (config.get("rank") is None or config.get("use_rslora") or config.get("alpha") != FIXED_ALPHA
                or record.get("eval_loss") is None):
            continue
        key = (config["model"], config["task"], config["train_size"], config["rank"], config["seed"])
        groups[key][config["learning_rate"]] = record["eval_loss"]
        configs[key] = config
    complete = {key: losses for key, losses in groups.items() if set(SCALING_LRS) <= set(losses)}
    if not complete:
        return None

    def best_rate(keys) -> tuple[float, dict[float, float], list[float]]:
        """(the rate with the lowest mean regret over ``keys``, each rate's, the rates they all tried);
        a group's regret is over its best among those rates."""
        tried = sorted(set.intersection(*(set(complete[k]) for k in keys)))
        regret = {rate: sum(complete[k][rate] / min(complete[k][r] for r in tried) - 1 for k in keys) / len(keys)
                  for rate in tried}
        return min(regret, key=regret.get), regret, tried

    best, regret, rates = best_rate(list(complete))
    by_rank = {rank: best_rate([key for key in complete if key[3] == rank])[0]
               for rank in sorted({key[3] for key in complete})}
    used = [configs[key] for key in complete]
    return {
        "parametrization": "alpha/r", "alpha": FIXED_ALPHA, "learning_rate": best,
        "mean_regret": {f"{rate:g}": round(value, 4) for rate, value in regret.items()},
        "best_by_rank": {str(rank): rate for rank, rate in by_rank.items()},
        "at_edge": best in (rates[0], rates[-1]), "groups": len(complete),
        "models": sorted({c["model"] for c in used}), "tasks": sorted({c["task"] for c in used}),
        "ranks": sorted({c["rank"] for c in used}), "top_blocks": sorted({c.get("top_blocks") or 0 for c in used}),
        "epochs": sorted({round(c["steps"] * c["batch_size"] / c["train_size"], 2) for c in used}),
        "batch_size": sorted({c["batch_size"] for c in used}),
        "command": "python -m calibration.scaling_study",
    }


def markdown(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        rates = row["rates"]
        lines += [f"#### {row['task']}, {row['parametrization']}" + ("" if row["complete"] else " (incomplete)"), "",
                  "| rank | " + " | ".join(f"lr {rate:g}" for rate in rates) + " | best lr | best-over-LR loss |",
                  "|---|" + "---|" * len(rates) + "---|---|"]
        for rank in row["ranks"]:
            rate, loss, edge = row["best"][rank]
            cells = [f"{row['losses'][rank][r]:.4f}" if r in row["losses"][rank] else "-" for r in rates]
            lines.append(f"| {rank} | " + " | ".join(cells) + f" | {rate:g}{' (edge)' if edge else ''} | {loss:.4f} |")
        if row["best_spread"] is not None:
            at = ", ".join(f"{spread:.1%} at lr {rate:g}" for rate, spread in row["spread_at_rate"].items())
            lines += ["", f"Spread of the best-over-LR losses across ranks: {row['best_spread']:.1%}; at one rate: {at}."]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict]) -> Path:
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    tasks = sorted({row["task"] for row in rows})
    rules = sorted({row["parametrization"] for row in rows})
    fig, axes = plt.subplots(len(tasks), len(rules), figsize=(4.6 * len(rules), 3.4 * len(tasks)), squeeze=False,
                             sharey="row")
    for row in rows:
        ax = axes[tasks.index(row["task"])][rules.index(row["parametrization"])]
        for rank in row["ranks"]:
            losses = row["losses"][rank]
            rates = sorted(losses)
            ax.plot(rates, [losses[r] for r in rates], marker="o", label=f"r = {rank}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("eval loss")
        ax.set_title(f"{row['task']}: {row['parametrization']}", fontsize=9)
        ax.legend(fontsize=7)
    path = PLOTS_DIR / "scaling.png"
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.scaling_study", __doc__, ["python -m calibration.scaling_study"])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the grid's results file")
    args = parser.parse_args(argv)
    rows = summary(grid(read_results(args.results)))
    if not rows:
        print(f"error: no runs in {args.results}", file=sys.stderr)
        return 2
    print(markdown(rows))
    evidence = learning_rate_evidence(read_records(experiment_result_files()))
    if evidence:
        regrets = ", ".join(f"{rate}: {value:.1%}" for rate, value in evidence["mean_regret"].items())
        by_rank = ", ".join(f"r = {rank}: {rate:g}" for rank, rate in evidence["best_by_rank"].items())
        print(f"One rate for alpha = {evidence['alpha']:g} with alpha / r, over the parametrization and capacity "
              f"grids: {evidence['learning_rate']:g} (mean regret over {evidence['groups']} (task, rows, rank, seed) "
              f"runs at every rate: {regrets}); each rank's own best: {by_rank}.")
    print(f"wrote {plot(rows)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
