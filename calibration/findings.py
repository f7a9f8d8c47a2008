"""Research questions 1-4 from the committed sweep results: numbers and plots for calibration/README.md.

    python -m calibration.findings            # prints a markdown summary, writes calibration/plots/*.png

- trainings: the real training runs in each results file, per model, and the tasks covered;
- cells: each labelled cell's mean eval loss per rank, its seed noise and optimal rank;
- Q1 utilisation: effective rank of the trained B A divided by the nominal rank r, per model,
  train size, rank and layer group (a table and ``plots/utilisation.png``); where it falls
  well below 1 the adapter did not use the rank it was given;
- Q1 by task and by learning rate: utilisation at each rank per task (train size 1000), and in
  the learning-rate check's runs (``results/encoder-lr.jsonl``);
- Q1 data size: per task trained at several training-set sizes, the optimal rank at each (the
  literature expects it to grow with the data);
- Q2 alpha: per (task, rank) of the alpha grid, eval loss and train-loss rises at each PEFT
  scaling, the best scaling and those within seed noise of it (a table and ``plots/alpha.png``);
- Q3 layer types: from the uniform-rank cells, the mean effective rank of trained B A at the
  cell's largest rank in attention against MLP layers (what each group uses when both are
  given the same room); and the layer-type grid: eval loss with adapters on attention only, MLP
  only, or both at different ranks, against uniform r = 8 and 32;
- Q4 prediction: Spearman correlation between step-0 probe statistics (mean signal effective
  rank, effective rank, stable rank, noise share) and the optimal uniform rank over labelled
  cells, per model, with a bootstrap 95 % interval.
Sections without enough results say so instead of printing a number.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from advisor.calibrated import layer_group
from calibration import read_results, script_parser
from calibration.labels import CELL_KEYS, best_scaling, pooled_seed_noise, rank_grid, uniform_cells

HERE = Path(__file__).resolve().parent
PLOTS_DIR = HERE / "plots"


def training_runs() -> str:
    """How many real trainings each results file holds, per model, and the tasks they cover (the
    sweeps, the learning-rate checks and the validation; the probe-only studies are not trainings;
    a run two files share counts once in the total)."""
    from calibration.records import RESULTS_DIR, STUDY_FILES
    from calibration.records import VALIDATION_FILE as VALIDATION

    paths = [p for p in sorted(RESULTS_DIR.glob("*.jsonl")) if p.name not in STUDY_FILES or p.name == VALIDATION]
    lines = ["| results file | runs | by model | tasks |", "|---|---|---|---|"]
    every: dict[str, dict] = {}
    for path in paths:
        runs = {r["run_id"]: r["config"] for r in read_results(path) if "config" in r}
        every.update(runs)
        by_model = Counter(c["model"] for c in runs.values())
        lines.append(f"| {path.name} | {len(runs)} | {', '.join(f'{m} {n}' for m, n in sorted(by_model.items()))} | "
                     f"{len({c['task'] for c in runs.values()})} |")
    tasks = sorted({c["task"] for c in every.values()})
    lines.append(f"| all | {len(every)} | {len({c['model'] for c in every.values()})} models | "
                 f"{len(tasks)}: {', '.join(tasks)} |")
    return "\n".join(lines)


def utilisation_means(records: list[dict], key) -> dict[tuple, float]:
    """Mean effective rank of B A / r over the layers of uniform-rank runs (EVA-initialised runs
    left out), keyed by (``key(record, layer)``, r)."""
    table: dict[tuple, list[float]] = defaultdict(list)
    for record in records:
        rank = record["config"].get("rank")
        if rank is None or record["config"].get("eva_rho") is not None:
            continue
        for layer in record["adapter_layers"]:
            table[(key(record, layer), rank)].append(layer["effective_rank_BA"] / rank)
    return {k: statistics.mean(values) for k, values in table.items()}


def utilisation(records: list[dict]) -> tuple[str, dict]:
    """Mean effective rank of B A / r, by (model, train size, group) and r, over uniform-rank runs."""
    means = utilisation_means(records, lambda record, layer: (record["model"], record["train_size"], layer["group"]))
    if not means:
        return "*No uniform-rank runs yet.*", {}
    series = sorted({k[0] for k in means})
    ranks = sorted({k[1] for k in means})
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, size, group in series:
        points = [(r, means[((model, size, group), r)]) for r in ranks if ((model, size, group), r) in means]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                linestyle="-" if group == "attention" else "--", label=f"{model} n={size} {group}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nominal rank r")
    ax.set_ylabel("effective rank of trained BA / r")
    ax.set_title("Q1: how much of its rank an adapter uses")
    ax.legend(fontsize=7)
    save_figure(fig, PLOTS_DIR / "utilisation.png")
    lines = ["| model | train rows | group | " + " | ".join(f"r={r}" for r in ranks) + " |",
             "|---|---|---|" + "---|" * len(ranks)]
    for model, size, group in series:
        cells = [f"{means[((model, size, group), r)]:.2f}" if ((model, size, group), r) in means else "-" for r in ranks]
        lines.append(f"| {model} | {size} | {group} | " + " | ".join(cells) + " |")
    runs = len({r["run_id"] for r in records if r["config"].get("rank") is not None})
    return f"Mean effective rank of B A / r over the layers of {runs} uniform-rank runs:\n\n" + "\n".join(lines), means


def utilisation_by(records: list[dict], key, label: str, ranks=(1, 4, 16, 64), order=None) -> str:
    """Mean effective rank of B A / r over all layers, per ``key(record)`` (a string, rows sorted
    by ``order`` of it, default alphabetical) and rank."""
    means = utilisation_means(records, lambda record, layer: key(record))
    groups = sorted({k[0] for k in means}, key=order)
    if not groups:
        return "*No runs.*"
    ranks = [r for r in ranks if any((g, r) in means for g in groups)]
    lines = [f"| {label} | " + " | ".join(f"r={r}" for r in ranks) + " |", "|---|" + "---|" * len(ranks)]
    for group in groups:
        cells = [f"{means[(group, r)]:.2f}" if (group, r) in means else "-" for r in ranks]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_groups(records: list[dict]) -> str:
    """Q3 from uniform cells: mean adapter effective rank at the largest rank, attention vs MLP."""
    lines = ["| model | task | train rows | r | attention | mlp | mlp / attention |", "|---|---|---|---|---|---|---|"]
    for cell in uniform_cells(rank_grid(records)):
        need = cell.layer_need()
        if not need or cell.ranks[-1] < 16:
            continue
        by_group = defaultdict(list)
        for name, value in need.items():
            by_group[layer_group(name)].append(value)
        if len(by_group) < 2:
            continue
        attention, mlp = statistics.mean(by_group["attention"]), statistics.mean(by_group["mlp"])
        lines.append(f"| {cell.model} | {cell.task} | {cell.train_size} | {cell.ranks[-1]} | {attention:.1f} | "
                     f"{mlp:.1f} | {mlp / attention:.2f} |")
    return "\n".join(lines) if len(lines) > 2 else "*No cell trained up to r >= 16 yet.*"


LAYER_TYPE_ARMS = ((8, 0), (32, 0), (0, 8), (0, 32), (8, 32), (32, 8), (8, 8), (32, 32))  # (attention r, MLP r)


def _layer_type_arm(config: dict) -> tuple[int, int] | None:
    """The (attention r, MLP r) arm of a run's config (a uniform run gives (r, r)), or None when
    the run is not one of LAYER_TYPE_ARMS (or is EVA-initialised or per-module)."""
    if config.get("eva_rho") is not None or config.get("rank_pattern"):
        return None
    uniform = config.get("rank")
    arm = (uniform, uniform) if uniform is not None else (config.get("attention_rank"), config.get("mlp_rank"))
    return arm if arm in LAYER_TYPE_ARMS else None


def layer_type_arms(records: list[dict], field: str = "eval_loss") -> dict[tuple, dict[tuple[int, int], list[float]]]:
    """Per cell that has layer-type-restricted runs, each (attention r, MLP r) arm's values of
    ``field`` (eval loss, or e.g. trainable_params), one per run.

    Uniform runs of the same cell supply the (r, r) arms. Keys: the cell key (labels.CELL_KEYS)."""
    cells: dict[tuple, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        arm = _layer_type_arm(record["config"])
        if arm is not None and record.get("eval_loss") is not None:
            cells[tuple(record["config"].get(k) for k in CELL_KEYS)][arm].append(record[field])
    return {key: arms for key, arms in cells.items() if any(0 in arm for arm in arms)}


def layer_types(records: list[dict]) -> str:
    """Q3 from the layer-type grid: mean eval loss of each arm, MLP-only minus attention-only in
    seed noises, and each arm's trainable parameters."""
    cells = layer_type_arms(records)
    if not cells:
        return "*No layer-type-restricted runs yet.*"
    header = " | ".join(f"{a}/{m}" for a, m in LAYER_TYPE_ARMS)
    lines = [f"| model | task | train rows | {header} | seed noise | MLP-only - attention-only (seed noises), r 8 / 32 |",
             "|---|---|---|" + "---|" * (len(LAYER_TYPE_ARMS) + 2)]
    for key, arms in cells.items():
        means = {arm: statistics.mean(losses) for arm, losses in arms.items()}
        noise = pooled_seed_noise(arms.values())
        cells_text = " | ".join(f"{means[arm]:.3f}" + ("" if len(arms[arm]) > 1 else "*") if arm in means else "-"
                                for arm in LAYER_TYPE_ARMS)
        gaps = []
        for r in (8, 32):
            if noise and (0, r) in means and (r, 0) in means:
                gaps.append(f"{(means[(0, r)] - means[(r, 0)]) / noise:+.1f}")
            else:
                gaps.append("-")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells_text} | {'-' if noise is None else f'{noise:.3f}'} "
                     f"| {' / '.join(gaps)} |")
    lines.append("\n(* one seed so far; the seed noise pools the arms with two seeds.)\n\nTrainable parameters "
                 "per arm (thousands, the classifier head included):\n")
    for key, arms in layer_type_arms(records, "trainable_params").items():
        lines.append(f"- {key[0]}/{key[1]}: " + ", ".join(f"{a}/{m} {statistics.mean(arms[(a, m)]) / 1000:,.0f}"
                                                          for a, m in LAYER_TYPE_ARMS if (a, m) in arms))
    return "\n".join(lines)


