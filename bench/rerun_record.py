"""Train committed calibration runs again with today's code: the same eval loss, and how long a step takes now.

Each run id is looked up in ``calibration/results/<grid>.jsonl``; its config is trained once more
in this process (nothing is appended to the grid's results) and the report gives, per run, the
record's and today's eval loss and seconds per optimizer step. The first run of a task also
computes its frozen prefix (not counted in the step time). Use it after a change to the training
loop that must not change the results, e.g. the output layer run at scored positions only.

    python bench/rerun_record.py --grid smollm2-capacity --run-id 5f0e7c1b2a3d [--threads 2]
        [--append bench/results/rerun_record.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from calibration import read_results  # noqa: E402
from calibration.records import RESULTS_DIR  # noqa: E402
from calibration.train import RunConfig, train_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="the results file's name, e.g. smollm2-capacity")
    parser.add_argument("--run-id", nargs="+", required=True, help="the records' run ids, trained in this order")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_record_arguments(parser)
    args = parser.parse_args()
    records = {record["run_id"]: record for record in read_results(RESULTS_DIR / f"{args.grid}.jsonl")}
    missing = [run_id for run_id in args.run_id if run_id not in records]
    if missing:
        parser.error(f"no record with run id {', '.join(missing)} in {args.grid}.jsonl")
    runs = []
    for run_id in args.run_id:
        record = records[run_id]
        again = train_run(RunConfig.from_dict(record["config"]), threads=args.threads)
        runs.append({"run_id": run_id, "summary": RunConfig.from_dict(record["config"]).summary(),
                     "eval_loss": {"record": record["eval_loss"], "today": again["eval_loss"]},
                     "seconds_per_step": {"record": record["seconds_per_step"], "today": again["seconds_per_step"]},
                     "threads": {"record": record.get("threads"), "today": args.threads}})
    emit({"benchmark": "rerun_record", "grid": args.grid, "runs": runs}, args)


if __name__ == "__main__":
    main()
