"""Does the advice pay off? Advised ranks against uniform ranks, EVA and hand-made allocations.

    python -m calibration.validate [--model minilm] [--task bbc-news ...] [--seeds 0 1] [--arms ...] [--dry-run]
    python -m calibration.validate --model smollm2 --task debian-summary
    python -m calibration.validate --table          # markdown table + calibration/plots/validate.png

Per validation task (1,000 training rows, the model's rank-grid protocol of
:mod:`calibration.sweep`: for MiniLM ``encoder-rank``, rsLoRA alpha 8, learning rate 1e-3, 200
steps, batch 16; for SmolLM2 ``smollm2-rank``, rsLoRA alpha 8, learning rate 5e-4, 150 steps,
batch 8):

1. the calibration is refitted from the sweep results of the model's kind (sequence
   classifiers or causal LMs, as ``calibration.fit`` ships them) **without the task** (leave one
   task out: the advice never saw it), with :func:`calibration.fit.fit`;
2. the task's training rows are probed as every sweep run's step-0 probe is
   (:func:`calibration.train.probe_training_rows`), and :func:`advisor.recommend.advice_from_probe`
   turns the probe into per-layer ranks (``alpha_mode="rslora"``, ranks 1-64; MiniLM: no
   budget, the advice sets it; SmolLM2: the budget of uniform r = 16, chosen when the causal-LM
   calibration gave the per-layer shape only, not the rank level);
3. these arms are trained per seed with :func:`calibration.train.train_run`:

   - ``advised``: the calibrated advice's ranks (a ``rank_pattern``);
   - ``uncalibrated``: the uncalibrated rule's ranks (the tool's default without a calibration);
   - ``uniform-4`` ... ``uniform-32``: the rank grid's own configs (its records in
     calibration/results/GRID.jsonl are reused; a missing one is trained into that file);
   - ``eva``: PEFT's EVA (rho 2) from the uniform rank whose cost is nearest the advised budget;
   - ``linear-decay``: ranks falling linearly with depth (block d of L gets weight L - d);
   - ``attention-heavy``: attention layers at twice the rank of MLP layers;

   the two hand-made allocations are scaled to the advised budget (integer ranks >= 1, the
   largest scale that fits; see :func:`scaled_ranks`). Where two arms come out with the same
   ranks (a budget near rank 1 everywhere) they are one run, listed under the first arm.
   SmolLM2 (about 30 min a run here) runs ``advised``, ``uncalibrated`` and ``uniform-16``.

Records go to calibration/results/validate.jsonl (append-only, resumable like the sweeps), each
with a ``validation`` field: the model, the arm, the advised budget, the held-out calibration's
summary and the command that reproduces the whole comparison. Budgets count adapter weights
only, r * (in + out) per layer; the seq-cls head (trained in every arm) is left out.

The issue's goal, checked by ``--table``: the advised config reaches the best uniform rank's
eval loss within 1 % with at most 60 % of its parameters, and beats EVA at equal budget; at a
fixed budget (SmolLM2), the advised config against the uniform rank of that budget.
"""

from __future__ import annotations

import os
import statistics
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from calibration import script_parser  # noqa: E402
from calibration.labels import pooled_seed_noise  # noqa: E402
from calibration.records import VALIDATION_FILE  # noqa: E402
from calibration.sweep import (  # noqa: E402
    ENCODER_ALPHA,
    ENCODER_TASKS,
    RESULTS_DIR,
    SMOLLM2_ALPHA,
    SMOLLM2_TASKS,
    ResultsFile,
    _encoder,
    _rslora,
    _smollm2,
)
from calibration.train import RunConfig  # noqa: E402

