"""Sketch against exact on the embedded SmolLM2: accuracy of the spectra, time and accumulator memory.

One process, the same rows for every method. For each sketch size s it reports, over all 210
layers: the largest error of the top-8 normalised singular values (sigma_i / sigma_1 of the
sketch against exact), the median relative error of the top-s/4 effective rank, the probe's
time against exact's, and the accumulators' bytes against exact's.

    python bench/sketch_vs_exact.py [--samples 16] [--max-length 128] [--sizes 64 128]
        [--append bench/results/sketch_vs_exact.jsonl --machine "what it ran on"]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor import spectrum  # noqa: E402
from advisor.loading import load_model  # noqa: E402
from advisor.probe_pass import probe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    add_record_arguments(parser)
    args = parser.parse_args()
    model, tokenizer = load_model(None)
    settings = dict(tokenizer=tokenizer, num_samples=args.samples, max_length=args.max_length, seed=0, progress=False)
    started = time.perf_counter()
    exact = probe(model, None, method="exact", **settings)
    exact_seconds = time.perf_counter() - started
    report = {"model": "SmolLM2-135M-Instruct (fp32, CPU)", "rows": exact.num_rows, "tokens": exact.tokens,
              "threads": torch.get_num_threads(), "exact_seconds": round(exact_seconds, 2),
              "exact_bytes": exact.accumulator_bytes, "sketches": []}
    for size in args.sizes:
        started = time.perf_counter()
        sketch = probe(model, None, method="sketch", sketch_size=size, **settings)
        seconds = time.perf_counter() - started
        top_errors, rank_errors = [], []
        for name, stats in exact.layers.items():
            truth = torch.tensor(stats.singular_values, dtype=torch.float64)
            measured = torch.tensor(sketch.layers[name].singular_values, dtype=torch.float64)
            k = min(8, measured.numel())
            top_errors.append(float((measured[:k] / measured[0] - truth[:k] / truth[0]).abs().max()))
            head = max(1, size // 4)
            true_rank = spectrum.effective_rank(truth[:head])
            rank_errors.append(abs(spectrum.effective_rank(measured[:head]) - true_rank) / true_rank)
        report["sketches"].append({
            "sketch_size": size, "seconds": round(seconds, 2), "time_vs_exact": round(seconds / exact_seconds, 3),
            "bytes": sketch.accumulator_bytes, "memory_vs_exact": round(sketch.accumulator_bytes / exact.accumulator_bytes, 3),
            "max_top8_error": round(max(top_errors), 5), "median_head_erank_error": round(statistics.median(rank_errors), 5),
        })
    emit(report, args)


if __name__ == "__main__":
    main()
