"""How fast a capacity-grid run trains on this CPU, by arrangement: the full forward or the frozen
prefix run once (calibration/frozen_prefix.py), one thread or two, and two one-thread runs side by side.

Each arrangement trains the same short SmolLM2 run (shakespeare, top 4 blocks, r = 16, alpha 32,
lr 1e-3, 8 x 128 tokens a step) in a fresh process and reports its seconds per optimizer step,
its eval loss (the arrangements must agree), and for the prefix the seconds its states took.
"Two side by side" starts two one-thread processes at once: each one's step time, so the pair's
throughput is two steps per that time.

    python bench/calibration_speed.py [--steps 6] [--append bench/results/calibration_speed.jsonl]
    python bench/calibration_speed.py --model gemma3 --steps 2 --rows 16 --eval-rows 32 --two-threads-only
        # does the frozen prefix give Gemma 3 the full forward's eval loss?
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_RUN = """
import json, sys
from calibration import train
from calibration.train import RunConfig
steps, threads, prefix, rows = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "prefix", int(sys.argv[4])
model, eval_rows = sys.argv[5], int(sys.argv[6])
if not prefix:
    train._frozen_prefix = lambda *args, **kwargs: None
config = RunConfig(model=model, task="shakespeare", train_size=rows, learning_rate=1e-3, steps=steps,
                   batch_size=8, max_length=128, eval_rows=eval_rows, rank=16, alpha=32.0, use_rslora=False,
                   warmup_steps=1, top_blocks=4)
record = train.train_run(config, threads=threads)
print(json.dumps({"seconds_per_step": record["seconds_per_step"], "eval_loss": record["eval_loss"],
                  "prefix_seconds": (record["frozen_prefix"] or {}).get("seconds")}))
"""


def start(steps: int, threads: int, mode: str, rows: int, model: str, eval_rows: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ONE_RUN, str(steps), str(threads), mode, str(rows), model,
                             str(eval_rows)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"a run failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument("--rows", type=int, default=200, help="training rows (the prefix stores their states)")
    parser.add_argument("--model", default="smollm2", help="the calibration's causal LM (default smollm2)")
    parser.add_argument("--eval-rows", type=int, default=32, help="eval rows (default 32)")
    parser.add_argument("--two-threads-only", action="store_true",
                        help="only the full forward and the prefix on two threads (the eval-loss check)")
    add_record_arguments(parser)
    args = parser.parse_args()
    arrangements = {}
    common = (args.rows, args.model, args.eval_rows)
    for mode in ("full", "prefix"):
        for threads in ((2,) if args.two_threads_only else (1, 2)):
            arrangements[f"{mode}, {threads} thread{'s' if threads > 1 else ''}"] = finish(
                start(args.steps, threads, mode, *common))
    if not args.two_threads_only:
        pair = [start(args.steps, 1, "full", *common) for _ in range(2)]
        arrangements["full, two 1-thread runs side by side"] = [finish(process) for process in pair]
    emit({"benchmark": "calibration_speed", "model": args.model, "steps": args.steps, "train_rows": args.rows,
          "eval_rows": args.eval_rows, "arrangements": arrangements}, args)


if __name__ == "__main__":
    main()
