"""Quantized bases: load a checkpoint in 4 or 8 bits, and keep bitsandbytes layers honest in a probe.

QLoRA users fine-tune a 4-bit base, so the probe must measure that model. bitsandbytes 0.50
has two silent bugs on CPUs with AVX512-BF16, both measured on this project's machine and
both guarded here:

1. An eval-mode forward of a ``Linear4bit`` whose input does not require grad (any
   ``model.generate`` or ``torch.no_grad()`` call on a model fresh from ``from_pretrained``)
   repacks the weight for a kernel that has no autograd; every later backward is wrong.
   :func:`autograd_safe` undoes the repacking for the duration of a probe, keeps it from
   happening again, and restores the module exactly as it was afterwards.
2. The CPU ``dequantize_4bit`` kernel is wrong for some widths that are not a multiple of the
   quantization block (measured: in_features 32, 48, 80, 96, 112, 160 with blocksize 64;
   relative error 0.07-0.31). :func:`check_dequantization` compares each such layer with
   :func:`reference_dequantize_4bit` and refuses the model with an error naming the layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEQUANTIZATION_TOLERANCE = 1e-3  # relative Frobenius error; a correct kernel is exact to ~1e-7


@dataclass(frozen=True)
class Quantization:
    """How to quantize a checkpoint while loading it (bitsandbytes through transformers).

    ``bits``: 4 or 8. 4-bit options as in ``transformers.BitsAndBytesConfig``: ``quant_type``
    "nf4" (QLoRA's default) or "fp4", ``double_quant`` (quantize the block scales too) and
    ``compute_dtype`` ("float32", "bfloat16" or "float16").
    """

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"quantization bits must be 4 or 8, got {self.bits!r}")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"unknown 4-bit quant type {self.quant_type!r}: use {' or '.join(QUANT_TYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"unknown compute dtype {self.compute_dtype!r}: use one of {', '.join(COMPUTE_DTYPES)}")

    def bnb_config(self):
        """The ``transformers.BitsAndBytesConfig`` that loads a checkpoint this way."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[self.compute_dtype],
        )

    def describe(self) -> str:
        if self.bits == 8:
            return "8-bit (LLM.int8)"
        return f"4-bit {self.quant_type.upper()}{' double-quant' if self.double_quant else ''}, compute {self.compute_dtype}"


def quantization_from_options(
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = False,
    bnb_4bit_compute_dtype: str = "float32",
) -> Quantization | None:
    """The :class:`Quantization` that transformers-style loading flags ask for (None: full precision)."""
    if load_in_4bit and load_in_8bit:
        raise ValueError("choose one of load_in_4bit and load_in_8bit")
    if not (load_in_4bit or load_in_8bit):
        return None
    return Quantization(
        bits=4 if load_in_4bit else 8, quant_type=bnb_4bit_quant_type,
        double_quant=bnb_4bit_use_double_quant, compute_dtype=bnb_4bit_compute_dtype,
    )


# --------------------------------------------------------------------------- bitsandbytes layers
def _bnb():
    try:
        import bitsandbytes
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return bitsandbytes


QUANTIZATION_SHARE_FLAG = 0.5  # a layer whose quantization share exceeds this is flagged


def gradient_share_not_in(quantized_gradient: torch.Tensor, full_gradient: torch.Tensor) -> float:
    """||G_q - G||^2 / ||G_q||^2: the share of the quantized base's gradient G_q [out, in] that the
    full-precision gradient G lacks (0 = identical; measured for SmolLM2 in calibration/README.md)."""
    quantized_gradient, full_gradient = quantized_gradient.double().cpu(), full_gradient.double().cpu()
    difference = (quantized_gradient - full_gradient).square().sum()
    return float(difference / quantized_gradient.square().sum().clamp_min(1e-300))


def linear4bit_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every bitsandbytes ``Linear4bit`` of ``model``, by ``named_modules()`` name."""
    bnb = _bnb()
    if bnb is None:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def describe(model: nn.Module) -> str | None:
    """How ``model``'s linear layers are quantized ("4-bit NF4, compute float32", ...); None if not."""
    bnb = _bnb()
    if bnb is None:
        return None
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            return Quantization(bits=8).describe()
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            dtypes = {dtype: name for name, dtype in COMPUTE_DTYPES.items()}
            return Quantization(
                bits=4,
                quant_type=getattr(state, "quant_type", None) or module.weight.quant_type,
                double_quant=bool(getattr(state, "nested", False) or getattr(state, "original_nested", False)),
                compute_dtype=dtypes.get(module.compute_dtype, "float32"),
            ).describe()
    return None


def _is_repacked(module: nn.Module) -> bool:
    return bool(getattr(module.weight.quant_state, "packing_format_for_cpu", False))


