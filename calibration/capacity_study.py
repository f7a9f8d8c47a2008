"""Where rank becomes the limit: the capacity labels of the ``smollm2-capacity`` and ``gemma3-capacity`` grids.

Under alpha = 32 with PEFT's alpha / r (the parametrization ``calibration.scaling_study``
chose), each rank of a cell takes its best learning rate (:func:`calibration.labels.best_over_lr_cells`),
so what is left between ranks is capacity, not step size. Per cell (a model with its top 4
blocks adapted, one epoch over the training rows, 256 eval rows) this prints:

- the training rows' loss tokens and the adapter parameters of r = 1;
- each rank's mean eval loss at its best rate, the rate (``*`` at the edge of the rates tried,
  ``(1 seed)`` where the second seed is still missing), and the seeds' noise;
- the optimal rank (the smallest within one seed noise of the best; ``censored`` when that is
  the largest rank tried), its adapter parameters per training loss token (where the cell's
  knee lies on the scale Tinker's rule reads: that rule asks for at least 1), and how far r = 1
  lies above the best, in seed noises: the sign that the data holds more than the smallest
  adapter can take;
- where the cell trained it, PEFT's EVA at uniform r = 16's budget (both seeds at 1e-3,
  :func:`calibration.level_study.eva_runs`): its mean eval loss and how far above the best it lies.

Reads ``results/smollm2-scaling.jsonl`` too (its seed-0 alpha / r runs at r = 1 and 64 are
runs of this grid). Writes ``calibration/plots/capacity.png``: each cell's loss above its best,
against adapter parameters per training loss token.

    python -m calibration.capacity_study
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from calibration import read_results, script_parser
from calibration.labels import CAPACITY_RANKS
from calibration.records import EXPERIMENT_FILES, RESULTS_DIR

HERE = Path(__file__).resolve().parent
RESULTS = [RESULTS_DIR / name for name in EXPERIMENT_FILES]  # the scaling and capacity grids, as fit reads them
PLOTS_DIR = HERE / "plots"


def swept_cells(records: list[dict], ranks=CAPACITY_RANKS):
    """The best-over-LR cells of the alpha / r runs (rsLoRA runs are the scaling grid's other arm)
    at ``ranks`` (None: every rank trained), labelled or not."""
    from calibration.labels import best_over_lr_cells

    return best_over_lr_cells([r for r in records if not r["config"].get("use_rslora")
                               and (ranks is None or r["config"].get("rank") in ranks)], min_ranks=2)


def cell_row(cell, eva: tuple[float, float] | None = None) -> dict:
    """One cell's capacity summary (see the module docstring); ``regret_r1``: r = 1's mean loss
    above the best rank's, in seed noises (None without r = 1 or a seed noise); ``eva``: the cell's
    EVA baseline (uniform-equivalent rank, mean loss) or None."""
    from calibration.level_study import loss_tokens

    best = cell.mean_loss(cell.best_rank)
    noise = cell.seed_noise
    first = cell.records[0]
    per_rank_one = first["trainable_params"] // first["config"]["rank"]
    tokens = loss_tokens(first)  # counted with the tokenizer when the record does not carry it
    return {
        "model": cell.model, "task": cell.task, "train_size": cell.train_size, "loss_tokens": tokens,
        "params_r1": per_rank_one, "ranks": cell.ranks,
        "loss": {r: cell.mean_loss(r) for r in cell.ranks}, "seeds": {r: len(cell.losses[r]) for r in cell.ranks},
        "best_lr": dict(cell.best_lr), "edge": {r: cell.lr_at_edge(r) for r in cell.ranks},
        "seed_noise": noise, "optimal_rank": cell.optimal_rank, "censored": cell.censored,
        "regret_r1": ((cell.mean_loss(1) - best) / noise if 1 in cell.losses and noise else None),
        "params_per_token": (per_rank_one * cell.optimal_rank / tokens
                             if cell.optimal_rank is not None and tokens else None),
        "best_loss": best, "eva_loss": eva[1] if eva else None,
    }


def markdown(rows: list[dict]) -> str:
    ranks = sorted({r for row in rows for r in row["ranks"]})
    lines = ["| model | task | rows | loss tokens | r = 1 params | " + " | ".join(f"r = {r}" for r in ranks)
             + " | EVA at r = 16's budget | seed noise | optimal rank | its parameters per loss token | r = 1 above best |",
             "|---|---|---|---|---|" + "---|" * len(ranks) + "---|---|---|---|---|"]
    for row in rows:
        cells = []
        for r in ranks:
            if r not in row["loss"]:
                cells.append("-")
                continue
            mark = "*" if row["edge"][r] else ""
            one = " (1 seed)" if row["seeds"][r] < 2 else ""
            cells.append(f"{row['loss'][r]:.4f} @{row['best_lr'][r]:g}{mark}{one}")
        noise = "-" if row["seed_noise"] is None else f"{row['seed_noise']:.4f}"
        eva = "-" if row["eva_loss"] is None else f"{row['eva_loss']:.4f}"
        if row["eva_loss"] is not None and row["seed_noise"]:
            eva += f" ({(row['eva_loss'] - row['best_loss']) / row['seed_noise']:+.1f} noises)"
        optimal = ("-" if row["optimal_rank"] is None
                   else f"{row['optimal_rank']}{' (censored)' if row['censored'] else ''}")
        regret = "-" if row["regret_r1"] is None else f"{row['regret_r1']:.1f} noises"
        per_token = "-" if row["params_per_token"] is None else f"{row['params_per_token']:.2g}"
        tokens = "-" if row["loss_tokens"] is None else f"{row['loss_tokens']:,}"
        lines.append(f"| {row['model']} | {row['task']} | {row['train_size']} | {tokens} | {row['params_r1']:,} | "
                     + " | ".join(cells) + f" | {eva} | {noise} | {optimal} | {per_token} | {regret} |")
    lines += ["", "Each rank's mean eval loss at its best learning rate (`*`: the best rate is an edge of "
              "those tried); EVA: PEFT's EVA initialisation redistributing r = 16's budget, at 1e-3 (in "
              "brackets: above the best rank, in seed noises); optimal rank: the smallest within one seed "
              "noise of the best; `-`: not trained yet, or fewer than two seeds."]
    return "\n".join(lines)


def plot(rows: list[dict]) -> Path:
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        if not row["loss_tokens"]:
            continue
        x = [row["params_r1"] * r / row["loss_tokens"] for r in row["ranks"]]
        y = [100 * (row["loss"][r] / row["best_loss"] - 1) for r in row["ranks"]]
        line, = ax.plot(x, y, marker="o", label=f"{row['model']} {row['task']} {row['train_size']}")
        if row["seed_noise"]:
            ax.axhline(100 * row["seed_noise"] / row["best_loss"], color=line.get_color(), lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters per training loss token")
    ax.set_ylabel("eval loss above the cell's best rank (%)")
    ax.set_title("Capacity: alpha / r, each rank at its best learning rate\n(dotted: the cell's seed noise)",
                 fontsize=9)
    ax.legend(fontsize=7)
    path = PLOTS_DIR / "capacity.png"
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.capacity_study", __doc__, ["python -m calibration.capacity_study"])
    parser.add_argument("--results", type=Path, nargs="+", default=RESULTS, help="results files to read")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    from calibration.level_study import eva_runs

    records = [r for path in args.results if path.exists() for r in read_results(path)]
    eva = eva_runs(records)
    rows = [cell_row(cell, eva.get((cell.model, cell.task, cell.train_size))) for cell in swept_cells(records)]
    if not rows:
        print(f"error: no cell with two or more ranks in {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    rows.sort(key=lambda row: (row["model"], row["loss_tokens"] or 0, row["task"]))
    print(markdown(rows))
    labelled = [row for row in rows if row["optimal_rank"] is not None]
    if labelled:
        print(f"\n{len(labelled)} labelled cells of {len(rows)}; censored: {sum(r['censored'] for r in labelled)}; "
              f"median r = 1 regret: {statistics.median(r['regret_r1'] for r in labelled if r['regret_r1'] is not None):.1f} noises")
    if not args.no_plot:
        print(f"wrote {plot(rows)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
