"""Does the advice settle as the probe draws more rows? The embedded SmolLM2 on the embedded data.

For each probe size (rows drawn, 128 tokens a row, exact method, seed 0): how many of the 210
layers are still dominated by sampling noise (noise share above 20 %), the median rows the
probe estimates would steady them, how many of the calibration's features lie outside its
fitted range, and the advice under the shipped causal-LM calibration (its decision, the
ranks' spread). Each size's ranks are compared with the largest size's: the share of layers
given the same rank. ``advise`` probes at the calibration's protocol (32 rows x 128 tokens)
because the calibration's features were measured that way; this says what a larger default
would change.

    python bench/probe_convergence.py [--rows 32 64 128] [--append bench/results/probe_convergence.jsonl]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor.data import load_rows  # noqa: E402
from advisor.loading import load_model  # noqa: E402
from advisor.probe_pass import probe  # noqa: E402
from advisor.recommend import advice_from_probe  # noqa: E402


def point(model, tokenizer, rows: int, train_size: int) -> tuple[dict, dict[str, int]]:
    """(one size's report, its advised rank per layer); ``train_size``: the rows advised for (as
    ``advise`` does, the whole dataset)."""
    started = time.perf_counter()
    result = probe(model, None, tokenizer=tokenizer, num_samples=rows, max_length=128, method="exact", seed=0,
                   progress=False)
    advice = advice_from_probe(result, train_size=train_size)
    needed = [s.samples_needed for s in result.layers.values() if not s.converged and s.samples_needed]
    report = {
        "rows_drawn": rows, "rows_probed": result.num_rows, "seconds": round(time.perf_counter() - started, 1),
        "noise_dominated_layers": sum(not s.converged for s in result.layers.values()),
        "median_noise_share": round(statistics.median(s.noise_fraction for s in result.layers.values()), 3),
        "median_rows_to_steady": int(statistics.median(needed)) if needed else None,
        "features_outside": len(advice.decision.outside), "level": advice.decision.level,
        "shape": advice.decision.shape, "trainable_params": advice.trainable_params,
        "ranks": {str(rank): count for rank, count in sorted(Counter(advice.ranks.values()).items())},
    }
    return report, advice.ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[32, 64, 128], help="probe sizes (rows drawn)")
    add_record_arguments(parser)
    args = parser.parse_args()
    model, tokenizer = load_model(None)
    train_size = len(load_rows(None))  # the embedded data's rows, as advise counts them
    points = [point(model, tokenizer, rows, train_size) for rows in sorted(args.rows)]
    largest = points[-1][1]
    for report, ranks in points:
        report["same_rank_as_largest"] = round(sum(ranks[n] == largest[n] for n in ranks) / len(ranks), 3)
    emit({"train_size": train_size, "by_rows": [report for report, _ in points]}, args)


if __name__ == "__main__":
    main()