PLOT = Path(__file__).resolve().parent / "plots" / "validate.png"
TRAIN_SIZE = 1000
UNIFORM_RANKS = (4, 8, 16, 32)  # the uniform arms of the comparison (the goal's "best uniform rank")
GRID_RANKS = (1, 2, 4, 8, 16, 32, 64)  # the table also shows the grid's other ranks, for context
ARMS = ("advised", "uncalibrated", *(f"uniform-{r}" for r in UNIFORM_RANKS), "eva", "linear-decay", "attention-heavy")
TABLE_ROWS = ("advised", "uncalibrated", *(f"uniform-{r}" for r in GRID_RANKS), "eva", "linear-decay", "attention-heavy")
EVA_RHO = 2.0
EARLIER_FIT = "StandardScaler + Ridge(alpha=1.0)"  # the validation records written before "fit" was kept
GOAL_LOSS = 1.01  # advised eval loss at most 1 % above the best uniform rank's
GOAL_PARAMS = 0.60  # with at most 60 % of its adapter parameters


@dataclass(frozen=True)
class Protocol:
    """How one model's advice is validated: the rank grid whose settings and runs it shares."""

    model: str
    title: str  # as the table names it
    tasks: tuple[str, ...]
    config: Callable[..., RunConfig]  # (task, train_size, seed, **lora): the grid's run settings
    alpha: float  # rsLoRA alpha of the grid
    grid: str  # the rank grid's results file in RESULTS_DIR, without .jsonl
    probe_task: str  # the kind of calibration fitted for it (calibration.fit --probe-task)
    budget_rank: int | None  # None: the advice sets the budget; N: every arm gets what uniform rank N costs
    arms: tuple[str, ...]  # the default arms


PROTOCOLS = {
    "minilm": Protocol("minilm", "MiniLM", ENCODER_TASKS, _encoder, ENCODER_ALPHA, "encoder-rank", "seq-cls", None, ARMS),
    "smollm2": Protocol("smollm2", "SmolLM2", SMOLLM2_TASKS, _smollm2, SMOLLM2_ALPHA, "smollm2-rank", "causal-lm",
                        16, ("advised", "uncalibrated", "uniform-16")),
}


def uniform_config(protocol: Protocol, task: str, seed: int, rank: int) -> RunConfig:
    """The rank grid's uniform-rank run of ``task`` (the same run_id as the grid's)."""
    return protocol.config(task, TRAIN_SIZE, seed, **_rslora(rank, protocol.alpha))


# --------------------------------------------------------------------------- allocations
def scaled_ranks(weights: dict[str, float], shapes: dict[str, tuple[int, int]], budget: int) -> dict[str, int]:
    """Integer ranks >= 1 proportional to ``weights``: max(1, round(c * weight)) with the largest c
    whose cost sum(r * (in + out)) stays within ``budget`` (all ones when even that is over it)."""
    def ranks_at(scale):
        return {n: max(1, round(scale * w)) for n, w in weights.items()}

    def cost(ranks):
        return sum(r * sum(shapes[n]) for n, r in ranks.items())

    low, high = 0.0, 1.0
    while cost(ranks_at(high)) <= budget and high < 1e6:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if cost(ranks_at(middle)) <= budget:
            low = middle
        else:
            high = middle
    return ranks_at(low)


def linear_decay_weights(depths: dict[str, int]) -> dict[str, float]:
    """Block d of L blocks gets weight L - d: the first block L times the last one's."""
    blocks = max(depths.values()) + 1
    return {name: float(blocks - depth) for name, depth in depths.items()}


def attention_heavy_weights(names: list[str]) -> dict[str, float]:
    from advisor.calibrated import layer_group

    return {name: 2.0 if layer_group(name) == "attention" else 1.0 for name in names}


def adapter_params(ranks: dict[str, int], shapes: dict[str, tuple[int, int]]) -> int:
    return sum(r * sum(shapes[n]) for n, r in ranks.items())


# --------------------------------------------------------------------------- the advice per task
def held_out_calibration(task: str, records: list[dict], kind: str = "seq-cls"):
    """A :class:`advisor.calibrated.Calibration` fitted as the shipped one for models of ``kind``
    (seq-cls or causal-lm: that kind's sweep records only) is, without ``task``'s records."""
    from advisor.calibrated import Calibration
    from calibration.fit import fit
    from calibration.records import probe_task

    kept = [r for r in records if r.get("task") != task and probe_task(r["model"]) == kind]
    models, metadata = fit(kept)
    return Calibration(name=f"fit without {task}", metadata=metadata, models=models)


