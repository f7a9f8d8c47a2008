"""What the sweeps say a task needed: the labels the regression learns, defined once, here.

A *cell* is one (model, task, train size, learning rate, steps, batch, max length, scale rule)
trained at several uniform ranks, each with one or more seeds. The scale rule is rsLoRA with
a fixed alpha, or a fixed alpha / r (see ``calibration/sweep.py``).

- **Seed noise** of a cell: the pooled standard deviation of eval loss between seeds,
  sqrt(mean over ranks with >= 2 seeds of the sample variance). A cell gives a label only when
  its ranks span 1 to 64 and every one of them was trained with at least two seeds.
- **Optimal uniform rank**: the smallest rank whose mean eval loss is within one seed-noise
  of the best rank's mean eval loss ("within the seed-to-seed noise of the best").
- **Per-layer need**: from the adapters of the cell's largest rank, each layer's entropy
  effective rank of the trained B A (mean over seeds): how many directions the layer uses
  when it is given room. ``relative_need`` divides by the cell's mean over layers.
- **Loss curve**: per rank, log(mean eval loss / the best rank's mean eval loss) (0 at the
  best rank), so curves of tasks with different loss levels share one scale; only for cells
  whose ranks span 1 to 64 (the best rank is then inside the range tried).
- **Best over learning rates** (the capacity grids, alpha / r with a fixed alpha): a cell is then
  keyed without its learning rate, and each rank takes the rate with its lowest mean eval loss
  (among the rates trained with the most seeds for that rank); the rank's seed losses, records
  and seed noise are those of that rate. A cell whose optimal rank is its largest is
  ``censored``: the need may lie beyond the ranks tried.
- **Best alpha**: among uniform-rank runs of one (model, task, train size, rank, learning rate,
  steps, batch, length, data) that differ only in how B A is scaled, the PEFT scaling s (what
  multiplies B A: alpha / r, or alpha / sqrt(r) with rsLoRA; the two rules are pooled, since s
  is all that reaches the forward pass) with the lowest mean eval loss. ``within_noise``: the
  scalings whose mean is within one pooled seed noise of the best.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

SCALE_GROUP_KEYS = ("model", "task", "train_size", "rank", "learning_rate", "steps", "batch_size", "max_length",
                    "data_seed", "eval_rows")
RANK_GRID_RULE = {"use_rslora": True, "alpha": 8.0, "alpha_over_r": None}  # the rank grids' scale rule
CELL_KEYS = ("model", "task", "train_size", "learning_rate", "steps", "batch_size", "max_length",
             "alpha", "alpha_over_r", "use_rslora", "data_seed", "eval_rows", "top_blocks")
LR_FREE_CELL_KEYS = tuple(k for k in CELL_KEYS if k != "learning_rate")  # cells whose ranks take their best rate
# the capacity grids' ranks, over which a capacity cell is labelled (the scaling grid shares their r = 1 and 64
# runs; its r = 8 runs, one seed each, would keep a cell from ever being complete)
CAPACITY_RANKS = (1, 4, 16, 64, 256)


@dataclass
class Cell:
    """One cell of uniform-rank runs and its labels."""

    key: tuple
    losses: dict[int, list[float]]  # rank -> eval loss of each seed
    records: list[dict] = field(default_factory=list)
    best_lr: dict[int, float] = field(default_factory=dict)  # rank -> its best learning rate (best-over-LR cells)
    rates: dict[int, list[float]] = field(default_factory=dict)  # rank -> the learning rates it was trained at

    @property
    def model(self) -> str:
        return self.key[0]

    @property
    def task(self) -> str:
        return self.key[1]

    @property
    def train_size(self) -> int:
        return self.key[2]

    @property
    def ranks(self) -> list[int]:
        return sorted(self.losses)

    def mean_loss(self, rank: int) -> float:
        values = self.losses[rank]
        return sum(values) / len(values)

    @property
    def seed_noise(self) -> float | None:
        return pooled_seed_noise(self.losses.values())

    @property
    def best_rank(self) -> int:
        return min(self.ranks, key=self.mean_loss)

    @property
    def complete(self) -> bool:
        """Every rank of the cell trained with at least two seeds, and the ranks span 1 to 64 (a
        cell still being swept, say up to r = 8, would otherwise get a label from its small ranks)."""
        return self.spans_grid and all(len(values) >= 2 for values in self.losses.values())

    @property
    def spans_grid(self) -> bool:
        """The cell's ranks run from 1 to at least 64, so its best rank lies inside what was tried."""
        return self.ranks[0] == 1 and self.ranks[-1] >= 64

    @property
    def optimal_rank(self) -> int | None:
        """Smallest rank within one seed-noise of the best mean eval loss (None: an incomplete cell)."""
        noise = self.seed_noise
        if noise is None or not self.complete:
            return None
        best = self.mean_loss(self.best_rank)
        return min(r for r in self.ranks if self.mean_loss(r) <= best + noise)

    @property
    def censored(self) -> bool:
        """The optimal rank is the largest rank tried: the need may lie beyond the grid."""
        return self.optimal_rank is not None and self.optimal_rank == self.ranks[-1]

    def lr_at_edge(self, rank: int) -> bool:
        """The rank's best learning rate is the lowest or highest of several it was trained at."""
        rates = self.rates.get(rank, [])
        return len(rates) > 1 and self.best_lr.get(rank) in (rates[0], rates[-1])

    def layer_need(self) -> dict[str, float]:
        """Per layer: mean effective rank of the trained B A at the cell's largest rank."""
        top = self.ranks[-1]
        sums: dict[str, list[float]] = defaultdict(list)
        for record in self.records:
            if record["lora"]["r"] == top:
                for layer in record["adapter_layers"]:
                    sums[layer["name"]].append(layer["effective_rank_BA"])
        return {name: sum(v) / len(v) for name, v in sums.items()}

    def relative_need(self) -> dict[str, float]:
        need = self.layer_need()
        if not need:
            return {}
        mean = sum(need.values()) / len(need)
        return {name: value / mean for name, value in need.items()}

    def log_loss_over_best(self) -> dict[int, float] | None:
        """Per rank: log(mean eval loss / the best rank's); None unless the ranks span 1 to 64."""
        if not self.spans_grid:
            return None
        best = self.mean_loss(self.best_rank)
        return {rank: math.log(self.mean_loss(rank) / best) for rank in self.ranks}

    def probe(self) -> dict:
        """The step-0 probe shared by the cell's runs (same rows, so the same for every record)."""
        return self.records[0]["probe"]


