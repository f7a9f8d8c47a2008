"""Probe cost against a plain forward + backward over the same batches, on the embedded default.

Time: both are run in this one process, interleaved (plain, probe, plain, probe, ...), and the
ratio of the fastest repetitions is reported, so machine noise hits both alike; beside it the
probe's parts outside the data pass: its spectra (of its first rows too, when it grew) and the
count of the whole dataset's loss tokens. The plain pass
is what a training step's gradient computation costs: the model as loaded (every weight
requires grad), mean token loss, ``loss.backward()``, gradients dropped.
Memory: each mode runs once in a fresh child process, where a thread samples the resident
memory every 10 ms during the pass; reported are that peak and the resident memory just
before the pass (model and batches loaded); their difference is what the pass costs.
``--load-in-4bit``: the same on SmolLM2 quantized to NF4 while loading (QLoRA's base); its
plain pass sends gradients to the input embeddings, as QLoRA's backward does.
``--grow``: the probe as ``advise`` runs it by default (from ``--samples`` rows, doubling up to
``DEFAULT_MAX_SAMPLES`` rows or ``DEFAULT_MAX_SECONDS`` until the layers' gradients converge, the
spectra of its first rows kept for the calibration); a first probe finds where it stops, and the
plain pass then reads the same batches. ``--samples 32 --max-length 128 --grow`` is advise's
default on the embedded data (the causal-LM calibration's probe protocol).

    python bench/probe_overhead.py [--samples 64] [--batch-size 8] [--max-length 256] [--repeats 2]
        [--grow] [--load-in-4bit] [--append bench/results/probe_overhead.jsonl --machine "what it ran on"]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from records import add_record_arguments, emit  # bench/records.py

from advisor.data import count_tokens, load_rows, make_batches, sample_batches
from advisor.loading import load_model
from advisor.probe_pass import COUNT_TOKENS_MAX_ROWS, probe
from advisor.quantized import Quantization
from advisor.recommend import DEFAULT_MAX_SAMPLES, DEFAULT_MAX_SECONDS


def plain_forward_backward(model, batches) -> None:
    """Ordinary training-style gradients over the batches (mean token loss per batch)."""
    model.eval()
    for batch in batches:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        labels = batch.labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        model.zero_grad(set_to_none=True)


def run_probe(model, tokenizer, args):
    """The probe's :class:`advisor.probe_pass.ProbeResult` on the embedded data (growing with ``--grow``)."""
    growth = {"max_samples": DEFAULT_MAX_SAMPLES, "max_seconds": DEFAULT_MAX_SECONDS} if args.grow else {}
    return probe(model, None, tokenizer=tokenizer, num_samples=args.samples, batch_size=args.batch_size,
                 max_length=args.max_length, seed=0, progress=False, **growth)


def plain_batches(tokenizer, args, probed_rows: int | None = None):
    """The batches the probe reads: its ``--samples`` rows, or (``--grow``) its first batches and then
    the extra ones up to ``probed_rows`` rows, the rows a growing probe read before it stopped."""
    if not args.grow:
        return make_batches(None, tokenizer, num_samples=args.samples, batch_size=args.batch_size,
                            max_length=args.max_length, seed=0)
    first, extra = sample_batches(load_rows(None), tokenizer, num_samples=args.samples, batch_size=args.batch_size,
                                  max_length=args.max_length, seed=0, extra_samples=DEFAULT_MAX_SAMPLES - args.samples)
    batches, rows = [], 0
    for batch in first + extra:
        if rows >= probed_rows:
            break
        batches.append(batch)
        rows += batch.num_rows
    return batches


def probed_rows(result) -> int | None:
    """Rows a growing probe read before it stopped (its last check's), else None."""
    return result.growth["checks"][-1][0] if result.growth and result.growth["checks"] else None


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakResidentMemory:
    """Samples this process's resident memory every 10 ms inside the ``with`` block."""

    def __enter__(self):
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def load(args):
    """The embedded SmolLM2, fp32 or (``--load-in-4bit``) NF4 with float32 compute.

    A 4-bit model has no weight that can take a gradient, so its plain pass is QLoRA's
    backward without the adapters: gradients flow to the input embeddings' output."""
    if not args.load_in_4bit:
        return load_model(None)
    model, tokenizer = load_model(None, quantization=Quantization(bits=4))
    model.enable_input_require_grads()
    return model, tokenizer


