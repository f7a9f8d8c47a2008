"""What every benchmark in bench/ shares: its --append / --machine options and how a report is emitted."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--append", type=Path, metavar="JSONL", help="also append the report as one line to this file")
    parser.add_argument("--machine", default="", help="a note on the machine, stored with the report")


def emit(report: dict, args: argparse.Namespace) -> None:
    """Stamp ``report`` with the command, date and ``--machine``, print it, and append it to ``--append``."""
    report.update(command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d"), machine=args.machine)
    print(json.dumps(report, indent=2))
    if args.append:
        args.append.parent.mkdir(parents=True, exist_ok=True)
        with open(args.append, "a") as f:
            f.write(json.dumps(report) + "\n")
