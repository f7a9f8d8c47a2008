"""Where the calibration's results live and how they are read: the one module every script
imports for its records (no script imports another script for them).

- ``RESULTS_DIR``: one append-only JSONL file per grid, study or check;
- :func:`sweep_result_files`: the rank sweeps' files, whose cells the shipped calibrations are
  fitted on (not the studies', the experiments' or the learning-rate checks');
- :func:`read_records`: the records of several files, each run once;
- :func:`probe_task`: which kind of model (causal LM or sequence classifier) a run probed.
"""

from __future__ import annotations

import json
from pathlib import Path

from advisor.loading import TASK_CAUSAL_LM, TASK_SEQ_CLS
from calibration.models import MODELS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VALIDATION_FILE = "validate.jsonl"  # calibration.validate's trainings of the advice
STUDY_FILES = ("quantization.jsonl", "planted.jsonl", VALIDATION_FILE, "gain.jsonl",  # studies' results, not sweeps'
               "eva-step-control.jsonl", "smollm2-transfer.jsonl", "eva-advised-budget.jsonl")
LR_CHECK_SUFFIX = "-lr.jsonl"  # the learning-rate checks train off the grids' settings
# trainings off the rank grids' protocol (another scale rule, learning-rate grids), not labelled by labels.py yet
EXPERIMENT_FILES = ("smollm2-scaling.jsonl", "smollm2-capacity.jsonl", "gemma3-capacity.jsonl")


def sweep_result_files() -> list[Path]:
    """The rank sweeps' results files (not the studies', the experiments' or the learning-rate checks')."""
    return sorted(p for p in RESULTS_DIR.glob("*.jsonl")
                  if p.name not in STUDY_FILES + EXPERIMENT_FILES and not p.name.endswith(LR_CHECK_SUFFIX))


def read_records(paths) -> list[dict]:
    """The records of ``paths``, each run once: a run two grids share (the same config, so the same
    run_id) counts from the first file that has it, never as a second seed."""
    records, seen = [], set()
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record["run_id"] not in seen:
                    seen.add(record["run_id"])
                    records.append(record)
    return records


def probe_task(model: str) -> str:
    """The probe task of a calibration model's runs: causal-lm, or seq-cls for the encoders."""
    return TASK_CAUSAL_LM if MODELS[model].kind == "causal-lm" else TASK_SEQ_CLS


def experiment_result_files() -> list[Path]:
    """The experiments' files that exist (the parametrization and capacity grids)."""
    return [path for name in EXPERIMENT_FILES if (path := RESULTS_DIR / name).exists()]


def sweep_records() -> list[dict]:
    """Every record of the rank sweeps' files (:func:`sweep_result_files`), each run once."""
    return read_records(sweep_result_files())
