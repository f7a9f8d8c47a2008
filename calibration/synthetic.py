"""Synthetic sweep records whose answers are known, and the calibrations fitted on them.

The tests build records with these functions; the library's tests, which never import
calibration/, load the calibrations that ``python -m calibration.synthetic`` fits on them and
writes to tests/data/calibrations (a test checks that the committed files are what it writes).
"""

import math
import sys
from collections.abc import Callable
from pathlib import Path

from calibration import script_parser

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "calibrations"


def probe_layers(signal: float) -> dict:
    """Probe features of a 2-block model whose signal effective rank is ``signal`` (scale-free rest)."""
    layers = {}
    for depth in range(2):
        for name, shape in (("self_attn.q_proj", (64, 64)), ("mlp.down_proj", (64, 128))):
            layers[f"model.layers.{depth}.{name}"] = {
                "shape": list(shape), "depth": depth, "effective_rank": 10.0 + signal, "stable_rank": 2.0,
                "signal_effective_rank": signal, "noise_fraction": 0.1, "subspace_overlap": 0.8, "rank_growth": 1.1,
            }
    return layers


def record(task, rank, seed, loss, signal=2.0, train_size=1000, model="minilm", scaling=None, adapter_erank=None):
    """One sweep record as ``calibration.sweep`` writes it (the fields the labels and the fit read):
    ``model`` on ``task`` at ``rank`` and ``seed``, eval loss ``loss``, probe signal ``signal``;
    ``scaling`` (alpha / r) defaults to rsLoRA's 8 / sqrt(r); ``adapter_erank``: the trained
    adapters' effective rank by layer name (2.0 for any not named)."""
    layers = probe_layers(signal)
    return {
        "run_id": f"{task}-{rank}-{seed}-{scaling}",
        "config": {"model": model, "task": task, "train_size": train_size, "learning_rate": 1e-3, "steps": 200,
                   "batch_size": 16, "max_length": 64, "alpha": 8.0, "alpha_over_r": None, "use_rslora": True,
                   "data_seed": 0, "eval_rows": 256, "rank": rank, "seed": seed},
        "eval_loss": loss,
        "initial_eval_loss": 2.0,
        "trainable_params": 1000 * (rank or 1),
        "lora": {"r": rank, "scaling_by_group": {"attention": scaling if scaling is not None else 8 / (rank or 1)**0.5}},
        "probe": {"layers": layers},
        "adapter_layers": [{"name": name, "effective_rank_BA": (adapter_erank or {}).get(name, 2.0)} for name in layers],
    }


def cell_records(task, losses_by_rank, **kwargs):
    """The records of one cell: ``losses_by_rank`` maps a rank to its losses at seeds 0, 1, ...;
    ``kwargs`` go to :func:`record`."""
    return [record(task, rank, seed, loss, **kwargs) for rank, losses in losses_by_rank.items()
            for seed, loss in enumerate(losses)]


def synthetic_sweep(model="minilm"):
    """Cells on four tasks whose optimal rank grows with the probe's signal rank."""
    records = []
    for task, signal, best in (("a", 1.0, 2), ("b", 3.0, 8), ("c", 7.0, 32), ("d", 2.0, 4)):
        losses = {r: [1.0 + 0.2 * max(0, (best - r) / best), 1.01 + 0.2 * max(0, (best - r) / best)]
                  for r in (1, 2, 4, 8, 16, 32, 64)}
        records += cell_records(task, losses, signal=signal, model=model)
    return records


def scaling_sweep(task, signal, best_s):
    """Runs of ``task`` at ranks 2, 8, 32 and alpha / r = 0.5-4, two seeds, best at ``best_s``; trained
    for 400 steps, so that they form groups of their own, apart from synthetic_sweep's rank cells."""
    records = [record(task, rank, seed, 1.0 + 0.1 * abs(math.log2(s / best_s)) + 0.01 * seed, signal=signal, scaling=s)
               for rank in (2, 8, 32) for s in (0.5, 1.0, 2.0, 4.0) for seed in (0, 1)]
    for r in records:
        r["config"].update(steps=400, alpha=None, alpha_over_r=r["lora"]["scaling_by_group"]["attention"], use_rslora=False)
    return records


def flat_sweep(mlp_need: float = 1.0, model: str = "minilm"):
    """Three tasks with the same optimal rank (4) whatever the signal; at every rank the MLP
    layers' trained adapters use ``mlp_need`` times the attention layers' effective rank."""
    erank = {name: (mlp_need if "mlp" in name else 1.0) for name in probe_layers(1.0)}
    return [r for task, signal in (("a", 1.0), ("b", 7.0), ("c", 3.0))
            for r in cell_records(task, {1: [1.1, 1.11], 4: [1.0, 1.01], 64: [1.0, 1.01]}, signal=signal,
                                  adapter_erank=erank, model=model)]


FIXTURES: dict[str, Callable[[], list[dict]]] = {
    "encoders": synthetic_sweep,
    "encoders-alpha": lambda: (synthetic_sweep() + scaling_sweep("a", 1.0, 0.5) + scaling_sweep("b", 3.0, 2.0)
                               + scaling_sweep("c", 7.0, 4.0)),
    "smollm2": lambda: synthetic_sweep(model="smollm2"),
    "smollm2-shape": lambda: flat_sweep(mlp_need=4.0, model="smollm2"),
    "smollm2-flat": lambda: flat_sweep(model="smollm2"),
}
"""The fixture calibrations: name -> the records it is fitted on. ``encoders``: optimal ranks 2, 8,
32, 4 growing with the signal on sequence classifiers; ``encoders-alpha``: the same with alpha
runs (best scalings 0.5, 2, 4); ``smollm2``: ``encoders``' cells as a causal LM's; ``smollm2-shape``:
the same optimal rank everywhere, MLP adapters using 4x the attention's rank; ``smollm2-flat``:
neither model beats its baseline."""


def write_fixtures(directory: Path = FIXTURES_DIR) -> list[Path]:
    """Fit and save every calibration of :data:`FIXTURES` into ``directory``; the JSON files written."""
    from calibration.fit import fit, save

    written = []
    for name, build in FIXTURES.items():
        records = build()
        save(*fit(records), records, name, directory)
        written.append(directory / f"{name}.json")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.synthetic", __doc__, [
        "python -m calibration.synthetic          # refit tests/data/calibrations",
    ])
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="folder to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_fixtures(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
