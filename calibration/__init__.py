"""Calibration: real tasks, real models and (later) the LoRA rank / alpha sweeps run on them.

The library (``advisor/``) never imports this package; this package uses the library.

- :mod:`calibration.sources`: every data and model source, how it is fetched, and the cache;
- :mod:`calibration.acquire`: scripted, cached download of every data and model source
  (``python -m calibration.acquire``);
- :mod:`calibration.models`: the four calibration models as local checkpoint directories;
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
    """The JSON records of an append-only results file, one per line, in the order written: every
    complete line (a last line without its newline is still being written, not a record yet);
    [] while the file does not exist. A line that is not JSON is an error naming it."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records = []
    for number, line in enumerate(data[:data.rfind(b"\n") + 1].splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not a JSON record ({error}); fix the file by hand") from error
    return records
