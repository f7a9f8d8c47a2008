"""Calibration: real tasks, real models and (later) the LoRA rank / alpha sweeps run on them.

The library (``advisor/``) never imports this package; this package uses the library.

- :mod:`calibration.acquire`: scripted, cached download of every data and model source
  (``python -m calibration.acquire``);
- :mod:`calibration.models`: the three calibration models as local checkpoint directories;
- :mod:`calibration.tasks`: the task registry with deterministic train / eval splits.
"""

import argparse


def script_parser(module: str, doc: str, examples: list[str]) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``: the first paragraph of ``doc`` (the module's
    docstring) as its description, and ``examples`` (command lines) listed under ``--help``."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="examples:\n" + "\n".join(f"  {line}" for line in examples))


def read_results(path) -> list[dict]:
    """The JSON records of an append-only results file, one per line, in the order written;
    [] while the file does not exist."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
