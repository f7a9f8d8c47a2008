"""Which layers the probe targets, their shapes, types and depths.

Linear-like layers: ``nn.Linear`` (bitsandbytes ``Linear4bit`` and ``Linear8bitLt`` are
subclasses) and transformers' ``Conv1D`` (GPT-2), whose weight is stored as [in, out].
Shapes are always reported as (out, in), the shape of the gradient G = delta x^T.
"""

from __future__ import annotations

import re

from torch import nn

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear-like layer."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.nf, module.weight.shape[0]  # Conv1D: weight [in, out]


def block_depth(name: str) -> int | None:
    """Index of the transformer block a module sits in: the first all-digit path segment."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def layer_types(names) -> dict[str, str]:
    """Layer type of each module name, as short as stays unambiguous.

    The type is the path below the block index, without further indices
    (``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``), shortened to its last
    segment (``q_proj``) when no other type ends the same way (GPT-2's ``attn.c_proj`` and
    ``mlp.c_proj`` keep their prefixes).
    """
    full = {}
    for name in names:
        parts = name.split(".")
        digits = [i for i, part in enumerate(parts) if part.isdigit()]
        below = parts[digits[0] + 1 :] if digits else parts
        full[name] = ".".join(part for part in below if not part.isdigit()) or name
    paths_by_leaf: dict[str, set[str]] = {}
    for path in full.values():
        paths_by_leaf.setdefault(path.rsplit(".", 1)[-1], set()).add(path)
    return {
        name: path.rsplit(".", 1)[-1] if len(paths_by_leaf[path.rsplit(".", 1)[-1]]) == 1 else path
        for name, path in full.items()
    }


def find_target_layers(model: nn.Module, target_modules=None) -> dict[str, nn.Module]:
    """Linear-like layers to probe, keyed by their ``model.named_modules()`` name.

    ``target_modules`` follows PEFT: None or ``"all-linear"`` means every linear-like layer
    inside the transformer blocks (a path with a block index; embeddings, LM head,
    classifier and pooler are outside); a string is a regular expression that must match
    the whole name; a list of strings matches names equal to, or ending in ``"." +``, an item.
    """
    linear = {name: module for name, module in model.named_modules() if is_linear_like(module)}
    if not linear:
        raise ValueError(f"{type(model).__name__} has no linear layers to probe")
    if target_modules is None or target_modules == "all-linear":
        targets = {name: module for name, module in linear.items() if block_depth(name) is not None}
        if not targets:
            raise ValueError(f"{type(model).__name__} has no linear layers inside numbered transformer blocks")
        return targets
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        targets = {name: m for name, m in linear.items() if pattern.fullmatch(name)}
    else:
        keys = list(target_modules)
        if not keys or not all(isinstance(key, str) and key for key in keys):
            raise ValueError(f"target_modules must be a regex string or a list of module names, got {target_modules!r}")
        targets = {
            name: m for name, m in linear.items() if any(name == key or name.endswith("." + key) for key in keys)
        }
    if not targets:
        examples = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in linear})[:8])
        raise ValueError(f"target_modules {target_modules!r} match no linear layer (linear layer names end in: {examples})")
    return targets