def child(mode: str, args) -> None:
    model, tokenizer = load(args)
    batches = plain_batches(tokenizer, args, args.probed_rows)
    before = rss_mb()
    with PeakResidentMemory() as memory:
        if mode == "plain":
            plain_forward_backward(model, batches)
        else:
            run_probe(model, tokenizer, args)
    print(json.dumps({"mode": mode, "rss_before_mb": before, "peak_mb": memory.peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load-in-4bit", action="store_true", help="the NF4-quantized SmolLM2 (QLoRA's base)")
    parser.add_argument("--grow", action="store_true", help="grow the probe as advise does by default")
    add_record_arguments(parser)
    parser.add_argument("--child", choices=("plain", "probe"), help=argparse.SUPPRESS)
    parser.add_argument("--probed-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    model, tokenizer = load(args)
    grown = probed_rows(run_probe(model, tokenizer, args)) if args.grow else None  # where it stops; a warm-up too
    batches = plain_batches(tokenizer, args, grown)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    plain_times, probe_times, spectra_times, first_spectra_times = [], [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        plain_forward_backward(model, batches)
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = run_probe(model, tokenizer, args)
        probe_times.append(time.perf_counter() - started)
        spectra_times.append(result.spectra_seconds)
        first_spectra_times.append((result.growth or {}).get("first_check_seconds") or 0.0)
        if probed_rows(result) != grown:
            raise SystemExit(f"the growing probe stopped at {probed_rows(result)} rows, before at {grown}")
    started = time.perf_counter()  # what the probe spends counting the whole dataset's loss tokens
    count_tokens(load_rows(None), tokenizer, max_length=args.max_length, max_rows=COUNT_TOKENS_MAX_ROWS)
    count_seconds = time.perf_counter() - started
    del model, batches  # the children below measure memory; this process should not crowd them out
    gc.collect()

    memory = {}
    for mode in ("plain", "probe"):
        command = [sys.executable, __file__, "--child", mode, "--samples", str(args.samples),
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        command += ["--load-in-4bit"] if args.load_in_4bit else []
        command += ["--grow", "--probed-rows", str(grown)] if args.grow else []
        memory[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    plain, full = min(plain_times), min(probe_times)
    spectra, first_spectra = spectra_times[probe_times.index(full)], first_spectra_times[probe_times.index(full)]
    report = {
        "model": f"SmolLM2-135M-Instruct ({'NF4 4-bit' if args.load_in_4bit else 'fp32'}, CPU)",
        "rows": grown or args.samples, "batch_size": args.batch_size, "max_length": args.max_length, "tokens": tokens,
        **({"grown_from_rows": args.samples, "growth": result.growth} if args.grow else {}),
        "threads": torch.get_num_threads(),
        "plain_forward_backward_s": round(plain, 2),
        "probe_s": round(full, 2),
        "probe_spectra_s": round(spectra, 2),
        **({"probe_first_rows_spectra_s": first_spectra} if args.grow else {}),
        "time_ratio": round(full / plain, 3),
        "dataset_count_s": round(count_seconds, 2),
        "time_ratio_without_spectra": round((full - spectra - first_spectra) / plain, 3),
        "plain_peak_mb": round(memory["plain"]["peak_mb"]),
        "probe_peak_mb": round(memory["probe"]["peak_mb"]),
        "plain_pass_mb": round(memory["plain"]["peak_mb"] - memory["plain"]["rss_before_mb"]),
        "probe_pass_mb": round(memory["probe"]["peak_mb"] - memory["probe"]["rss_before_mb"]),
        "memory_ratio": round(memory["probe"]["peak_mb"] / memory["plain"]["peak_mb"], 3),
    }
    emit(report, args)


if __name__ == "__main__":
    main()
