"""How a probe samples and measures: one validated record of its settings.

:func:`advisor.probe`, :func:`advisor.probe_pass.gradients`, :func:`advisor.advise` and the
``lora-advisor`` command line all take their probe settings as a :class:`ProbeConfig` (or as
keyword options that :meth:`ProbeConfig.build` turns into one), so the defaults live here once
and a bad value is refused, naming it, before any model is loaded. The probe stores the config
it ran with in ``probe.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from advisor.quantized import COMPUTE_DTYPES, Quantization

METHODS = ("auto", "exact", "sketch")
TASKS = ("causal-lm", "seq-cls")
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of accumulators before "auto" switches to sketching
# transformers-style loading flags (as in BitsAndBytesConfig) that build ``quantization``
QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
                      "bnb_4bit_compute_dtype")


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's settings.

    ``num_samples`` rows drawn from the dataset with ``seed``, in batches of ``batch_size``, each
    cut to ``max_length`` tokens. ``method``: "exact" (two fp32 [out, in] accumulators per layer),
    "sketch" (randomized sketches of size ``sketch_size``) or "auto" (exact while the accumulators
    fit ``memory_budget`` bytes, else the largest sketch that fits). ``target_modules`` as PEFT
    reads it (None: every linear layer in the blocks; a string is a regex over the whole name; a
    list of names or suffixes). ``task``: "causal-lm", "seq-cls" or None (from the model).
    ``quantization``: how a checkpoint is quantized while it loads (None: full precision).
    ``max_samples``: grow the probe: start at ``num_samples`` rows and keep doubling, up to
    ``max_samples`` rows or ``max_seconds`` of data pass, until the layers' gradients converge
    (:class:`advisor.probe_pass.Growth`); None probes ``num_samples`` rows.
    """

    num_samples: int = 64
    batch_size: int = 8
    max_length: int = 256
    method: str = "auto"
    sketch_size: int = 128
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    seed: int = 0
    target_modules: str | tuple[str, ...] | None = None
    task: str | None = None
    quantization: Quantization | None = None
    max_samples: int | None = None
    max_seconds: float | None = None

    def __post_init__(self):
        for name in ("num_samples", "batch_size", "max_length", "sketch_size", "memory_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.max_samples is not None:
            if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) \
                    or self.max_samples < self.num_samples:
                raise ValueError(f"max_samples must be an integer >= num_samples ({self.num_samples}), "
                                 f"got {self.max_samples!r}")
        if self.max_seconds is not None and (isinstance(self.max_seconds, bool)
                                             or not isinstance(self.max_seconds, (int, float)) or not self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number, got {self.max_seconds!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.task not in (None, *TASKS):
            raise ValueError(f"unknown task {self.task!r}: use {' or '.join(TASKS)}")
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            names = tuple(self.target_modules)
            if not names or not all(isinstance(name, str) and name for name in names):
                raise ValueError(f"target_modules must be a regex string or a list of module names, "
                                 f"got {self.target_modules!r}")
            object.__setattr__(self, "target_modules", names)
        if self.quantization is not None and not isinstance(self.quantization, Quantization):
            raise ValueError(f"quantization must be an advisor.quantized.Quantization, got {self.quantization!r}")

    @classmethod
    def build(cls, config: ProbeConfig | None = None, **options) -> ProbeConfig:
        """``config`` (default: the defaults) with ``options`` replacing its fields. Options may also
        be transformers-style flags (``load_in_4bit``, ``load_in_8bit``, ``bnb_4bit_quant_type``,
        ``bnb_4bit_use_double_quant``, ``bnb_4bit_compute_dtype``) or ``quantization_config``, a
        ``transformers.BitsAndBytesConfig``; an unknown option is an error naming it."""
        base = config if config is not None else cls()
        if not isinstance(base, ProbeConfig):
            raise ValueError(f"config must be a ProbeConfig, got {type(base).__name__}")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields - set(QUANTIZATION_FLAGS) - {"quantization_config"})
        if unknown:
            raise ValueError(f"unknown probe option(s) {', '.join(unknown)}: use {', '.join(sorted(fields))}, "
                             f"quantization_config or {', '.join(QUANTIZATION_FLAGS)}")
        flags = {name: options.pop(name) for name in QUANTIZATION_FLAGS if name in options}
        bnb = options.pop("quantization_config", None)
        if sum(map(bool, (flags, bnb is not None, "quantization" in options))) > 1:
            raise ValueError("give the quantization once: quantization, quantization_config or the load_in_* flags")
        if flags:
            from advisor.quantized import quantization_from_options

            options["quantization"] = quantization_from_options(**flags)
        elif bnb is not None:
            options["quantization"] = quantization_from_bnb(bnb)
        return dataclasses.replace(base, **options)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ProbeConfig:
        quantization = data.get("quantization")
        return cls(**{**data, "quantization": Quantization(**quantization) if quantization else None})


def quantization_from_bnb(config) -> Quantization | None:
    """The :class:`Quantization` of a ``transformers.BitsAndBytesConfig`` (None: neither 4 nor 8 bits)."""
    if getattr(config, "load_in_8bit", False):
        return Quantization(bits=8)
    if not getattr(config, "load_in_4bit", False):
        if hasattr(config, "load_in_4bit"):
            return None
        raise ValueError(f"quantization_config must be a transformers BitsAndBytesConfig, got {type(config).__name__}")
    dtype = config.bnb_4bit_compute_dtype
    names = {value: name for name, value in COMPUTE_DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"bnb_4bit_compute_dtype {dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    return Quantization(bits=4, quant_type=config.bnb_4bit_quant_type,
                        double_quant=bool(config.bnb_4bit_use_double_quant), compute_dtype=names[dtype])