def comparison_plan(protocol: Protocol, task: str, seeds, arms,
                    records: list[dict]) -> list[tuple[str, RunConfig, dict]]:
    """(arm, config, validation info) for every arm and seed of ``task``, seed by seed."""
    from advisor.allocation import uniform_params
    from advisor.recommend import advice_from_probe
    from calibration.train import probe_training_rows

    base = uniform_config(protocol, task, 0, 1)
    result = probe_training_rows(base)
    calibration = held_out_calibration(task, records, protocol.probe_task)
    options = {"train_size": base.train_size, "alpha_mode": "rslora", "min_rank": 1, "max_rank": 64,
               "budget": None if protocol.budget_rank is None else f"r={protocol.budget_rank}"}
    advised = advice_from_probe(result, calibration=calibration, **options).ranks
    uncalibrated = advice_from_probe(result, calibration=None, **options).ranks
    shapes = {name: stats.shape for name, stats in result.layers.items()}
    depths = {name: stats.depth for name, stats in result.layers.items()}
    budget = adapter_params(advised, shapes)
    eva_rank = max(1, round(budget / uniform_params(1, shapes)))
    patterns = {
        "advised": advised,
        "uncalibrated": uncalibrated,
        "linear-decay": scaled_ranks(linear_decay_weights(depths), shapes, budget),
        "attention-heavy": scaled_ranks(attention_heavy_weights(list(shapes)), shapes, budget),
    }
    cv = calibration.metadata["cv"]
    info = {
        "model": protocol.model, "task": task, "budget": budget, "budget_rank": protocol.budget_rank,
        "fit": calibration.metadata["model"],
        "calibration": {"name": calibration.name, "cells": calibration.metadata["cells"],
                        "tasks": calibration.metadata["tasks"],
                        "cell_loto_mae": (cv.get("cell_leave_one_task_out") or {}).get("model_mae")},
        "command": f"python -m calibration.validate --model {protocol.model} --task {task}",
    }
    plan = []
    for seed in seeds:
        for arm in arms:
            if arm in patterns:
                config = protocol.config(task, TRAIN_SIZE, seed, rank_pattern=patterns[arm], alpha=protocol.alpha,
                                         use_rslora=True)
            elif arm == "eva":
                config = protocol.config(task, TRAIN_SIZE, seed, eva_rho=EVA_RHO, **_rslora(eva_rank, protocol.alpha))
            else:
                config = uniform_config(protocol, task, seed, int(arm.split("-")[1]))
            params = adapter_params(config.module_ranks(list(shapes)), shapes) if arm != "eva" else None
            plan.append((arm, config, {**info, "arm": arm, "adapter_params": params}))
    return plan


# --------------------------------------------------------------------------- running
def run(protocol: Protocol, tasks, seeds, arms, *, dry_run: bool = False, log=None) -> None:
    from calibration.records import read_records, sweep_result_files
    from calibration.train import train_run

    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    records = read_records(sweep_result_files())
    results, uniform = ResultsFile(RESULTS_DIR / VALIDATION_FILE), ResultsFile(RESULTS_DIR / f"{protocol.grid}.jsonl")
    results.repair()
    for task in tasks:
        plan = comparison_plan(protocol, task, seeds, arms, records)
        say(f"{task}: advised budget {plan[0][2]['budget']:,} adapter parameters")
        for arm, config, info in plan:
            target = uniform if arm.startswith("uniform-") else results
            if config.run_id in target.run_ids():
                twin = next((a for a, c, _ in plan if c.run_id == config.run_id and a != arm), None)
                say(f"  {arm} seed {config.seed}: done ({config.run_id}"
                    + (f", the same ranks as {twin})" if twin else ")"))
                continue
            say(f"  {arm} seed {config.seed}: {'would train' if dry_run else 'training'} {config.summary()}")
            if dry_run:
                continue
            record = train_run(config, log=lambda message: say(f"    {message}"))
            if target is results:
                record["validation"] = info
            target.append(record)
            say(f"  {arm} seed {config.seed}: eval_loss {record['eval_loss']} acc {record.get('eval_accuracy')}")