def loss_rise(record: dict) -> float:
    """Largest rise of the logged train loss above its running minimum, in nats (0 for a loss that
    only falls): a spike shows as a large rise, a divergence to inf or nan as inf. The curve is the trainer's
    ``train_loss_curve`` (each point a mean over the steps since the last one)."""
    lowest, rise = math.inf, 0.0
    for _, loss in record.get("train_loss_curve", []):
        if not math.isfinite(loss):
            return math.inf  # diverged
        rise = max(rise, loss - lowest)
        lowest = min(lowest, loss)
    return rise


def alpha_scaling(records: list[dict]) -> str:
    """Q2: per (model, task, train size, rank) trained at several PEFT scalings s, each s's mean
    eval loss and the largest train-loss rise of its runs, the best s, the scalings within one
    seed noise of it, and best s x sqrt(r) (constant across ranks if rsLoRA's rule is the right
    one, proportional to sqrt(r) if alpha / r is); writes ``plots/alpha.png``."""
    rows = best_scaling(records)
    if not rows:
        return "*No alpha-grid results yet.*"
    lines = ["| model | task | train rows | lr | r | scaling s: mean eval loss [largest train-loss rise] | seed noise "
             "| best s | s within noise of the best | best s x sqrt(r) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["model"], r["task"], r["train_size"], r["learning_rate"], r["rank"])):
        arms = ", ".join(
            f"{s:.3g}: {mean:.3f}" + ("" if len(row["losses"][s]) > 1 else "*")
            + f" [{max(map(loss_rise, row['runs'][s])):.2f}]"
            for s, mean in row["scales"].items())
        arms += "".join(f", {s:.3g}: diverged ({n} run{'s' if n > 1 else ''})" for s, n in row["diverged"].items())
        noise = row["seed_noise"]
        within = row["within_noise"]
        lines.append(f"| {row['model']} | {row['task']} | {row['train_size']} | {row['learning_rate']:g} | {row['rank']} | {arms} | "
                     f"{'-' if noise is None else f'{noise:.3f}'} | {row['best_scaling']:.3g} | "
                     f"{', '.join(f'{x:.3g}' for x in within)} | {row['best_scaling'] * math.sqrt(row['rank']):.3g} |")
    _plot_alpha(rows)
    return "\n".join(lines) + "\n\n(* one seed so far; the seed noise pools the scalings with two seeds.)"


def _plot_alpha(rows: list[dict]) -> None:
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    panels = sorted({(r["model"], r["task"], r["train_size"]) for r in rows})
    several_rates = len({r["learning_rate"] for r in rows}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for row in sorted((r for r in rows if (r["model"], r["task"], r["train_size"]) == panel), key=lambda r: r["rank"]):
            scales = list(row["scales"])
            ax.errorbar(scales, list(row["scales"].values()), yerr=row["seed_noise"] or 0.0, marker="o", capsize=2,
                        label=f"r={row['rank']}" + (f", lr {row['learning_rate']:g}" if several_rates else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("PEFT scaling s (multiplies B A)")
        ax.set_title(f"{panel[0]}/{panel[1]} n={panel[2]}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean eval loss (bars: seed noise)")
    fig.suptitle("Q2: eval loss against the LoRA scaling at a fixed learning rate", fontsize=10)
    save_figure(fig, PLOTS_DIR / "alpha.png")


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (scipy, a dependency of scikit-learn); nan when a side is constant."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a constant bootstrap sample; its nan is dropped
        return float(spearmanr(xs, ys).statistic)


EXACT_PERMUTATION_MAX_N = 8  # 8! = 40,320 orderings; above, a seeded sample of them
PERMUTATION_DRAWS = 100_000


def permutation_p_value(xs: list[float], ys: list[float]) -> float:
    """Two-sided p-value of Spearman's rho by permutation (``scipy.stats.permutation_test``): the
    share of the orderings of ``ys`` whose |rho| reaches the observed one (ties included); all n!
    orderings for n <= 8, else 100,000 seeded random ones, counting the observed ordering
    (p = (hits + 1) / (draws + 1)). Unlike a bootstrap over a handful of cells, it says how often
    chance alone separates them this well. nan when a side is constant or holds a nan."""
    import numpy as np
    from scipy.stats import permutation_test, rankdata

    x = rankdata(xs) - (len(xs) + 1) / 2
    y = rankdata(ys) - (len(ys) + 1) / 2
    denominator = math.sqrt((x @ x) * (y @ y))
    if not math.isfinite(denominator) or denominator == 0:
        return float("nan")

    def abs_rho(ordering, axis=-1):  # |Pearson| of ranks = |Spearman|, over the last axis
        return np.abs(np.moveaxis(ordering, axis, -1) @ x) / denominator

    exact = len(xs) <= EXACT_PERMUTATION_MAX_N
    result = permutation_test((y,), abs_rho, permutation_type="pairings", vectorized=True, alternative="greater",
                              n_resamples=np.inf if exact else PERMUTATION_DRAWS, rng=np.random.default_rng(0))
    return float(result.pvalue)


Q4_STATISTICS = {  # name in the table: per-layer probe field, averaged over the layers of a cell
    "signal effective rank": "signal_effective_rank",
    "effective rank": "effective_rank",
    "stable rank": "stable_rank",
    "noise share": "noise_fraction",
}


def _bootstrap_interval(pairs: list[tuple[float, float]], draws: int = 2000) -> tuple[float, float]:
    """95 % percentile interval of Spearman's rho over resampled cells (a constant resample is dropped:
    with 4-10 cells many resamples are, and ``scipy.stats.bootstrap`` would return nan for them all)."""
    generator = random.Random(0)
    boot = []
    for _ in range(draws):
        sample = [pairs[generator.randrange(len(pairs))] for _ in pairs]
        value = spearman([p[0] for p in sample], [p[1] for p in sample])
        if value == value:
            boot.append(value)
    if not boot:  # a constant statistic: no correlation to bound
        return float("nan"), float("nan")
    boot.sort()
    return boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]


def _correlations(model: str, cells: list[tuple[dict, int, str, int]], scope: str) -> list[str]:
    """One line per Q4 statistic: Spearman, bootstrap interval and permutation p over ``cells``."""
    lines = []
    for label in Q4_STATISTICS:
        xs, ys = [means[label] for means, *_ in cells], [optimal for _, optimal, *_ in cells]
        low, high = _bootstrap_interval(list(zip(xs, ys)))
        exact = "exact " if len(cells) <= EXACT_PERMUTATION_MAX_N else ""
        lines.append(f"- {model}, mean {label} at step 0: Spearman {spearman(xs, ys):+.2f} (bootstrap 95% interval "
                     f"{low:+.2f} to {high:+.2f}; {exact}permutation p = {permutation_p_value(xs, ys):.3f}) over "
                     f"{len(cells)} {scope}")
    return lines


def prediction(records: list[dict]) -> str:
    """Q4: Spearman(a step-0 probe statistic, optimal uniform rank) per model, for each statistic,
    and the cells' values behind it. Cells of one task at several training-set sizes are not
    independent draws, so when a model has them the same is also given over one cell per task,
    at each training-set size where four or more tasks have a cell."""
    by_model: dict[str, list[tuple[dict, int, str, int]]] = defaultdict(list)
    table = ["| model | task | train rows | optimal rank | " + " | ".join(f"mean {label}" for label in Q4_STATISTICS) + " |",
             "|---|---|---|---|" + "---|" * len(Q4_STATISTICS)]
    for cell in uniform_cells(rank_grid(records)):
        optimal = cell.optimal_rank
        if optimal is None:
            continue
        layers = cell.probe()["layers"].values()
        means = {label: statistics.mean(s[key] for s in layers) for label, key in Q4_STATISTICS.items()}
        by_model[cell.model].append((means, optimal, cell.task, cell.train_size))
        table.append(f"| {cell.model} | {cell.task} | {cell.train_size} | {optimal} | "
                     + " | ".join(f"{means[label]:.3g}" for label in Q4_STATISTICS) + " |")
    lines = []
    for model, cells in sorted(by_model.items()):
        if len(cells) < 4:
            lines.append(f"- {model}: {len(cells)} labelled cells, too few for a correlation (need 4).")
            continue
        tasks = {task for _, _, task, _ in cells}
        if len(tasks) == len(cells):
            lines += _correlations(model, cells, "cells")
            continue
        lines.append(f"- {model}: {len(cells)} cells from {len(tasks)} tasks. A task's cells at several training-set "
                     f"sizes are not independent draws, so the p-values over all cells are optimistic.")
        lines += _correlations(model, cells, "cells (all sizes)")
        for size in sorted({rows for *_, rows in cells}):
            one_per_task = [c for c in cells if c[3] == size]
            if len(one_per_task) >= 4 and len({c[2] for c in one_per_task}) == len(one_per_task):
                lines += _correlations(model, one_per_task, f"tasks at {size} rows (one cell per task)")
    if not lines:
        return "*No labelled cell yet (a cell needs its ranks trained with two seeds).*"
    return "\n".join(lines) + "\n\nThe cells (means over each cell's step-0 probe layers):\n\n" + "\n".join(table)


def data_size(records: list[dict]) -> str:
    """Does the optimal rank grow with the training set? Per cell of the rank grid that was also
    trained at other training-set sizes (all else equal): each size's optimal rank (the best rank
    in parentheses while a cell is incomplete), seed noise, and the loss gain from r = 1 to the
    best rank in seed noises. The step budget is fixed, so a smaller set is also seen for more
    epochs (encoders: 200 steps x 16 rows = 13 epochs of 250 rows, 0.8 of 4000)."""
    size_at = CELL_KEYS.index("train_size")
    by_setting: dict[tuple, list] = defaultdict(list)
    for cell in uniform_cells(rank_grid(records)):
        by_setting[cell.key[:size_at] + cell.key[size_at + 1:]].append(cell)
    lines = ["| model | task | train rows | ranks trained | optimal rank | seed noise | r=1 minus best (noises) |",
             "|---|---|---|---|---|---|---|"]
    for _, cells in sorted(by_setting.items(), key=lambda item: str(item[0])):
        if len(cells) < 2:
            continue
        for cell in sorted(cells, key=lambda c: c.train_size):
            noise = cell.seed_noise
            gain = (cell.mean_loss(cell.ranks[0]) - cell.mean_loss(cell.best_rank)) / noise if noise and cell.ranks[0] == 1 else None
            optimal = cell.optimal_rank or f"({cell.best_rank}, incomplete)"
            lines.append(f"| {cell.model} | {cell.task} | {cell.train_size} | {len(cell.ranks)} | {optimal} | "
                         f"{'-' if noise is None else f'{noise:.3f}'} | {'-' if gain is None else f'{gain:.1f}'} |")
    return "\n".join(lines) if len(lines) > 2 else "*No task with cells at two training-set sizes yet.*"


SCALE_RULE_KEYS = ("alpha", "alpha_over_r", "use_rslora")


def scale_rule_name(cell) -> str:
    """How a cell scales B A: 'rsLoRA alpha 8', 'alpha/r 2' (alpha = 2r) or 'alpha 16'."""
    alpha, alpha_over_r, rslora = (cell.key[CELL_KEYS.index(k)] for k in SCALE_RULE_KEYS)
    return f"rsLoRA alpha {alpha:g}" if rslora else f"alpha/r {alpha_over_r:g}" if alpha_over_r else f"alpha {alpha:g}"


def scale_rule_ranks(records: list[dict]) -> str:
    """Does the optimal rank depend on how B A is scaled? Cells that differ only in their scale
    rule (the rank grid's rsLoRA alpha 8 against the conventional alpha = 2r arm) and whose ranks
    span 1 to 64: each rule's mean eval loss per rank, optimal rank, and its best loss against
    the other rule's in seed noises pooled over both. Where the two rules give the same scaling s
    at a rank (rsLoRA alpha 8 and alpha = 2r both give s = 2 at r = 16), the runs of a seed are
    the same training twice: their eval losses are listed, a measure of run-to-run nondeterminism."""
    rule_at = [CELL_KEYS.index(k) for k in SCALE_RULE_KEYS]
    by_setting: dict[tuple, list] = defaultdict(list)
    for cell in uniform_cells(records):
        if cell.spans_grid:
            by_setting[tuple(v for i, v in enumerate(cell.key) if i not in rule_at)].append(cell)
    lines = ["| model | task | train rows | scale rule | ranks (mean eval loss) | seed noise | optimal rank "
             "| best loss minus the best rule's (seed noises pooled over the rules' cells) |",
             "|---|---|---|---|---|---|---|---|"]
    repeats: list[str] = []
    for cells in by_setting.values():
        if len(cells) < 2:
            continue
        noise = pooled_seed_noise([losses for cell in cells for losses in cell.losses.values()])
        best_of_all = min(cell.mean_loss(cell.best_rank) for cell in cells)
        for cell in cells:
            losses = ", ".join(f"{r}: {cell.mean_loss(r):.3f}" for r in cell.ranks)
            behind = "-" if not noise else f"{(cell.mean_loss(cell.best_rank) - best_of_all) / noise:.1f}"
            optimal = cell.optimal_rank or f"({cell.best_rank}, incomplete)"
            lines.append(f"| {cell.model} | {cell.task} | {cell.train_size} | {scale_rule_name(cell)} | {losses} | "
                         f"{'-' if cell.seed_noise is None else f'{cell.seed_noise:.3f}'} | {optimal} | {behind} |")
        repeats.extend(_same_training_twice(cells))
    if len(lines) == 2:
        return "*No cell trained from r = 1 to 64 under two scale rules yet.*"
    if repeats:
        lines += ["", "The same training twice (equal scaling s under both rules; eval loss of each run):", *repeats]
    return "\n".join(lines)


def _same_training_twice(cells: list) -> list[str]:
    """Bullets for the runs of ``cells`` (one setting, several scale rules) that share rank, seed
    and PEFT scaling s, so differ only in how s was written down."""
    runs: dict[tuple, list[float]] = defaultdict(list)
    for cell in cells:
        for record in cell.records:
            scaling = round(next(iter(record["lora"]["scaling_by_group"].values())), 6)  # uniform: one s
            runs[(record["config"]["rank"], record["config"]["seed"], scaling)].append(record["eval_loss"])
    cell = cells[0]
    return [f"- {cell.model}/{cell.task} n={cell.train_size} r={rank} seed {seed} (s = {scaling:g}): "
            + " vs ".join(f"{loss:.6f}" for loss in losses) + f" (|difference| {max(losses) - min(losses):.4f})"
            for (rank, seed, scaling), losses in sorted(runs.items()) if len(losses) > 1]


def lr_checks() -> str:
    """The learning-rate checks (``results/*-lr.jsonl``): each run's eval loss at every evaluation."""
    from calibration.records import LR_CHECK_SUFFIX, RESULTS_DIR
    from calibration.records import read_records as read

    lines = ["| model | task | r | lr | base eval loss | eval loss by step |", "|---|---|---|---|---|---|"]
    for record in read(sorted(RESULTS_DIR.glob(f"*{LR_CHECK_SUFFIX}"))):
        curve = ", ".join(f"{step}: {loss:.3f}" for step, loss, *_ in record["eval_curve"])
        lines.append(f"| {record['model']} | {record['task']} | {record['lora']['r']} | {record['learning_rate']:g} "
                     f"| {record['initial_eval_loss']:.3f} | {curve} |")
    return "\n".join(lines) if len(lines) > 2 else "*No learning-rate check yet.*"


def cells_summary(records: list[dict]) -> str:
    cells = uniform_cells(records)
    if not cells:
        return "*No cell with three or more ranks yet.*"
    lines = ["| model | task | train rows | scale rule | ranks (mean eval loss) | seed noise | optimal rank |",
             "|---|---|---|---|---|---|---|"]
    for cell in cells:
        losses = ", ".join(f"{r}: {cell.mean_loss(r):.3f}" for r in cell.ranks)
        noise = cell.seed_noise
        lines.append(f"| {cell.model} | {cell.task} | {cell.train_size} | {scale_rule_name(cell)} | {losses} | "
                     f"{'-' if noise is None else f'{noise:.3f}'} | {cell.optimal_rank or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.findings", __doc__, [
        "python -m calibration.findings > /tmp/findings.md   # and calibration/plots/*.png",
    ])
    parser.parse_args(argv)
    from calibration.records import sweep_records

    records = sweep_records()
    print(f"## Findings from {len(records)} sweep runs (rank, alpha and layer-type grids)\n")
    print("### Trainings\n")
    print(training_runs())
    print("\n### Cells\n")
    print(cells_summary(records))
    print("\n### Learning-rate checks\n")
    print(lr_checks())
    print("\n### Q1 utilisation\n")
    grid = rank_grid(records)
    print(utilisation(grid)[0])
    print("\nBy task (1000 training rows):\n")
    print(utilisation_by([r for r in grid if r["train_size"] == 1000], lambda r: f"{r['model']}/{r['task']}", "task"))
    scaled_tasks = {(r["model"], r["task"]) for r in records if r not in grid and r["config"].get("rank") is not None}
    print("\nBy PEFT scaling s (the tasks of the alpha grid, 1000 rows, every scale rule):\n")
    print(utilisation_by([r for r in records if (r["model"], r["task"]) in scaled_tasks and r["train_size"] == 1000
                          and r["config"].get("rank") in (2, 8, 32)],
                         lambda r: f"{r['task']} s={r['lora']['scaling_by_group']['attention']:.3g}", "task, scaling",
                         ranks=(2, 8, 32), order=lambda g: (g.split(" s=")[0], float(g.split(" s=")[1]))))
    from calibration.records import LR_CHECK_SUFFIX, RESULTS_DIR
    from calibration.records import read_records as read

    lr_paths = sorted(RESULTS_DIR.glob(f"*{LR_CHECK_SUFFIX}"))  # the same files as lr_checks()
    if lr_paths:
        print("\nBy learning rate (the LR checks: MiniLM brown-genre, 400 steps; SmolLM2 wordnet-defs, 200 "
              "steps; 1000 rows):\n")
        print(utilisation_by(read(lr_paths), lambda r: f"{r['model']}/{r['task']} lr={r['learning_rate']:g}",
                             "model/task, learning rate", ranks=(1, 8, 64),
                             order=lambda g: (g.split(" lr=")[0], float(g.split(" lr=")[1]))))
    print("\n### Q2 alpha\n")
    print(alpha_scaling(records))
    print("\nThe optimal rank under each scale rule (cells trained from r = 1 to 64 under two rules):\n")
    print(scale_rule_ranks(records))
    print("\n### Q3 layer types\n")
    print("Mean effective rank of the trained B A at each cell's largest rank (seeds averaged):\n")
    print(layer_groups(records))
    print("\nThe layer-type grid: mean eval loss per attention r / MLP r arm (uniform runs give r/r):\n")
    print(layer_types(records))
    print("\n### Q1 data size: the optimal rank at each training-set size\n")
    print(data_size(records))
    print("\n### Q4 prediction\n")
    print(prediction(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