def reference_dequantize_4bit(module: nn.Module) -> torch.Tensor:
    """The float32 weight [out, in] a ``Linear4bit`` stands for, computed here, not by bitsandbytes' kernel.

    Storage: the [out, in] weight flattened row-major, two 4-bit codes per byte (high nibble
    first); each run of ``blocksize`` consecutive values shares one absmax scale (itself
    8-bit quantized with ``double_quant``); value = code_table[code] * absmax of its block.
    The module must not be repacked (see :func:`autograd_safe`).
    """
    import bitsandbytes.functional as bnb_functional

    state = module.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError("reference_dequantize_4bit needs the standard 4-bit layout; undo the CPU repacking first")
    packed = module.weight.data.reshape(-1).view(torch.uint8)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    absmax = state.absmax
    if state.nested:
        absmax = bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    out_features, in_features = state.shape
    count = out_features * in_features
    values = state.code.float().to(codes.device)[codes[:count]]
    scales = absmax.float().repeat_interleave(state.blocksize)[:count]
    return (values * scales).reshape(out_features, in_features)


def check_dequantization(model: nn.Module) -> None:
    """Refuse a model whose CPU 4-bit layers bitsandbytes dequantizes wrongly (bug 2 above).

    Only layers on the CPU whose ``in_features`` is not a multiple of the block size can be
    hit; each is compared with :func:`reference_dequantize_4bit`.
    """
    import bitsandbytes.functional as bnb_functional

    for name, module in linear4bit_modules(model).items():
        state = module.weight.quant_state
        if module.weight.device.type != "cpu" or state.shape[1] % state.blocksize == 0:
            continue
        reference = reference_dequantize_4bit(module)
        kernel = bnb_functional.dequantize_4bit(module.weight.data, state).float()
        error = float((kernel - reference).norm() / reference.norm().clamp_min(1e-30))
        if error > DEQUANTIZATION_TOLERANCE:
            raise ValueError(
                f"bitsandbytes dequantizes the 4-bit layer {name} (in_features {state.shape[1]}, not a multiple of "
                f"its block size {state.blocksize}) wrongly on this CPU (relative error {error:.2f}), so its forward "
                f"and gradients are wrong: probe the full-precision model, or quantize on a GPU"
            )


def _to_standard_layout(module: nn.Module) -> None:
    """Convert a repacked ``Linear4bit`` back to the layout its differentiable kernels read.

    The repacking stored the block scales as bfloat16 [in / blocksize, out] (double-quantized
    scales expanded first); they become float32 in the standard block order, without
    quantizing them again, so the layer computes exactly the weights the repacked kernel used.
    Fields of the quantization state are replaced, never modified in place.
    """
    import bitsandbytes.functional as bnb_functional

    state = module.weight.quant_state
    repacked_scales = state.absmax
    data, _ = bnb_functional._convert_weight_packed_for_cpu_inverse(module.weight.data, state)
    state.absmax = repacked_scales.T.reshape(-1).float()
    state.nested, state.state2, state.offset = False, None, None
    module.weight.data = data


@contextmanager
def autograd_safe(model: nn.Module):
    """Make every ``Linear4bit`` differentiable for the duration of the block, then put it back.

    Inside: no layer is in bitsandbytes' CPU inference layout (a repacked layer is converted
    back to the standard layout) and none can be repacked (``support_avx512bf16_for_cpu``
    off). Afterwards, also after an error, every bitsandbytes layer holds the very tensors,
    quantization state and flags it had before, including its bias, which a bitsandbytes
    forward casts to its compute (4-bit) or input (8-bit) dtype in place, and the compute
    dtype a first 4-bit forward picks.
    """
    bnb = _bnb()
    saved, biases = [], []
    try:
        if bnb is not None:
            for module in model.modules():
                if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) and module.bias is not None:
                    biases.append((module.bias, module.bias.data))
        for module in linear4bit_modules(model).values():
            state = module.weight.quant_state
            saved.append((module, module.support_avx512bf16_for_cpu, module.weight.data,
                          None if state is None else dict(vars(state)), module.compute_dtype, module.compute_type_is_set))
            module.support_avx512bf16_for_cpu = False
            if state is not None and _is_repacked(module):
                _to_standard_layout(module)
        yield
    finally:
        for bias, data in biases:
            bias.data = data
        for module, flag, data, fields, compute_dtype, compute_type_is_set in reversed(saved):
            module.support_avx512bf16_for_cpu = flag
            module.weight.data = data
            module.compute_dtype, module.compute_type_is_set = compute_dtype, compute_type_is_set
            if fields is not None:
                state = module.weight.quant_state
                state.__dict__.clear()
                state.__dict__.update(fields)
