"""The resumable LoRA sweep runner: named grids of real training runs, one JSON line per run.

Usage (from the repository root, ``HF_HUB_OFFLINE=1``, one thread per process)::

    python -m calibration.sweep --list
    python -m calibration.sweep --grid encoder-rank [mpnet-rank ...] [--results FILE] [--limit N] [--shard K/N] [--dry-run]
    python -m calibration.sweep --rerun RUN_ID      # reruns a stored run, prints its new record
    python -m calibration.sweep --config JSON       # runs one RunConfig, prints its record

``--grid`` runs each named grid's configs in their fixed order and appends one record
(:func:`calibration.train.train_run`) per line to ``calibration/results/<grid>.jsonl``. The
file is append-only and the runner is resumable: run_ids already in the file are skipped, a
last line cut short by a kill is removed first, and every record is written by one
``write`` + ``flush`` + ``fsync`` under an exclusive ``fcntl`` lock that also re-checks the
run_id, so neither a kill at any moment nor two processes on the same file leave a corrupt or
duplicate line. ``--shard K/N`` runs only the configs whose position i (0-based) has
i % N == K: on this 2-core machine start ``--shard 0/2`` and ``--shard 1/2`` side by side
(each process uses one thread). ``--rerun`` and ``--config`` print to stdout and touch no
results file. A progress line per run goes to stderr.

The grids (counts from ``--list``; hours from :data:`SECONDS_PER_STEP`, one process)
========================================================================================

Shared settings. Encoders (MiniLM, MPNet): batch 16, ``max_length`` 64, 256 eval rows (all of
them when the split has fewer), warm-up 10 % of the steps, eval at the midpoint and the end.
SmolLM2: batch 8, ``max_length`` 128, 64 eval rows. ``seed`` 0 and 1 vary the head and LoRA
initialisation, dropout and data order over the same training rows (``data_seed`` 0), so the
step-0 probe, which is the regression's input, is the same for both seeds of a cell.

Rank and step size are confounded (``shared/DESIGN.md``): with alpha = 2r the update starts
larger at higher r, so higher ranks can win by moving faster. The rank grids therefore use
rsLoRA (scaling alpha / sqrt(r), which keeps the update's size independent of r under Adam)
with one alpha per model, and a conventional alpha = 2r arm on a subset to measure the
confound itself (it left the optimal rank unchanged on both of its cells and broke r = 64 on
one: calibration/README.md, "Does the scale rule move the optimal rank?").

- ``encoder-rank``: MiniLM on bbc-news, spam, health-tweets, debian-section, brown-genre;
  uniform r in 1, 2, 4, 8, 16, 32, 64; rsLoRA, alpha = ENCODER_ALPHA; train sizes 250,
  1000, 4000 (a size above the task's train split becomes the whole split: bbc-news 1905);
  seeds 0, 1. Plus the alpha = 2r arm (no rsLoRA) on bbc-news and health-tweets at 1000 rows.
- ``encoder-layer-type``: the five tasks at 1000 rows, seeds 0, 1: attention only (r 8, 32),
  MLP only (r 8, 32), and mixed (attention 8 / MLP 32, attention 32 / MLP 8), rsLoRA. The
  uniform r = 8 and 32 baselines are the identical configs (same run_id) of ``encoder-rank``.
- ``encoder-alpha``: bbc-news, health-tweets, brown-genre at 1000 rows, seeds 0, 1, r in
  2, 8, 32: alpha / r in 0.5, 1, 2, 4 at the fixed learning rate, and rsLoRA with alpha
  ENCODER_ALPHA / 4 and 4 * ENCODER_ALPHA (ENCODER_ALPHA itself is in ``encoder-rank``).
- ``smollm2-rank``: SmolLM2 on stdlib-code, wordnet-defs, shakespeare, debian-summary, brown-lm
  at 1000 rows, r in 1, 4, 16, 64, rsLoRA alpha = SMOLLM2_ALPHA, seeds 0, 1 (the last two
  tasks were added once the first three were under way: a per-model correlation needs four
  labelled cells, and leave-one-task-out needs more than two). Then stdlib-code at 4000 rows:
  SmolLM2's first cell at a second training-set size, on the embedded data's domain, so
  the causal-LM calibration spans 1000-4000 rows (the embedded data has 5,383); seed-major,
  so that shards 0/2 and 1/2 finish every rank's seed 0 first. Then brown-lm at 4000 rows
  (the same order): a second task at two sizes, one whose optimal rank at 1000
  rows (4) leaves room to grow, with the smallest seed noise of the five. Then wordnet-defs
  at 4000 rows (the same order): the task whose 1000-row curve is flattest and
  turns up at r = 64 (optimal rank 1), the sharpest test of whether more data makes rank pay.
  Then debian-summary at 4000 rows (the same order): the shortest of the two
  tasks still at one size (about 21 minutes a run), with the largest seed noise at 1000 rows.
  Then shakespeare at 4000 rows (the same order): the last SmolLM2 task at one
  size, so every causal-LM task is at both sizes.
- ``mpnet-rank``: MPNet (same encoder settings as MiniLM) on bbc-news, health-tweets,
  debian-section at 1000 rows, r in 1, 4, 16, 64, rsLoRA alpha = ENCODER_ALPHA, seeds 0, 1.
- ``smollm2-scaling``: the parametrization experiment. Under Adam a rank-r adapter's early
  useful update grows like r * scaling, so the scaling rule decides whether one learning
  rate serves every rank. SmolLM2 with only its top 4 blocks adapted, on health-source
  (completions of about 3 tokens) and wordnet-defs (about 12), r in 1, 8, 64, learning
  rates 3e-4, 1e-3, 3e-3, under alpha = 32 with PEFT's alpha / r and under rsLoRA alpha = 8
  (the two agree at r = 16), one epoch over 1000 rows, 256 eval rows, seed 0.
- ``smollm2-capacity``: labels that measure capacity, under the parametrization the scaling
  grid chose (alpha = 32 with alpha / r, best over learning rates 3e-4, 1e-3, 3e-3, 1e-2):
  SmolLM2's top 4 blocks, r 1-256, nine tasks whose loss tokens span about 2k to 480k (three
  of them classifications answered in one or two tokens), 1000 and 4000 rows, one epoch, two
  seeds, and in each cell PEFT's EVA at r = 16's budget (756 runs; on this CPU, with the frozen prefix
  stored and ``--threads 2``, a shakespeare run at 1000 rows takes about 6 minutes).
- ``gemma3-capacity``: the same runs on a second causal-LM family, Gemma 3 270M (a
  pretrained base model, where SmolLM2 is instruction-tuned): the same tasks, ranks, rates,
  sizes, seeds and settings (:func:`capacity_grid`). Its output layer (262,144 x 640, tied to
  the embedding: 63 % of its 268M weights) makes it slower than SmolLM2 on this CPU: one
  thread takes about 16 s a step at 8 x 128 tokens (SmolLM2 10-11 s) and 6-7 minutes to
  evaluate 256 rows of 128 tokens, so it is a GPU grid too.
- ``encoder-lr`` and ``smollm2-lr``: the learning-rate / budget checks below, kept as grids
  so their evidence is reproducible.

Learning rate and step budget (the checks, ``encoder-lr`` / ``smollm2-lr``)
===========================================================================

See the LR-CHECK notes below the grid definitions (filled in from the check's results).
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from calibration import read_results, script_parser  # noqa: E402
from calibration.labels import CAPACITY_RANKS  # noqa: E402
from calibration.records import RESULTS_DIR  # noqa: E402
from calibration.train import RunConfig  # noqa: E402  (after the thread settings)

# --------------------------------------------------------------------------- shared settings
ENCODER_TASKS = ("bbc-news", "spam", "health-tweets", "debian-section", "brown-genre")
SMOLLM2_TASKS = ("stdlib-code", "wordnet-defs", "shakespeare", "debian-summary", "brown-lm")
MPNET_TASKS = ("bbc-news", "health-tweets", "debian-section")
ENCODER_RANKS = (1, 2, 4, 8, 16, 32, 64)
ENCODER_TRAIN_SIZES = (250, 1000, 4000)
# cells in this order, every task at one size before the next size, so that complete cells
# (all ranks, both seeds; shard 0/2 runs seed 0, shard 1/2 seed 1) span the tasks early
ENCODER_SIZE_ORDER = (1000, 250, 4000)
SEEDS = (0, 1)

ENCODER_LR = 1e-3
ENCODER_STEPS = 200
ENCODER_ALPHA = 8.0  # rsLoRA: scaling 8 / sqrt(r) (= 2 at r = 16, the usual alpha = 2r there)
ENCODER_COMMON = {"batch_size": 16, "max_length": 64, "eval_rows": 256}

SMOLLM2_LR = 5e-4
SMOLLM2_STEPS = 150
SMOLLM2_ALPHA = 8.0
SMOLLM2_COMMON = {"batch_size": 8, "max_length": 128, "eval_rows": 64}

# seconds per optimizer step measured in the grids' own runs on this machine (records'
# seconds_per_step): one thread per process, two sweeps side by side
# (gemma3, not yet from its grid: short runs of gemma3-capacity configs on shakespeare, 8 x 128
# tokens, 15.5-16.5 s a step on a core of its own, 23 s sharing two cores with two sweeps; 24 s to
# evaluate 16 rows, so 390 s for the grid's 256)
SECONDS_PER_STEP = {"minilm": 1.1, "mpnet": 4.8, "smollm2": 12.0, "gemma3": 16.0}
EVAL_SECONDS = {"minilm": 6.0, "mpnet": 33.0, "smollm2": 12.0, "gemma3": 390.0}  # one evaluation
LOAD_SECONDS = {"minilm": 3.0, "mpnet": 3.0, "smollm2": 3.0, "gemma3": 8.0}


# train rows of a task's split (calibration/TASKS.md) where that is below a grid's train size:
# the grid then trains on the whole split (a literal, so grids need no data to be listed)
TRAIN_SPLIT_ROWS = {"bbc-news": 1905}


def _encoder(task: str, train_size: int, seed: int, *, model: str = "minilm", lr: float = ENCODER_LR,
             steps: int = ENCODER_STEPS, eval_every: int | None = None, **lora) -> RunConfig:
    size = min(train_size, TRAIN_SPLIT_ROWS.get(task, train_size))
    return RunConfig(
        model=model, task=task, train_size=size, learning_rate=lr, steps=steps,
        warmup_steps=max(1, steps // 10), eval_every=steps // 2 if eval_every is None else eval_every,
        seed=seed, **ENCODER_COMMON, **lora,
    )


def _smollm2(task: str, train_size: int, seed: int, *, lr: float = SMOLLM2_LR, steps: int = SMOLLM2_STEPS,
             eval_every: int | None = None, **lora) -> RunConfig:
    return RunConfig(
        model="smollm2", task=task, train_size=train_size, learning_rate=lr, steps=steps,
        warmup_steps=max(1, steps // 10), eval_every=steps // 2 if eval_every is None else eval_every,
        seed=seed, **SMOLLM2_COMMON, **lora,
    )


def _rslora(rank: int, alpha: float) -> dict:
    return {"rank": rank, "alpha": alpha, "use_rslora": True}


# --------------------------------------------------------------------------- the grids
def grid_encoder_rank() -> list[RunConfig]:
    configs = [
        _encoder(task, size, seed, **_rslora(rank, ENCODER_ALPHA))
        for size in ENCODER_SIZE_ORDER
        for task in ENCODER_TASKS
        for rank in ENCODER_RANKS
        for seed in SEEDS
    ]
    configs += [
        _encoder(task, 1000, seed, rank=rank, alpha_over_r=2.0)
        for task in ("bbc-news", "health-tweets")
        for rank in ENCODER_RANKS
        for seed in SEEDS
    ]
    return _unique(configs)


def grid_encoder_layer_type() -> list[RunConfig]:
    pairs = ((8, 0), (32, 0), (0, 8), (0, 32), (8, 32), (32, 8))
    return _unique([
        _encoder(task, 1000, seed, attention_rank=a, mlp_rank=m, alpha=ENCODER_ALPHA, use_rslora=True)
        for task in ENCODER_TASKS
        for a, m in pairs
        for seed in SEEDS
    ])


def grid_encoder_alpha() -> list[RunConfig]:
    configs = []
    for task in ("bbc-news", "health-tweets", "brown-genre"):
        for rank in (2, 8, 32):
            for seed in SEEDS:
                configs += [_encoder(task, 1000, seed, rank=rank, alpha_over_r=ratio) for ratio in (0.5, 1.0, 2.0, 4.0)]
                configs += [_encoder(task, 1000, seed, **_rslora(rank, a)) for a in (ENCODER_ALPHA / 4, ENCODER_ALPHA * 4)]
    return _unique(configs)


def grid_smollm2_rank() -> list[RunConfig]:
    ranks = (1, 4, 16, 64)
    at_1000 = [_smollm2(task, 1000, seed, **_rslora(rank, SMOLLM2_ALPHA))
               for task in SMOLLM2_TASKS for rank in ranks for seed in SEEDS]
    at_4000 = [_smollm2(task, 4000, seed, **_rslora(rank, SMOLLM2_ALPHA))
               for task in ("stdlib-code", "brown-lm", "wordnet-defs", "debian-summary",
                             "shakespeare")
               for seed in SEEDS for rank in ranks]
    return _unique(at_1000 + at_4000)


def grid_mpnet_rank() -> list[RunConfig]:
    """MPNet (the third model) on three encoder tasks at 1000 rows: r in 1, 4, 16, 64, rsLoRA."""
    return _unique([
        _encoder(task, 1000, seed, model="mpnet", **_rslora(rank, ENCODER_ALPHA))
        for task in MPNET_TASKS
        for rank in (1, 4, 16, 64)
        for seed in SEEDS
    ])


def grid_encoder_lr() -> list[RunConfig]:
    """The encoder LR / budget check: brown-genre, 1000 rows, long runs with an eval every 50 steps."""
    return _unique([
        _encoder("brown-genre", 1000, 0, lr=lr, steps=400, eval_every=50, **_rslora(rank, ENCODER_ALPHA))
        for rank, lr in ((8, 3e-4), (8, 1e-3), (8, 3e-3), (1, 1e-3), (64, 1e-3))
    ])


def grid_smollm2_lr() -> list[RunConfig]:
    """The SmolLM2 LR / budget check: wordnet-defs, 1000 rows, an eval every 50 steps."""
    return _unique([
        _smollm2("wordnet-defs", 1000, 0, lr=lr, steps=200, eval_every=50, **_rslora(8, SMOLLM2_ALPHA))
        for lr in (2e-4, 5e-4, 1e-3)
    ])


SCALING_TASKS = ("health-source", "wordnet-defs")
SCALING_RANKS = (1, 8, 64)
SCALING_LRS = (1e-3, 3e-4, 3e-3)  # the middle first, so an interrupted grid still brackets it
SCALING_TRAIN_SIZE = 1000
SCALING_EPOCHS = 1
SCALING_TOP_BLOCKS = 4
# the two parametrizations give the same scaling (2) at r = 16: 32 / 16 = 8 / sqrt(16)
SCALING_ARMS = {"alpha/r": {"alpha": 32.0, "use_rslora": False}, "rslora": {"alpha": 8.0, "use_rslora": True}}


def epoch_steps(train_size: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``train_size`` rows (a last partial batch is dropped)."""
    return epochs * max(1, train_size // batch_size)


def grid_smollm2_scaling() -> list[RunConfig]:
    """Which parametrization keeps the best learning rate rank-invariant: SmolLM2, the top
    ``SCALING_TOP_BLOCKS`` blocks adapted, r in 1, 8, 64 x three learning rates x (alpha = 32
    with PEFT's alpha / r, rsLoRA alpha = 8), one epoch over 1000 rows, 256 eval rows, seed 0."""
    steps = epoch_steps(SCALING_TRAIN_SIZE, SMOLLM2_COMMON["batch_size"], SCALING_EPOCHS)
    return _unique([
        RunConfig(model="smollm2", task=task, train_size=SCALING_TRAIN_SIZE, learning_rate=lr, steps=steps,
                  warmup_steps=max(1, steps // 10), eval_every=0, seed=0, batch_size=SMOLLM2_COMMON["batch_size"],
                  max_length=SMOLLM2_COMMON["max_length"], eval_rows=256, rank=rank,
                  top_blocks=SCALING_TOP_BLOCKS, **arm)
        for task in SCALING_TASKS
        for lr in SCALING_LRS
        for arm in SCALING_ARMS.values()
        for rank in SCALING_RANKS
    ])


CAPACITY_TASKS = ("spam-verdict", "passage-genre", "package-section", "health-source", "wordnet-defs", "debian-summary",
                  "stdlib-code", "shakespeare", "brown-lm")
CAPACITY_SIZES = (1000, 4000)
CAPACITY_LRS = (*SCALING_LRS, 1e-2)  # 1e-2: on shakespeare r = 64 was best at 3e-3, the scaling grid's edge
# the users' EVA baseline in each capacity cell: PEFT's EVA redistributing uniform r = 16's budget (rho 2, its
# default), at the rate every rank did best at or near (1e-3), same alpha / r and seeds
CAPACITY_EVA = {"rank": 16, "eva_rho": 2.0, "learning_rate": 1e-3}


def capacity_settings(model: str, size: int) -> dict:
    """What every run of a capacity cell of causal LM ``model`` at ``size`` rows shares: one epoch,
    SmolLM2's batch and length, 256 eval rows, the top ``SCALING_TOP_BLOCKS`` blocks adapted under
    alpha = 32 with alpha / r; task, seed, rank and rate are each run's own."""
    steps = epoch_steps(size, SMOLLM2_COMMON["batch_size"], 1)
    return dict(model=model, train_size=size, steps=steps, warmup_steps=max(1, steps // 10), eval_every=0,
                batch_size=SMOLLM2_COMMON["batch_size"], max_length=SMOLLM2_COMMON["max_length"],
                eval_rows=256, top_blocks=SCALING_TOP_BLOCKS, **SCALING_ARMS["alpha/r"])


def capacity_grid(model: str) -> list[RunConfig]:
    """The capacity grid of causal LM ``model``: its top ``SCALING_TOP_BLOCKS`` blocks adapted with
    alpha = 32 and PEFT's alpha / r, r in ``CAPACITY_RANKS`` x ``CAPACITY_LRS``, one epoch over
    ``CAPACITY_SIZES`` rows of ``CAPACITY_TASKS``, SmolLM2's batch and length, 256 eval rows, seeds
    0 and 1. Cells in order of cost (size, then task); within a cell the middle learning rate
    first, for every rank and both seeds: the scaling grid found it best at every rank, so an
    interrupted cell already has a capacity curve with its seed noise, and the edge rates then
    check that it stayed best. Last in each cell, EVA at uniform r = 16's budget (``CAPACITY_EVA``),
    both seeds."""
    configs = []
    for size in CAPACITY_SIZES:
        common = capacity_settings(model, size)
        for task in CAPACITY_TASKS:
            for lr in CAPACITY_LRS:
                for seed in SEEDS:
                    for rank in CAPACITY_RANKS:
                        configs.append(RunConfig(task=task, learning_rate=lr, seed=seed, rank=rank, **common))
            configs += [RunConfig(task=task, seed=seed, **CAPACITY_EVA, **common) for seed in SEEDS]
    return _unique(configs)


def grid_smollm2_capacity() -> list[RunConfig]:
    """Labels that measure capacity: the winner of ``smollm2-scaling`` (alpha = 32 with PEFT's
    alpha / r; a rank's loss is its best over ``CAPACITY_LRS``), SmolLM2 with its top 4 blocks
    adapted (r = 1 holds 40,704 parameters, r = 256 about 10.4M); :func:`capacity_grid`."""
    return capacity_grid("smollm2")


def grid_gemma3_capacity() -> list[RunConfig]:
    """``smollm2-capacity`` on a second causal-LM family: Gemma 3 270M (base) with its top 4 blocks
    adapted (r = 1 holds 52,736 parameters, r = 256 about 13.5M); :func:`capacity_grid`."""
    return capacity_grid("gemma3")


def grid_eva_step_control() -> list[RunConfig]:
    """Is EVA's gain a step size? EVA's A has orthonormal rows where PEFT's default init draws rows of
    norm about 1/sqrt(3), so under Adam the same steps of B move B A about sqrt(3) times as far:
    uniform r = 16 with the default init at sqrt(3) x 1e-3 on the capacity cells where EVA at 1e-3
    beat every uniform rank (stdlib-code, wordnet-defs; SmolLM2, 1000 rows, both seeds), otherwise as
    :func:`capacity_settings`. Kept out of the capacity cells (its own results file): a rate off their grid."""
    return _unique([
        RunConfig(task=task, learning_rate=round(3**0.5 * 1e-3, 6), seed=seed, rank=16,
                  **capacity_settings("smollm2", 1000))
        for task in ("stdlib-code", "wordnet-defs") for seed in SEEDS
    ])


# the uniform rank the shipped tokens rule (4 adapter parameters per loss token, each cell's top-4
# parameters per rank, the next power of two within the advice's bounds 2-64) gives each capacity
# cell, as of 2026-12-05: (model, task, rows) -> rank; brown-lm and shakespeare (r = 16) are left
# out, their cells train EVA at r = 16's budget already
ADVISED_RANKS = {("smollm2", "spam-verdict", 1000): 2, ("smollm2", "passage-genre", 1000): 2,
                 ("smollm2", "package-section", 1000): 2, ("smollm2", "health-source", 1000): 2,
                 ("smollm2", "wordnet-defs", 1000): 2, ("smollm2", "stdlib-code", 1000): 8,
                 ("gemma3", "spam-verdict", 1000): 2, ("gemma3", "package-section", 1000): 2,
                 ("gemma3", "passage-genre", 1000): 2, ("gemma3", "health-source", 1000): 2,
                 ("smollm2", "package-section", 4000): 2}


def grid_eva_advised_budget() -> list[RunConfig]:
    """Would EVA help on top of the advised level? In each capacity cell, PEFT's EVA redistributing
    the advised uniform rank's budget (``ADVISED_RANKS``; rho 2, as ``CAPACITY_EVA``) and that
    uniform rank itself (the capacity cells train 1, 4, 16, ...), both at 1e-3 (where r = 1 and 4
    did best in every cell) and both seeds, otherwise as :func:`capacity_settings`; SmolLM2's
    cells first, cheapest first. Kept out of the capacity cells (its own results file): their EVA
    row stays at r = 16's budget."""
    configs = []
    for (model, task, size), rank in ADVISED_RANKS.items():
        common = {**capacity_settings(model, size), "task": task, "rank": rank, "learning_rate": CAPACITY_EVA["learning_rate"]}
        configs += [RunConfig(seed=seed, eva_rho=CAPACITY_EVA["eva_rho"], **common) for seed in SEEDS]
        configs += [RunConfig(seed=seed, **common) for seed in SEEDS]
    return _unique(configs)


TRANSFER_RANKS = (1, 4, 16, 64)
TRANSFER_LRS = (1e-3, 3e-3, 3e-4)  # the top-4 cell's best rates (1e-3 at r = 1, 3e-3 above), then 3e-4 below them


def grid_smollm2_transfer() -> list[RunConfig]:
    """Does a capacity cell's need carry over from its top 4 blocks to every block? The advice's level
    spends adapter parameters per loss token fitted on top-4-block cells; on a user's all-block adapter
    that gives a rank about 7.5 times smaller (SmolLM2's r = 1 holds 40,704 parameters on its top 4
    blocks, 305,280 on all 30). Two cells at 1000 rows with every block adapted, r in ``TRANSFER_RANKS``,
    otherwise as :func:`capacity_settings`: shakespeare (whose r = 1 fell 21 seed noises behind its
    best), ``TRANSFER_LRS`` x ``SEEDS`` (seed 0 of every run first); then brown-lm (19.5 noises), at
    1e-3, where every shakespeare rank did best with every block adapted, both seeds first, then the
    other rates. Kept out of the capacity cells (its own results file): not the cells' protocol."""
    common = {**capacity_settings("smollm2", 1000), "top_blocks": None}
    return _unique([
        *(RunConfig(task="shakespeare", learning_rate=lr, seed=seed, rank=rank, **common)
          for seed in SEEDS for lr in TRANSFER_LRS for rank in TRANSFER_RANKS),
        *(RunConfig(task="brown-lm", learning_rate=lr, seed=seed, rank=rank, **common)
          for lr in TRANSFER_LRS for seed in SEEDS for rank in TRANSFER_RANKS),
    ])


GRIDS: dict[str, Callable[[], list[RunConfig]]] = {
    "encoder-rank": grid_encoder_rank,
    "encoder-layer-type": grid_encoder_layer_type,
    "encoder-alpha": grid_encoder_alpha,
    "smollm2-rank": grid_smollm2_rank,
    "mpnet-rank": grid_mpnet_rank,
    "encoder-lr": grid_encoder_lr,
    "smollm2-lr": grid_smollm2_lr,
    "smollm2-scaling": grid_smollm2_scaling,
    "smollm2-capacity": grid_smollm2_capacity,
    "gemma3-capacity": grid_gemma3_capacity,
    "eva-step-control": grid_eva_step_control,
    "smollm2-transfer": grid_smollm2_transfer,
    "eva-advised-budget": grid_eva_advised_budget,
}


def _unique(configs: Iterable[RunConfig]) -> list[RunConfig]:
    seen, unique = set(), []
    for config in configs:
        if config.run_id not in seen:
            seen.add(config.run_id)
            unique.append(config)
    return unique


def estimated_seconds(config: RunConfig) -> float:
    """Rough wall time of one run on one thread of this machine (training + evaluations + loading)."""
    evaluations = 1 + (0 if not config.eval_every else (config.steps - 1) // config.eval_every)
    return (LOAD_SECONDS[config.model] + config.steps * SECONDS_PER_STEP[config.model]
            + evaluations * EVAL_SECONDS[config.model])


# --------------------------------------------------------------------------- the results file
class ResultsFile:
    """An append-only JSONL file of run records, safe against kills and concurrent writers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _Lock(self.path)

    def repair(self) -> int:
        """Cut a last line that has no newline (a write killed midway); returns the bytes removed."""
        with self._locked() as f:
            return _cut_partial_tail(f)

    def records(self) -> list[dict]:
        """Every complete record (a last line without its newline is not a record yet)."""
        return read_results(self.path)

    def run_ids(self) -> set[str]:
        return {record["run_id"] for record in self.records()}

    def append(self, record: dict) -> bool:
        """Append ``record`` as one line unless its run_id is already there; True when written."""
        line = (json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")
        with self._locked() as f:
            _cut_partial_tail(f)
            if record["run_id"] in self.run_ids():
                return False
            f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return True


class _Lock:
    """The results file opened for appending, under an exclusive ``fcntl.flock``."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a+b")
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        return self.file

    def __exit__(self, *exc):
        try:
            self.file.flush()
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        finally:
            self.file.close()


def _cut_partial_tail(f) -> int:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    f.seek(max(0, size - 1))
    if f.read(1) == b"\n":
        return 0
    # find the last newline; everything after it is a record cut short
    block, position = 1 << 16, size
    keep = 0
    while position > 0:
        start = max(0, position - block)
        f.seek(start)
        chunk = f.read(position - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            keep = start + index + 1
            break
        position = start
    os.ftruncate(f.fileno(), keep)
    f.flush()
    os.fsync(f.fileno())
    return size - keep


# --------------------------------------------------------------------------- running
def shard_plan(configs: list[RunConfig], done: set[str], shard: tuple[int, int]):
    """(this shard's (position, config) pairs, those of them whose run_id is not in ``done``);
    shard (k, n) keeps the positions i with i % n == k."""
    k, n = shard
    mine = [(i, config) for i, config in enumerate(configs) if i % n == k]
    return mine, [(i, config) for i, config in mine if config.run_id not in done]


def run_grid(
    configs: list[RunConfig],
    results: ResultsFile,
    *,
    run: Callable[[RunConfig], dict] | None = None,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    done_elsewhere: frozenset[str] = frozenset(),
    log: Callable[[str], None] | None = None,
    threads: int = 1,
) -> dict:
    """Run the configs not yet in ``results`` nor in ``done_elsewhere`` (run_ids another grid's
    file holds: grids share some configs), in order, appending each record as it finishes.

    ``run`` defaults to :func:`calibration.train.train_run` on ``threads`` CPU threads; ``limit`` caps the new runs;
    ``shard`` (k, n) keeps the configs at positions i with i % n == k. Returns counts.
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if run is None:
        from calibration.train import train_run

        def run(config: RunConfig) -> dict:
            return train_run(config, log=lambda message: say(f"    {config.run_id} {message}"), threads=threads)
    cut = results.repair()
    if cut:
        say(f"{results.path}: removed a last line cut short ({cut} bytes)")
    mine, todo = shard_plan(configs, results.run_ids() | done_elsewhere, shard)
    say(f"{results.path.name}: {len(configs)} runs in the grid, {len(mine)} in this shard, "
        f"{len(mine) - len(todo)} already done, {len(todo)} to run" + (f" (limit {limit})" if limit is not None else ""))
    counts = {"ran": 0, "skipped": len(mine) - len(todo), "duplicates": 0}
    for i, config in todo:
        if limit is not None and counts["ran"] >= limit:
            break
        if config.run_id in results.run_ids():  # another process on the same file ran it meanwhile
            say(f"[{i + 1}/{len(configs)}] {config.run_id} skipped: another process wrote it meanwhile")
            counts["skipped"] += 1
            continue
        started = time.perf_counter()
        record = run(config)
        gc.collect()  # the run's model and optimizer, before the next one is loaded
        if record.get("run_id") != config.run_id:
            raise ValueError(f"the run function returned run_id {record.get('run_id')!r} for {config.run_id}")
        written = results.append(record)
        counts["ran"] += 1
        counts["duplicates"] += not written
        accuracy = record.get("eval_accuracy")
        say(
            f"[{i + 1}/{len(configs)}] {config.run_id} {config.summary()}: eval_loss {record.get('eval_loss')}"
            + (f" acc {accuracy}" if accuracy is not None else "")
            + f" ({time.perf_counter() - started:.0f} s)" + ("" if written else " [already written by another process]")
        )
    return counts


def find_config(run_id: str, paths: Iterable[Path]) -> RunConfig:
    """The config of ``run_id`` from the first results file that has it."""
    for path in paths:
        for record in ResultsFile(path).records():
            if record.get("run_id") == run_id:
                config = RunConfig.from_dict(record["config"])
                if config.run_id != run_id:
                    raise ValueError(f"{path}: record {run_id} holds a config whose run_id is {config.run_id}")
                return config
    raise ValueError(f"run {run_id!r} is in no results file ({', '.join(str(p) for p in paths) or 'none found'})")


def recorded_elsewhere(results: ResultsFile) -> frozenset[str]:
    """The run_ids of the other sweep and experiment results files: runs that another grid already
    trained with the same config (``smollm2-capacity`` shares its seed-0 r = 1 and 64 runs on
    health-source and wordnet-defs with ``smollm2-scaling``; a label reads both files)."""
    from calibration.records import experiment_result_files, sweep_result_files

    paths = [*sweep_result_files(), *experiment_result_files()]
    return frozenset().union(*(ResultsFile(path).run_ids() for path in paths
                               if path.exists() and path.resolve() != results.path.resolve()))


def _print_plan(configs: list[RunConfig], results: ResultsFile, shard: tuple[int, int], limit: int | None) -> None:
    """``--dry-run``: every run of this shard with its status, and the hours left."""
    mine, todo = shard_plan(configs, results.run_ids() | recorded_elsewhere(results), shard)
    waiting = {config.run_id for _, config in todo}
    for i, config in mine:
        status = "todo" if config.run_id in waiting else "done"
        print(f"[{i + 1}/{len(configs)}] {config.run_id} {status} {config.summary()}")
    left = [config for _, config in todo][:limit] if limit is not None else [config for _, config in todo]
    hours = sum(map(estimated_seconds, left)) / 3600
    print(f"{results.path.name}: {len(mine)} runs in this shard, {len(mine) - len(todo)} done, "
          f"{len(todo)} to run, ~{hours:.1f} h")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 0/2; got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= K < N")
    return k, n


def _quiet_libraries() -> None:
    import logging
    import warnings

    # bitsandbytes (imported by peft) warns on import that an optional hub-downloaded CPU kernel is missing
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.sweep", __doc__, [
        "python -m calibration.sweep --list",
        "python -m calibration.sweep --grid encoder-rank --dry-run",
        "python -m calibration.sweep --grid smollm2-rank --shard 0/2   # and --shard 1/2 beside it",
        "python -m calibration.sweep --grid encoder-rank --task health-tweets --train-size 250 4000",
        "python -m calibration.sweep --grid smollm2-capacity --task brown-lm --train-size 1000 --rank 1 4 16 64 "
        "--learning-rate 0.001",
        "python -m calibration.sweep --grid smollm2-capacity --run-id 91a563a3eb2f 6bd4b8587ace  # in this order",
        "python -m calibration.sweep --rerun 313b4c0206a9              # prints a new record, stores nothing",
    ])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--grid", nargs="+", choices=sorted(GRIDS), metavar="GRID",
                        help=f"run named grids, one after the other ({', '.join(GRIDS)})")
    action.add_argument("--rerun", metavar="RUN_ID", help="rerun a stored run and print its new record")
    action.add_argument("--config", metavar="JSON", help="run one RunConfig given as JSON and print its record")
    action.add_argument("--list", action="store_true", help="list the grids with run counts and estimated hours")
    parser.add_argument("--results", type=Path, help="results file (default calibration/results/<grid>.jsonl)")
    parser.add_argument("--limit", type=int, help="run at most this many new runs")
    parser.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="K/N", help="run positions i with i %% N == K")
    parser.add_argument("--task", nargs="+", metavar="TASK", help="only the grid's runs on these tasks")
    parser.add_argument("--train-size", nargs="+", type=int, metavar="ROWS",
                        help="only the grid's runs at these sizes (shards split what the filters keep: give two "
                             "processes the same filters and --shard 0/2, 1/2, or disjoint filters)")
    parser.add_argument("--rank", nargs="+", type=int, metavar="R",
                        help="only the grid's runs at these uniform ranks (e.g. a capacity grid's small ranks first)")
    parser.add_argument("--learning-rate", nargs="+", type=float, metavar="LR",
                        help="only the grid's runs at these learning rates")
    parser.add_argument("--run-id", nargs="+", metavar="RUN_ID",
                        help="only these runs of the grid, in the order given (--dry-run lists their ids)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (default 1; on 2 cores one process at 2 threads and two at 1 "
                             "side by side train about as fast: bench/calibration_speed.py)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their status, train nothing")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    import torch

    torch.set_num_threads(1)
    _quiet_libraries()

    if args.list:
        for name, build in GRIDS.items():
            configs = build()
            hours = sum(map(estimated_seconds, configs)) / 3600
            results = ResultsFile(RESULTS_DIR / f"{name}.jsonl")
            done = len((results.run_ids() | recorded_elsewhere(results)) & {c.run_id for c in configs})
            print(f"{name:20s} {len(configs):4d} runs  {done:4d} done  ~{hours:5.1f} h on one thread")
        return 0

    if args.grid:
        if args.results and len(args.grid) > 1:
            parser.error("--results takes one grid")
        for name in args.grid:
            configs = GRIDS[name]()
            filters = (("--task", args.task, "task"), ("--train-size", args.train_size, "train_size"),
                       ("--rank", args.rank, "rank"), ("--learning-rate", args.learning_rate, "learning_rate"))
            for option, values, field in filters:
                in_grid = {getattr(c, field) for c in configs} - {None}  # per-type runs have no uniform rank
                unknown = sorted(set(values or ()) - in_grid)
                if unknown:
                    parser.error(f"{option} {' '.join(map(str, unknown))}: not in grid {name} "
                                 f"({', '.join(map(str, sorted(in_grid)))})")
            configs = [c for c in configs if all(not values or getattr(c, field) in values for _, values, field in filters)]
            if args.run_id:
                by_id = {c.run_id: c for c in configs}
                unknown = [run_id for run_id in args.run_id if run_id not in by_id]
                if unknown:
                    parser.error(f"--run-id {' '.join(unknown)}: not among grid {name}'s runs that the filters keep")
                configs = [by_id[run_id] for run_id in args.run_id]
            results = ResultsFile(args.results or RESULTS_DIR / f"{name}.jsonl")
            if args.dry_run:
                _print_plan(configs, results, args.shard, args.limit)
            else:
                run_grid(configs, results, limit=args.limit, shard=args.shard,
                         done_elsewhere=recorded_elsewhere(results), threads=args.threads)
        return 0

    from calibration.train import train_run

    if args.rerun:
        paths = [args.results] if args.results else sorted(RESULTS_DIR.glob("*.jsonl"))
        try:
            config = find_config(args.rerun, paths)
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
    else:
        try:
            config = RunConfig.from_json(args.config)
        except (ValueError, TypeError) as error:
            parser.exit(2, f"error: bad --config: {error}\n")
    print(f"{config.run_id} {config.summary()}", file=sys.stderr, flush=True)
    record = train_run(config, log=lambda message: print(message, file=sys.stderr, flush=True), threads=args.threads)
    print(json.dumps(record, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