def _finite_loss(record: dict) -> bool:
    loss = record.get("eval_loss")
    return loss is not None and math.isfinite(loss)


def pooled_seed_noise(loss_groups: Iterable[list[float]]) -> float | None:
    """Seed noise: sqrt(mean sample variance) over the groups (ranks, arms) trained with >= 2
    seeds, each group one configuration's eval losses; None when no group has two."""
    variances = [statistics.variance(losses) for losses in loss_groups if len(losses) >= 2]
    return math.sqrt(statistics.mean(variances)) if variances else None


def rank_grid(records: list[dict]) -> list[dict]:
    """The runs trained under the rank grids' scale rule (RANK_GRID_RULE: rsLoRA, alpha 8), so that
    the alpha grid's other scalings do not mix into the rank labels and questions."""
    return [r for r in records if all(r["config"].get(k) == v for k, v in RANK_GRID_RULE.items())]


def uniform_cells(records: list[dict], min_ranks: int = 3) -> list[Cell]:
    """Group uniform-rank records into cells with at least ``min_ranks`` ranks, in first-seen order."""
    cells: dict[tuple, Cell] = {}
    for record in records:
        config = record.get("config", {})
        if config.get("rank") is None or config.get("eva_rho") is not None or not _finite_loss(record):
            continue  # per-type, per-module or EVA-initialised runs are not uniform-rank runs
        key = tuple(config.get(k) for k in CELL_KEYS)
        cell = cells.setdefault(key, Cell(key=key, losses=defaultdict(list)))
        cell.losses[config["rank"]].append(record["eval_loss"])
        cell.records.append(record)
    return [cell for cell in cells.values() if len(cell.losses) >= min_ranks]


