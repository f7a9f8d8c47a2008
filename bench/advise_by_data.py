"""Does the advice follow the data? The embedded SmolLM2, the same number of rows of different tasks.

For each calibration task named (default: spam-verdict, answers of one token, and shakespeare,
long free text), the first ``--rows`` training rows are written to a JSONL file and advised on
as a user would (``advisor.advise`` with the shipped calibration, a fixed probe of ``--samples``
rows so the runs compare), in full precision and, with ``--load-in-4bit``, on an NF4 base too.
Each report gives the dataset's counted loss tokens, what set the level, the level's uniform
rank, the trainable parameters and the ranks' spread: tasks with tens of times more loss tokens
should get a higher level, and a 4-bit base the same level.

    python bench/advise_by_data.py [--tasks spam-verdict shakespeare] [--rows 1000] [--load-in-4bit]
        [--append bench/results/advise_by_data.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor.recommend import advise  # noqa: E402
from calibration.tasks import TASKS  # noqa: E402


def one(task: str, rows: int, samples: int, load_in_4bit: bool, folder: Path) -> dict:
    path = folder / f"{task}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in TASKS[task].rows("train")[:rows]:
            f.write(json.dumps(row) + "\n")
    started = time.perf_counter()
    advice = advise(None, str(path), num_samples=samples, load_in_4bit=load_in_4bit or None, return_advice=True,
                    progress=False)
    rules = advice.users_rules or {}
    return {"task": task, "rows": rows, "load_in_4bit": load_in_4bit, "seconds": round(time.perf_counter() - started, 1),
            "loss_tokens": rules.get("loss_tokens"), "level": advice.decision.level,
            "level_rule": advice.decision.level_rule, "level_rank": advice.decision.level_rank,
            "trainable_params": advice.trainable_params,
            "ranks": {str(rank): count for rank, count in sorted(Counter(advice.ranks.values()).items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["spam-verdict", "shakespeare"], choices=sorted(TASKS),
                        metavar="TASK", help="causal-LM calibration tasks (default: spam-verdict shakespeare)")
    parser.add_argument("--rows", type=int, default=1000, help="training rows of each task (default 1000)")
    parser.add_argument("--samples", type=int, default=32, help="rows the probe draws (default 32, fixed)")
    parser.add_argument("--load-in-4bit", action="store_true", help="also advise each task on an NF4 base")
    add_record_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = [one(task, args.rows, args.samples, quantized, Path(folder))
                for task in args.tasks for quantized in ((False, True) if args.load_in_4bit else (False,))]
    emit({"benchmark": "advise_by_data", "runs": runs}, args)


if __name__ == "__main__":
    main()