# --------------------------------------------------------------------------- the table
def _adapter_params_of(record: dict) -> int:
    shapes = {name: layer["shape"] for name, layer in record["probe"]["layers"].items()}
    return adapter_params({layer["name"]: layer["r"] for layer in record["adapter_layers"]}, shapes)


@dataclass
class Comparison:
    """One validation comparison: per arm, mean eval loss and accuracy over seeds, adapter
    parameters, seeds; ``budget_rank``: the uniform rank whose budget every arm shares (None:
    the advice set the budget)."""

    arms: dict[str, dict]
    budget_rank: int | None = None


def summary(tasks=None) -> dict[str, Comparison]:
    """The comparisons by label: a task under the current fit ("task (Model, 1000 rows)"), or
    under an earlier regression ("task, fit: ... (...)": its advice, hence its budget, differ);
    a fixed-budget comparison adds "budget of uniform r=N"."""
    from calibration.regression import MODEL_DESCRIPTION

    table: dict[str, dict[str, list]] = {}
    source: dict[str, tuple[Protocol, str, int | None]] = {}
    for record in ResultsFile(RESULTS_DIR / VALIDATION_FILE).records():
        info = record["validation"]
        if tasks and info["task"] not in tasks:
            continue
        protocol = PROTOCOLS[info.get("model", "minilm")]
        fit = info.get("fit", EARLIER_FIT)
        budget_rank = info.get("budget_rank")
        label = info["task"] if fit == MODEL_DESCRIPTION else f"{info['task']}, fit: {fit}"
        label += f" ({protocol.title}, {TRAIN_SIZE} rows" + (f", budget of uniform r={budget_rank})" if budget_rank else ")")
        source[label] = protocol, info["task"], budget_rank
        table.setdefault(label, {}).setdefault(info["arm"], []).append(record)
    uniform_by_id = {}
    for grid in {protocol.grid for protocol, _, _ in source.values()}:
        uniform_by_id.update({r["run_id"]: r for r in ResultsFile(RESULTS_DIR / f"{grid}.jsonl").records()})
    for label, arms in table.items():
        protocol, task, _ = source[label]
        for rank in GRID_RANKS:
            found = [uniform_by_id[c.run_id] for c in (uniform_config(protocol, task, s, rank) for s in (0, 1))
                     if c.run_id in uniform_by_id]
            if found:
                arms[f"uniform-{rank}"] = found
    out = {}
    for label, arms in table.items():
        out[label] = Comparison({}, source[label][2])
        for arm in TABLE_ROWS:
            runs = arms.get(arm)
            if not runs:
                continue
            losses = [r["eval_loss"] for r in runs]
            accuracies = [r["eval_accuracy"] for r in runs if r.get("eval_accuracy") is not None]
            out[label].arms[arm] = {
                "eval_loss": statistics.mean(losses), "spread": (max(losses) - min(losses)) / 2,
                "eval_accuracy": statistics.mean(accuracies) if accuracies else None,
                "adapter_params": statistics.mean(_adapter_params_of(r) for r in runs),
                "base_params": runs[0]["total_params"] - runs[0]["trainable_params"], "seeds": len(runs),
                "losses": losses, "by_seed": {r["config"]["seed"]: r["eval_loss"] for r in runs},
                "allocations": {r["config"]["seed"]: Counter(layer["r"] for layer in r["adapter_layers"]) for r in runs},
            }
    return out