def best_over_lr_cells(records: list[dict], min_ranks: int = 3) -> list[Cell]:
    """Uniform-rank cells keyed without the learning rate, each rank at its best rate.

    A rank's best rate has the lowest mean eval loss among the rates trained with the most seeds
    for that rank (so that a rate still waiting for its second seed does not win on one lucky
    run); ``Cell.losses`` and ``Cell.records`` hold that rate's runs, ``Cell.best_lr`` the rate and
    ``Cell.rates`` every rate the rank was trained at. Cells in first-seen order.
    """
    groups: dict[tuple, dict[int, dict[float, list[dict]]]] = {}
    for record in records:
        config = record.get("config", {})
        if config.get("rank") is None or config.get("eva_rho") is not None or not _finite_loss(record):
            continue
        key = tuple(config.get(k) for k in LR_FREE_CELL_KEYS)
        by_rate = groups.setdefault(key, defaultdict(lambda: defaultdict(list)))[config["rank"]]
        by_rate[config["learning_rate"]].append(record)
    cells = []
    for key, by_rank in groups.items():
        if len(by_rank) < min_ranks:
            continue
        cell = Cell(key=key, losses=defaultdict(list))
        for rank, by_rate in sorted(by_rank.items()):
            most = max(map(len, by_rate.values()))
            mean = {rate: statistics.mean(r["eval_loss"] for r in runs) for rate, runs in by_rate.items()
                    if len(runs) == most}
            best = min(mean, key=mean.get)
            cell.best_lr[rank], cell.rates[rank] = best, sorted(by_rate)
            cell.losses[rank] = [r["eval_loss"] for r in by_rate[best]]
            cell.records += by_rate[best]
        cells.append(cell)
    return cells


def best_scaling(records: list[dict]) -> list[dict]:
    """Per (model, task, train size, rank, learning rate, ...) trained at >= 2 scalings: the best one.

    Returns rows {model, task, train_size, rank, learning_rate, runs: {scaling: [record per
    seed]}, losses: {scaling: [eval loss per seed]}, scales: {scaling: mean loss}, seed_noise (None
    without two seeds anywhere), best_scaling, within_noise: [scalings within one seed noise of
    the best], diverged: {scaling: runs whose eval loss is not finite (left out of the rest)},
    quantized, probe: the step-0 probe of the group's data}, scalings ascending. A scaling that
    both rules give (rsLoRA alpha 2 and alpha / r = 1 at r = 4) counts each seed once: it is the
    same training.
    """
    groups: dict[tuple, dict[float, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    diverged: dict[tuple, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    probes: dict[tuple, tuple[bool, dict]] = {}
    for record in records:
        config = record.get("config", {})
        if config.get("rank") is None or config.get("eva_rho") is not None:
            continue
        key = tuple(config.get(k) for k in SCALE_GROUP_KEYS)
        scaling = round(record["lora"]["scaling_by_group"]["attention"], 6)
        if not _finite_loss(record):
            diverged[key][scaling] += 1
            continue
        groups[key][scaling].setdefault(config.get("seed"), record)
        if record.get("probe") and key not in probes:
            probes[key] = (bool(config.get("quantized", False)), record["probe"])
    rows = []
    for key, by_scale in groups.items():
        if len(by_scale) + len(diverged[key]) < 2:
            continue
        runs = {s: list(seeds.values()) for s, seeds in sorted(by_scale.items())}
        losses = {s: [record["eval_loss"] for record in seed_runs] for s, seed_runs in runs.items()}
        means = {s: statistics.mean(v) for s, v in losses.items()}
        best = min(means, key=means.get)
        noise = pooled_seed_noise(losses.values())
        quantized, probe = probes.get(key, (False, None))
        rows.append({
            "model": key[0], "task": key[1], "train_size": key[2], "rank": key[3], "learning_rate": key[4],
            "runs": runs, "losses": losses, "scales": means, "seed_noise": noise, "best_scaling": best,
            "within_noise": [s for s, m in means.items() if m <= means[best] + (noise or 0.0)],
            "diverged": dict(diverged[key]), "quantized": quantized, "probe": probe,
        })
    return rows
