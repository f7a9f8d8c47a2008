"""Stage 6 of the data path: the advised LoraConfig in the forms other trainers read.

- ``axolotl.yaml``: axolotl's LoRA keys (``adapter``, ``lora_r``, ``lora_alpha``,
  ``lora_dropout``, ``lora_target_modules``, ``lora_rank_pattern``, ``lora_alpha_pattern``,
  ``peft_use_rslora``) and ``learning_rate`` when the advice states one, to paste into an
  axolotl config;
- ``lora_config.py``: a Python snippet that builds the same ``peft.LoraConfig`` (and names the
  learning rate when advised);
- ``adapter_config.json`` itself is PEFT's own ``save_pretrained`` (see ``Advice.save``).

YAML is written by PyYAML's ``safe_dump``, which quotes module names with dots and regex escapes
as YAML needs.
"""

from __future__ import annotations

import json


def axolotl_yaml(config, learning_rate: float | None = None) -> str:
    """Axolotl LoRA keys for ``config`` (a ``peft.LoraConfig``), and ``learning_rate`` when advised."""
    import yaml

    keys = {
        "adapter": "lora",
        "lora_r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "peft_use_rslora": bool(config.use_rslora),
        "lora_target_modules": sorted(config.target_modules),
        "lora_rank_pattern": dict(config.rank_pattern),
        "lora_alpha_pattern": dict(config.alpha_pattern),
    }
    if learning_rate is not None:
        keys["learning_rate"] = learning_rate
    return ("# LoRA settings advised by lora-rank-advisor; paste into your axolotl config\n"
            + yaml.safe_dump(keys, sort_keys=False))


def python_snippet(config, learning_rate: float | None = None) -> str:
    """Python source that builds ``config`` with ``peft.LoraConfig`` (and names ``learning_rate``
    for the trainer when advised)."""
    targets = json.dumps(sorted(config.target_modules), indent=4).replace("\n", "\n    ")
    rank_pattern = json.dumps(dict(config.rank_pattern), indent=4).replace("\n", "\n    ")
    alpha_pattern = json.dumps(dict(config.alpha_pattern), indent=4).replace("\n", "\n    ")
    task_type = config.task_type.value if hasattr(config.task_type, "value") else config.task_type
    return f'''"""LoRA settings advised by lora-rank-advisor."""

from peft import LoraConfig

lora_config = LoraConfig(
    r={config.r},
    lora_alpha={config.lora_alpha!r},
    lora_dropout={config.lora_dropout!r},
    use_rslora={bool(config.use_rslora)!r},
    task_type={task_type!r},
    target_modules={targets},
    rank_pattern={rank_pattern},
    alpha_pattern={alpha_pattern},
)
''' + ("" if learning_rate is None else
       f"learning_rate = {learning_rate!r}  # for your trainer, e.g. TrainingArguments(learning_rate=learning_rate)\n")
