"""Calibration: real tasks, real models and (later) the LoRA rank / alpha sweeps run on them.

The library (``advisor/``) never imports this package; this package uses the library.

- :mod:`calibration.acquire`: scripted, cached download of every data and model source
  (``python -m calibration.acquire``);
- :mod:`calibration.models`: the three calibration models as local checkpoint directories;
- :mod:`calibration.tasks`: the task registry with deterministic train / eval splits.
"""
