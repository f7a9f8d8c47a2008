"""Scripted, idempotent acquisition of the calibration data and models into a local cache.

The sources, the registries they come from and the cache layout: :mod:`calibration.sources`.

Command line::

    python -m calibration.acquire [NAME ...] [--force] [--markdown]

fetches the named sources (default: all; a task or model name stands for its sources) and
prints one line per source (time and disk it cost) and one per task (train / eval rows).
"""

from __future__ import annotations

import os
import sys
import time

from calibration import script_parser
from calibration.sources import SOURCES, calibration_dir, disk_bytes, fetch, fetch_info, is_fetched


# --------------------------------------------------------------------------- command line
def _sources_for(names: list[str]) -> list[str]:
    from calibration.models import MODELS
    from calibration.tasks import TASKS

    wanted = []
    for name in names:
        if name in SOURCES or name == "smollm2":
            found = [name]
        elif name in TASKS:
            found = list(TASKS[name].requires)
        elif name in MODELS:
            found = [MODELS[name].source]
        else:
            raise SystemExit(
                f"unknown name {name!r}: use a source ({', '.join(SOURCES)}, smollm2), a task or a model"
            )
        wanted += [n for n in found if n not in wanted]
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.acquire", __doc__, [
        "python -m calibration.acquire                       # every source, cached",
        "python -m calibration.acquire bbc-news --markdown   # one task and its class balance",
    ])
    parser.add_argument("names", nargs="*", help="sources, tasks or models (default: all sources)")
    parser.add_argument("--force", action="store_true", help="re-fetch even when cached")
    parser.add_argument("--markdown", action="store_true", help="also print the class balance as markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from calibration.models import model_dir
    from calibration.tasks import TASKS

    names = _sources_for(args.names) if args.names else [*SOURCES, "smollm2"]
    failed = []
    print(f"cache: {calibration_dir()}")
    for name in names:
        was_cached = name != "smollm2" and is_fetched(name) and not args.force
        start = time.perf_counter()
        try:
            if name == "smollm2":  # the library's embedded default, converted from GGUF once
                path = model_dir("smollm2")
                print(f"source  {name:16s} ready    {time.perf_counter() - start:7.1f} s  "
                      f"{disk_bytes(path) / 1e6:8.1f} MB  {path}")
                continue
            fetch(name, force=args.force, log=lambda line: print(line, file=sys.stderr, flush=True))
        except Exception as error:  # report and go on with the other sources
            failed.append(name)
            print(f"source  {name:16s} FAILED   {type(error).__name__}: {error}")
            continue
        info = fetch_info(name) or {}
        print(
            f"source  {name:16s} {'cached ' if was_cached else 'fetched'}  {info.get('seconds', 0):7.1f} s  "
            f"{info.get('disk_bytes', 0) / 1e6:8.1f} MB  (downloaded {info.get('downloaded_bytes', 0) / 1e6:.1f} MB)"
        )

    for task in TASKS.values():
        if not task.is_available():
            print(f"task    {task.name:16s} not available (needs {', '.join(task.requires)})")
            continue
        start = time.perf_counter()
        try:
            train, evaluation = task.rows("train"), task.rows("eval")
        except Exception as error:
            failed.append(task.name)
            print(f"task    {task.name:16s} FAILED   {type(error).__name__}: {error}")
            continue
        labels = task.label_names()
        print(
            f"task    {task.name:16s} {task.kind:11s} {'+'.join(task.models):14s} train {len(train):6d}  "
            f"eval {len(evaluation):5d}" + (f"  labels {len(labels)}" if labels else "")
            + f"  ({time.perf_counter() - start:.1f} s)"
        )
        if args.markdown and labels:
            print(_balance_table(task.name, labels, train, evaluation))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _balance_table(name: str, labels: list[str], train: list[dict], evaluation: list[dict]) -> str:
    from collections import Counter

    counts = {split: Counter(row["label"] for row in rows) for split, rows in (("train", train), ("eval", evaluation))}
    lines = [f"\n{name}:\n", "| label | train | eval | train % |", "|---|---:|---:|---:|"]
    for label in labels:
        share = 100 * counts["train"][label] / max(1, len(train))
        lines.append(f"| {label} | {counts['train'][label]} | {counts['eval'][label]} | {share:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