def goal_check(arms: dict[str, dict], budget_rank: int | None = None) -> list[str]:
    """Plain statements of whether the task meets the issue's goal (only with every needed arm);
    ``budget_rank`` N: the arms share uniform rank N's budget and are compared with it."""
    lines = []
    uniform = {f"uniform-{r}": arms[f"uniform-{r}"] for r in UNIFORM_RANKS if f"uniform-{r}" in arms}
    noise = pooled_seed_noise(v["losses"] for v in uniform.values())
    advised = arms.get("advised")

    def in_noise(difference: float) -> str:
        return f" = {difference / noise:+.1f} seed noises" if noise else ""

    same_budget = f"uniform-{budget_rank}"
    if budget_rank and advised and same_budget not in arms:
        lines.append(f"{same_budget}, the arm of the same budget, is not run yet")
    elif budget_rank and advised:
        for arm in ("advised", "uncalibrated"):
            if arm in arms:
                difference = arms[arm]["eval_loss"] - arms[same_budget]["eval_loss"]
                lines.append(f"{arm} vs {same_budget} at the same budget: loss {arms[arm]['eval_loss']:.4f} vs "
                             f"{arms[same_budget]['eval_loss']:.4f} ({difference:+.4f}{in_noise(difference)}), "
                             f"parameters x{arms[arm]['adapter_params'] / arms[same_budget]['adapter_params']:.2f}"
                             + _paired(arms[arm], arms[same_budget], in_noise))
    elif advised and uniform and not budget_rank:
        best_arm = min(uniform, key=lambda a: uniform[a]["eval_loss"])
        best = uniform[best_arm]
        loss_ratio = advised["eval_loss"] / best["eval_loss"]
        params_ratio = advised["adapter_params"] / best["adapter_params"]
        met = loss_ratio <= GOAL_LOSS and params_ratio <= GOAL_PARAMS
        lines.append(f"advised vs best uniform r in 4-32 ({best_arm}): loss x{loss_ratio:.3f} "
                     f"({advised['eval_loss'] - best['eval_loss']:+.4f}{in_noise(advised['eval_loss'] - best['eval_loss'])}), "
                     f"parameters x{params_ratio:.2f}: goal (<= x{GOAL_LOSS}, <= x{GOAL_PARAMS}) {'met' if met else 'NOT met'}")
    if advised and "eva" in arms:
        difference = advised["eval_loss"] - arms["eva"]["eval_loss"]
        lines.append(f"advised vs EVA at the same budget: loss {advised['eval_loss']:.4f} vs {arms['eva']['eval_loss']:.4f} "
                     f"({difference:+.4f}{in_noise(difference)}; {'advised lower' if difference < 0 else 'EVA lower or equal'})")
    if noise:
        lines.append(f"seed noise (pooled standard deviation of the uniform arms' two seeds): {noise:.4f}")
    return lines


def _paired(arm: dict, reference: dict, in_noise) -> str:
    """When the two arms ran different seeds: their comparison on the seeds both ran (a mean over
    other seeds mixes the seed-to-seed noise into the difference); else nothing."""
    common = sorted(set(arm["by_seed"]) & set(reference["by_seed"]))
    if not common or set(arm["by_seed"]) == set(reference["by_seed"]):
        return ""
    mine, theirs = (statistics.mean(runs["by_seed"][seed] for seed in common) for runs in (arm, reference))
    return (f"; on the seeds both ran ({', '.join(map(str, common))}): {mine:.4f} vs {theirs:.4f} "
            f"({mine - theirs:+.4f}{in_noise(mine - theirs)})")


def print_table(table: dict) -> None:
    for label, comparison in table.items():
        arms = comparison.arms
        print(f"\n#### {label}\n")
        print("| arm | adapter params | % of base | eval loss (mean ± half-range) | accuracy | seeds |")
        print("|---|---|---|---|---|---|")
        for arm, v in arms.items():
            accuracy = "-" if v["eval_accuracy"] is None else f"{v['eval_accuracy']:.3f}"
            print(f"| {arm} | {v['adapter_params']:,.0f} | {100 * v['adapter_params'] / v['base_params']:.2f}% | "
                  f"{v['eval_loss']:.4f} ± {v['spread']:.4f} | {accuracy} | {v['seeds']} |")
        for line in goal_check(arms, comparison.budget_rank):
            print(f"\n- {line}")
        for arm, v in arms.items():
            if not arm.startswith("uniform-"):
                print(f"\n- {arm}: {allocation_text(v['allocations'])}")


def rank_counts(layers_by_rank: Counter) -> str:
    """How an arm's ranks are spread over its layers, most common first: "195 layers at rank 16, 12 at 8"."""
    counts = layers_by_rank.most_common()
    return ", ".join(f"{n} layers at rank {r}" if i == 0 else f"{n} at {r}" for i, (r, n) in enumerate(counts))


def allocation_text(allocations: dict[int, Counter]) -> str:
    """An arm's ranks over its layers (:func:`rank_counts`), per seed when its seeds' allocations differ
    (an advice refitted between the seeds' runs)."""
    distinct = {tuple(sorted(counts.items())) for counts in allocations.values()}
    if len(distinct) == 1:
        return rank_counts(next(iter(allocations.values())))
    return "; ".join(f"seed {seed}: {rank_counts(counts)}" for seed, counts in sorted(allocations.items()))


def plot(table: dict, path: Path = PLOT) -> None:
    """Eval loss against adapter parameters, one panel per task."""
    from advisor.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(4.5 * len(table), 3.6), squeeze=False)
    for ax, (task, comparison) in zip(axes[0], table.items()):
        arms = comparison.arms
        uniform = sorted((v["adapter_params"], v["eval_loss"], v["spread"]) for a, v in arms.items() if a.startswith("uniform-"))
        if uniform:
            x, y, spread = zip(*uniform)
            ax.errorbar(x, y, yerr=spread, color="gray", marker="o", label="uniform (the grid's ranks)")
        for arm, v in arms.items():
            if not arm.startswith("uniform-"):
                ax.errorbar(v["adapter_params"], v["eval_loss"], yerr=v["spread"], marker="s", linestyle="", label=arm)
        ax.set_xscale("log")
        ax.set_xlabel("adapter parameters")
        ax.set_ylabel("eval loss")
        ax.set_title("\n".join(textwrap.wrap(task, 36)), fontsize=8)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.validate", __doc__, [
        "python -m calibration.validate --task debian-section --seeds 0",
        "python -m calibration.validate --model smollm2 --task debian-summary --dry-run",
    ])
    parser.add_argument("--model", choices=sorted(PROTOCOLS), default="minilm", help="the model validated (default: minilm)")
    parser.add_argument("--task", nargs="+", help=f"validation tasks (default: the model's: MiniLM {', '.join(ENCODER_TASKS)}; "
                                                  f"SmolLM2 {', '.join(SMOLLM2_TASKS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=ARMS, help="arms to train (default: the model's: every arm for "
                                                               "MiniLM; advised, uncalibrated, uniform-16 for SmolLM2)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (probes and fits, trains nothing)")
    parser.add_argument("--table", action="store_true", help="print the results table and write the plot")
    args = parser.parse_args(argv)
    if args.table:
        table = summary()
        if not table:
            print("no validation results yet", file=sys.stderr)
            return 0
        print_table(table)
        plot(table)
        print(f"\nwrote {PLOT}", file=sys.stderr)
        return 0
    protocol = PROTOCOLS[args.model]
    unknown = sorted(set(args.task or ()) - set(protocol.tasks))
    if unknown:
        parser.error(f"--task {' '.join(unknown)}: not a {protocol.title} task ({', '.join(protocol.tasks)})")
    import torch

    from calibration.sweep import _quiet_libraries

    torch.set_num_threads(1)
    _quiet_libraries()
    try:
        run(protocol, args.task or protocol.tasks, args.seeds, args.arms or protocol.arms, dry_run=args.dry_run)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
