"""One real PEFT LoRA training run on a calibration task, measured the same way every time.

:func:`train_run` takes a :class:`RunConfig` and returns one JSON-able record (see
:func:`train_run` for its fields). Everything that can change a result is in the config, and
its canonical JSON names the run (``run_id``, a short SHA-1), so a results file can be resumed
and any record re-run from ``record["command"]``.

The protocol (``PROTOCOL`` 1; bump it, and so every ``run_id``, whenever what follows changes):

- model: :func:`calibration.models.model_dir` loaded with :func:`advisor.loading.load_model`;
  for seq-cls a new classification head with ``len(task.label_names())`` outputs, initialised
  after ``torch.manual_seed(seed)``;
- LoRA: ``peft.LoraConfig`` on every linear layer inside the transformer blocks
  (:func:`advisor.layers.find_target_layers`; with ``top_blocks``, only those of the last
  ``top_blocks`` blocks), ``lora_dropout`` 0, A initialised after
  ``torch.manual_seed(seed)`` (B = 0). A module is *attention* when its name contains
  ``attn`` or ``attention`` (BERT's ``attention.output.dense`` is attention), else *mlp*.
  Per-type ranks and per-module ranks (``rank_pattern``) write an explicit ``rank_pattern``
  and ``alpha_pattern`` entry for every adapted module; a type or module with rank 0 is not
  adapted. With ``eva_rho``, A is instead initialised by PEFT's EVA
  (``initialize_lora_eva_weights``, ``EvaConfig(rho=eva_rho)`` at its other defaults, on the
  run's first epoch of training batches, before the first step), which also redistributes
  the ranks; the record's ``adapter_layers`` hold the ranks EVA chose. seq-cls trains the head too (PEFT's
  ``modules_to_save``, which ``task_type="SEQ_CLS"`` sets up);
- data: ``train_size`` rows drawn from the task's train split with ``random.Random(data_seed)``;
  each epoch is a fresh permutation cut into batches by :func:`advisor.data.make_batches`
  (sampling seed ``seed * 1_000_003 + epoch``), so the loss sits exactly where the probe puts
  it (completion tokens of instruction rows, every token of LM rows, the label of seq-cls
  rows). A last partial batch of an epoch is dropped (unless it is the epoch's only batch);
- optimisation: AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0) over the trainable
  parameters, gradient norm clipped to 1.0, learning rate warmed up linearly over
  ``warmup_steps`` (lr * step / warmup_steps for steps 1..warmup_steps) and constant after;
  train loss = mean token loss of the batch (causal LM) or mean cross-entropy (seq-cls);
  the model is in train mode (MiniLM / MPNet keep their 0.1 dropout; SmolLM2 and Gemma 3 have none);
- eval: the first ``eval_rows`` rows of the task's eval split (hash order), batches of
  ``EVAL_BATCH_SIZE`` at ``max_length``, eval mode, no grad; ``eval_loss`` is the mean token
  loss over all loss tokens (causal LM) or the mean cross-entropy over rows (seq-cls, with
  ``eval_accuracy``). Also measured before training (``initial_eval_loss``, cached) and every
  ``eval_every`` steps (``eval_curve``; 0 = only at the end).

Frozen prefix: a causal LM with only its top blocks adapted (``top_blocks``) runs the
blocks below them once per row and trains from their stored output
(:mod:`calibration.frozen_prefix`; the same loss and gradients to float rounding); the states
are kept for the process's next runs of the same rows, and the record's ``frozen_prefix`` says
from which block, how long the states took and whether they were reused (None: the full forward).
A causal LM's output layer runs only at the positions whose next token is scored (the completion
of an instruction row), the same loss to float rounding (:func:`calibration.frozen_prefix.scoring_only`;
from 2026-12-04 on: earlier records ran it at every position).

Device: a run trains on the first GPU when there is one, with bf16 autocast where the GPU
supports it (weights and optimizer state stay fp32), else on the CPU in fp32; the record says
which (``device``, ``autocast``).

Determinism: a fixed config gives the same record on the same machine, library versions and
thread count (timings aside). The step-0 probe of the training rows and the initial eval loss
do not depend on the LoRA config and are cached under
``advisor.embedded_data.cache_dir()/calibration/{probes,initial-eval}/``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import random
import shlex
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from advisor.calibrated import layer_group  # noqa: E402  (the one definition of attention vs mlp)
from calibration.frozen_prefix import (  # noqa: E402
    embedded_batch,
    first_adapted_block,
    prefix_states,
    scored_labels,
    scoring_only,
    skipping_prefix,
)

PROTOCOL = 1
EVAL_BATCH_SIZE = 16
LOSS_CURVE_EVERY = 10  # train_loss_curve: mean train loss of each window of this many steps
PROBE_SETTINGS = {  # the step-0 probe stored with every record
    "minilm": {"num_samples": 64, "batch_size": 8},
    "mpnet": {"num_samples": 64, "batch_size": 8},
    "smollm2": {"num_samples": 32, "batch_size": 8},
    "gemma3": {"num_samples": 32, "batch_size": 8},
}
PROBE_SEED = 0  # probe row sample, and the seq-cls head of the probed model
PROBE_VERSION = 2  # bump to recompute cached probes (2: natural_gain)
LAYER_GROUPS = ("attention", "mlp")
_SCALAR_PROBE_FIELDS_LEFT_OUT = ("singular_values", "noise_singular_values")


# --------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (see the module docstring for the protocol).

    Ranks: ``rank`` (uniform), or ``attention_rank`` and ``mlp_rank`` (0 = that type is not
    adapted), or ``rank_pattern`` (module name -> rank; modules not named are not adapted).
    ``eva_rho``: initialise with PEFT's EVA (needs a uniform ``rank``, which EVA redistributes).
    ``top_blocks``: adapt only the modules of the last ``top_blocks`` transformer blocks (a
    smaller adapter, and a backward pass that stops at the lowest adapted block). Scale: either ``alpha`` (the same for every module) or ``alpha_over_r``
    (alpha = alpha_over_r * r of each module); PEFT's scaling is alpha / r, or alpha / sqrt(r)
    with ``use_rslora``. ``train_size`` rows of the train split (from ``data_seed``);
    ``steps`` optimizer steps of ``batch_size`` rows of at most ``max_length`` tokens;
    ``seed`` sets the head init, LoRA init, dropout and data order.
    """

    model: str
    task: str
    train_size: int
    learning_rate: float
    steps: int
    batch_size: int
    max_length: int
    eval_rows: int
    rank: int | None = None
    attention_rank: int | None = None
    mlp_rank: int | None = None
    alpha: float | None = None
    alpha_over_r: float | None = None
    use_rslora: bool = False
    warmup_steps: int = 0
    eval_every: int = 0
    seed: int = 0
    data_seed: int = 0
    protocol: int = PROTOCOL
    rank_pattern: dict[str, int] | None = None
    eva_rho: float | None = None
    top_blocks: int | None = None

    def __post_init__(self):
        from calibration.models import MODELS
        from calibration.tasks import TASKS

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: use one of {', '.join(MODELS)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.model not in TASKS[self.task].models:
            raise ValueError(f"task {self.task!r} runs on {TASKS[self.task].models}, not on {self.model!r}")
        for name in ("train_size", "steps", "batch_size", "max_length", "eval_rows"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "seed", "data_seed"):
            _check_int(name, getattr(self, name), minimum=0)
        per_type = (self.attention_rank, self.mlp_rank)
        given = [self.rank is not None, per_type != (None, None), self.rank_pattern is not None]
        if sum(given) > 1:
            raise ValueError("give one of rank, attention_rank / mlp_rank, or rank_pattern")
        if self.rank is not None:
            _check_int("rank", self.rank, minimum=1)
        elif self.rank_pattern is not None:
            if not isinstance(self.rank_pattern, dict) or not self.rank_pattern:
                raise ValueError(f"rank_pattern must be a non-empty dict of module name -> rank, got {self.rank_pattern!r}")
            for name, rank in self.rank_pattern.items():
                _check_int(f"rank_pattern[{name!r}]", rank, minimum=0)
            if not any(self.rank_pattern.values()):
                raise ValueError("every rank in rank_pattern is 0: nothing to adapt")
        else:
            if None in per_type:
                raise ValueError("give rank, or both attention_rank and mlp_rank (0 = not adapted)")
            for name in ("attention_rank", "mlp_rank"):
                _check_int(name, getattr(self, name), minimum=0)
            if per_type == (0, 0):
                raise ValueError("attention_rank and mlp_rank are both 0: nothing to adapt")
        if (self.alpha is None) == (self.alpha_over_r is None):
            raise ValueError(f"give exactly one of alpha / alpha_over_r, got {self.alpha!r} / {self.alpha_over_r!r}")
        if self.top_blocks is not None:
            _check_int("top_blocks", self.top_blocks, minimum=1)
        if self.eva_rho is not None and self.rank is None:
            raise ValueError("eva_rho needs a uniform rank (EVA redistributes it)")
        for name in ("alpha", "alpha_over_r", "learning_rate", "eva_rho"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"use_rslora must be a bool, got {self.use_rslora!r}")
        if self.protocol != PROTOCOL:
            raise ValueError(f"config of protocol {self.protocol}; this code runs protocol {PROTOCOL}")

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """Every field, except the later-added optional ones while they are unset (so the run_ids
        of configs written before them stay the same)."""
        return {k: v for k, v in asdict(self).items() if not (k in _OMITTED_WHEN_UNSET and v is None)}

    def to_json(self) -> str:
        """Canonical JSON: the fields of :meth:`to_dict`, sorted keys, no spaces, floats as Python's repr."""
        data = {k: float(v) if k in _FLOAT_FIELDS and v is not None else v for k, v in self.to_dict().items()}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """First 12 hex digits of the SHA-1 of :meth:`to_json`."""
        return hashlib.sha1(self.to_json().encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RunConfig fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ derived
    def rank_of(self, group: str) -> int | None:
        """Nominal rank of the modules of ``group`` ("attention" / "mlp"); 0 = not adapted;
        None with a ``rank_pattern`` (ranks per module: :meth:`module_ranks`)."""
        if self.rank is not None:
            return self.rank
        if self.rank_pattern is not None:
            return None
        return self.attention_rank if group == "attention" else self.mlp_rank

    def module_ranks(self, targets: list[str]) -> dict[str, int]:
        """Nominal rank of every target module (0 = not adapted)."""
        if self.rank_pattern is None:
            ranks = {name: self.rank_of(layer_group(name)) for name in targets}
        else:
            unknown = sorted(set(self.rank_pattern) - set(targets))
            if unknown:
                raise ValueError(f"rank_pattern names modules the model does not have: {', '.join(unknown[:3])}")
            ranks = {name: self.rank_pattern.get(name, 0) for name in targets}
        if self.top_blocks is not None:
            from advisor.layers import block_depth

            lowest = max(block_depth(name) for name in targets) + 1 - self.top_blocks
            ranks = {name: rank if block_depth(name) >= lowest else 0 for name, rank in ranks.items()}
            if not any(ranks.values()):
                raise ValueError(f"top_blocks={self.top_blocks} leaves no module of the rank_pattern adapted")
        return ranks

    def alpha_for(self, rank: int) -> float:
        return float(self.alpha) if self.alpha is not None else float(self.alpha_over_r) * rank

    def alpha_of(self, group: str) -> float:
        return self.alpha_for(self.rank_of(group))

    def scaling_for(self, rank: int) -> float:
        """PEFT's multiplier of B @ A at ``rank``: alpha / r, or alpha / sqrt(r) with rsLoRA (0 at rank 0)."""
        if rank == 0:
            return 0.0
        return self.alpha_for(rank) / (math.sqrt(rank) if self.use_rslora else rank)

    def scaling_of(self, group: str) -> float:
        return self.scaling_for(self.rank_of(group))

    def command(self) -> str:
        """The shell command that reruns this config and prints its record (from the repository root)."""
        return f"python -m calibration.sweep --config {shlex.quote(self.to_json())}"

    def summary(self) -> str:
        if self.rank is not None:
            ranks = f"r={self.rank}"
        elif self.rank_pattern is not None:
            ranks = f"rank_pattern(sum r={sum(self.rank_pattern.values())})"
        else:
            ranks = f"r_attn={self.attention_rank},r_mlp={self.mlp_rank}"
        scale = f"alpha={self.alpha:g}" if self.alpha is not None else f"alpha/r={self.alpha_over_r:g}"
        if self.top_blocks is not None:
            ranks += f" top{self.top_blocks}"
        return (
            f"{self.model}/{self.task} n={self.train_size} {ranks} {scale}{' rslora' if self.use_rslora else ''} "
            f"{f'eva rho={self.eva_rho:g} ' if self.eva_rho else ''}lr={self.learning_rate:g} steps={self.steps} seed={self.seed}"
        )


_FLOAT_FIELDS = ("learning_rate", "alpha", "alpha_over_r", "eva_rho")
_OMITTED_WHEN_UNSET = ("rank_pattern", "eva_rho", "top_blocks")


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- the run
def train_run(config: RunConfig, *, log=None, threads: int = 1) -> dict:
    """Train one LoRA adapter as ``config`` says and return its record (a JSON-able dict).

    Record fields: ``run_id``, ``config`` (the full :class:`RunConfig`, enough to rebuild
    it), ``model``, ``task``, ``task_kind``, ``train_size`` (and ``train_rows_used``, rows
    left with a loss token, and ``train_loss_tokens``, their loss tokens at ``max_length``),
    ``lora`` (``r`` or per-type ranks, ``alpha``, ``use_rslora``, ``scaling`` per group, ``target_modules`` count), ``learning_rate``, ``steps``,
    ``batch_size``, ``max_length``, ``seed``, ``data_seed``, ``eval_rows``,
    ``initial_eval_loss`` (before training), ``eval_loss`` / ``eval_accuracy`` (seq-cls; None
    otherwise) after the last step, ``eval_curve`` ([step, loss, accuracy]),
    ``train_loss_curve`` ([last step of the window, mean train loss]), ``epochs``,
    ``train_seconds`` (the training loop, evaluations included), ``seconds_per_step``
    (optimizer steps only), ``trainable_params`` / ``total_params`` (PEFT's count),
    ``adapter_layers`` (per adapted module: ``name``, ``layer_type``, ``group``, ``depth``,
    ``r``, ``scaling``, ``effective_rank_BA`` / ``stable_rank_BA`` / ``energy_rank_90_BA`` of
    the trained B @ A, ``sigma_max`` and ``frobenius`` of scaling * B @ A), ``probe`` (the
    cached step-0 probe of the training rows: settings and, per target layer, the scalar
    fields of :class:`advisor.probe_pass.LayerStats`), ``versions``, ``date``, ``command``.
    ``log``: a callable that receives progress strings (None: silent). ``threads``: torch's CPU
    threads (the record's ``threads``; the loss agrees across thread counts to float rounding).
    """
    from peft import get_peft_model

    from advisor.data import make_batches
    from calibration.tasks import TASKS

    torch.set_num_threads(threads)
    say = log or (lambda message: None)
    task = TASKS[config.task]
    kind = _loss_kind(task)
    label_names = task.label_names()
    train_rows = training_rows(config)
    eval_rows = task.rows("eval")[: config.eval_rows]

    model, tokenizer = _load_base(config.model, task, config.seed)
    device = run_device()
    model.to(device)
    eval_batches = make_batches(
        eval_rows, tokenizer, task=kind, num_samples=len(eval_rows), batch_size=EVAL_BATCH_SIZE,
        max_length=config.max_length, seed=0, label_names=label_names,
    )
    initial = _cached_initial_eval(config, model, eval_batches, kind)
    probe_record = probe_features(config, train_rows)

    targets = _targets(model)
    lora_config = make_lora_config(config, targets, kind)
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora_config)
    if config.eva_rho is not None:
        _initialise_eva(peft_model, train_rows, tokenizer, kind, config, label_names)
    trainable, total = peft_model.get_nb_trainable_parameters()
    prefix = _frozen_prefix(config, peft_model, targets, kind, train_rows, tokenizer, label_names, eval_batches)
    states = prefix["states"] if prefix else None
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: min(1.0, (done + 1) / warmup) if warmup else 1.0
    )

    stream = _epoch_batches(train_rows, tokenizer, kind, config, label_names)
    curve, window, eval_curve = [], [], []
    step_seconds = 0.0
    started = time.perf_counter()
    peft_model.train()
    with skipping_prefix(peft_model, prefix["first_block"]) if prefix else contextlib.nullcontext():
        for step in range(1, config.steps + 1):
            epoch, batch = next(stream)
            step_started = time.perf_counter()
            loss = _mean_loss(peft_model, batch, kind, states)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_seconds += time.perf_counter() - step_started
            window.append(float(loss.detach()))
            if len(window) == LOSS_CURVE_EVERY or step == config.steps:
                curve.append([step, _round(sum(window) / len(window))])
                window = []
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                loss_value, accuracy = evaluate(peft_model, eval_batches, kind, states)
                eval_curve.append([step, _round(loss_value), _round(accuracy)])
                peft_model.train()
                say(f"step {step}/{config.steps}: train {curve[-1][1]:.4f} eval {loss_value:.4f}")
        eval_loss, eval_accuracy = evaluate(peft_model, eval_batches, kind, states)
    eval_curve.append([config.steps, _round(eval_loss), _round(eval_accuracy)])
    train_seconds = time.perf_counter() - started

    import peft
    import transformers

    return {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "model": config.model,
        "task": config.task,
        "task_kind": task.kind,
        "train_size": config.train_size,
        "train_rows_used": len(train_rows),
        "train_loss_tokens": training_loss_tokens(config)["loss_tokens"],
        "lora": _lora_summary(config, targets),
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "eval_rows": len(eval_rows),
        "initial_eval_loss": initial["loss"],
        "initial_eval_accuracy": initial["accuracy"],
        "eval_loss": _round(eval_loss),
        "eval_accuracy": _round(eval_accuracy),
        "eval_curve": eval_curve,
        "train_loss_curve": curve,
        "epochs": round(config.steps * config.batch_size / len(train_rows), 3),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(step_seconds / config.steps, 4),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "adapter_layers": adapter_layers(peft_model, targets),
        "probe": probe_record,
        "frozen_prefix": {key: prefix[key] for key in ("first_block", "seconds", "reused")} if prefix else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "device": device.type,
        "threads": threads,
        "autocast": None if autocast_dtype(device) is None else str(autocast_dtype(device)).removeprefix("torch."),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": config.command(),
    }


def _round(value):
    return None if value is None else float(f"{value:.6g}")


def _loss_kind(task) -> str:
    return "seq-cls" if task.kind == "seq-cls" else "causal-lm"


def training_rows(config: RunConfig) -> list[dict]:
    """The ``train_size`` train rows of the run, drawn with ``random.Random(data_seed)``."""
    from calibration.tasks import TASKS

    rows = TASKS[config.task].rows("train")
    if config.train_size > len(rows):
        raise ValueError(f"train_size {config.train_size} > the {len(rows)} train rows of task {config.task!r}")
    picked = random.Random(config.data_seed).sample(range(len(rows)), config.train_size)
    return [rows[i] for i in picked]


def _load_base(model_name: str, task, seed: int):
    """The calibration model (fp32) and its tokenizer; a seq-cls head initialised from ``seed``."""
    from advisor.loading import load_model
    from calibration.models import model_dir

    if task.kind == "seq-cls":
        return load_model(model_dir(model_name), task="seq-cls", num_labels=len(task.label_names()), seed=seed)
    return load_model(model_dir(model_name), task="causal-lm", seed=seed)


def _targets(model) -> list[str]:
    from advisor.layers import find_target_layers

    return list(find_target_layers(model))


def make_lora_config(config: RunConfig, targets: list[str], kind: str):
    """The ``peft.LoraConfig`` of a run over the target module names of the base model."""
    import re

    from peft import LoraConfig

    ranks = config.module_ranks(targets)
    adapted = [name for name in targets if ranks[name] > 0]
    common = {
        "target_modules": adapted,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": config.use_rslora,
        "task_type": "SEQ_CLS" if kind == "seq-cls" else "CAUSAL_LM",
    }
    if config.eva_rho is not None:
        from peft import EvaConfig

        common.update(init_lora_weights="eva", eva_config=EvaConfig(rho=config.eva_rho))
    if config.rank is not None:
        return LoraConfig(r=config.rank, lora_alpha=config.alpha_for(config.rank), **common)
    rank_pattern = {re.escape(name): ranks[name] for name in adapted}
    alpha_pattern = {re.escape(name): config.alpha_for(ranks[name]) for name in adapted}
    return LoraConfig(
        r=ranks[adapted[0]], lora_alpha=config.alpha_for(ranks[adapted[0]]),
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **common,
    )


def _lora_summary(config: RunConfig, targets: list[str]) -> dict:
    ranks = config.module_ranks(targets)
    adapted = {group: sum(layer_group(n) == group and r > 0 for n, r in ranks.items()) for group in LAYER_GROUPS}
    return {
        "r": config.rank,
        "attention_rank": config.rank_of("attention"),
        "mlp_rank": config.rank_of("mlp"),
        "alpha": config.alpha,
        "alpha_over_r": config.alpha_over_r,
        "alpha_by_group": {g: config.alpha_of(g) if config.rank_of(g) else None for g in LAYER_GROUPS},
        "use_rslora": config.use_rslora,
        "scaling_by_group": {g: config.scaling_of(g) if config.rank_of(g) else None for g in LAYER_GROUPS},
        "target_modules": sum(adapted.values()),
        "target_modules_by_group": adapted,
        "candidate_modules": len(targets),
    }


def _initialise_eva(peft_model, rows, tokenizer, kind, config: RunConfig, label_names) -> None:
    """PEFT's EVA initialisation over the run's first epoch of batches (input ids and mask only)."""
    from peft import initialize_lora_eva_weights

    stream = _epoch_batches(rows, tokenizer, kind, config, label_names)
    batches = []
    for epoch, batch in stream:
        if epoch > 0:
            break
        batches.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    initialize_lora_eva_weights(peft_model, batches, show_progress_bar=False)


def _epoch_batches(rows, tokenizer, kind, config: RunConfig, label_names):
    """Endless (epoch, batch) stream: a fresh permutation of ``rows`` per epoch, partial batches dropped."""
    from advisor.data import make_batches

    epoch = 0
    while True:
        batches = make_batches(
            rows, tokenizer, task=kind, num_samples=len(rows), batch_size=config.batch_size,
            max_length=config.max_length, seed=config.seed * 1_000_003 + epoch, label_names=label_names,
        )
        if len(batches) > 1 and batches[-1].num_rows < config.batch_size:
            batches = batches[:-1]
        for batch in batches:
            yield epoch, batch
        epoch += 1


def run_device() -> torch.device:
    """Where runs train: the first GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU that supports it (weights and optimizer stay fp32); None: plain fp32."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def _scored(model, batch, kind: str, states=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of what ``batch`` scores: seq-cls [rows, classes] and [rows]; causal LM
    [n, vocab] and [n] for its n labelled next tokens, the output layer run at those positions
    only (:func:`calibration.frozen_prefix.scoring_only`). With ``states``
    (:mod:`calibration.frozen_prefix`), from the stored states of its rows, inside ``skipping_prefix``."""
    device = next(model.parameters()).device
    kwargs = {}
    if states is None:
        kwargs["input_ids"] = batch.input_ids.to(device)
    else:
        kwargs["inputs_embeds"] = embedded_batch(states, batch).to(device)
    dtype = autocast_dtype(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        if kind == "seq-cls":
            return model(attention_mask=batch.attention_mask.to(device), **kwargs).logits, batch.labels.to(device)
        with scoring_only(model, batch.labels):
            logits = model(attention_mask=batch.attention_mask.to(device), use_cache=False, **kwargs).logits
        return logits[0], scored_labels(batch.labels).to(device)


def _summed_loss(model, batch, kind: str, states=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed cross-entropy, logits, count) of what ``batch`` scores (:func:`_scored`)."""
    logits, labels = _scored(model, batch, kind, states)
    return F.cross_entropy(logits.float(), labels, reduction="sum"), logits, labels.numel()


def _mean_loss(model, batch, kind: str, states=None) -> torch.Tensor:
    total, _, count = _summed_loss(model, batch, kind, states)
    return total / max(count, 1)


_PREFIX_MEMO: dict[tuple, dict] = {}


def _frozen_prefix(config: RunConfig, peft_model, targets, kind, train_rows, tokenizer, label_names,
                   eval_batches) -> dict | None:
    """For a causal LM with only its top blocks adapted: the first adapted block and every
    training and eval row's states entering it (:mod:`calibration.frozen_prefix`), computed once
    per process for the runs of a (model, task, rows, length, data seed); None otherwise (all
    blocks adapted, a classifier). EVA's initialisation runs before, through the full model."""
    from advisor.data import make_batches

    first_block = 0
    if config.top_blocks is not None and kind != "seq-cls":
        ranks = config.module_ranks(targets)
        first_block = first_adapted_block([name for name in targets if ranks[name] > 0])
    if first_block == 0:  # every block adapted, or a run the full forward serves
        _PREFIX_MEMO.clear()
        return None
    key = (config.model, config.task, config.train_size, config.max_length, config.data_seed, config.eval_rows,
           first_block)
    if key in _PREFIX_MEMO:
        return {**_PREFIX_MEMO[key], "reused": True}
    _PREFIX_MEMO.clear()  # one cell's states at a time (about 0.3 GB for SmolLM2 at 1,000 rows)
    started = time.perf_counter()
    train_batches = make_batches(train_rows, tokenizer, task=kind, num_samples=len(train_rows),
                                 batch_size=EVAL_BATCH_SIZE, max_length=config.max_length, seed=0,
                                 label_names=label_names)
    states = prefix_states(peft_model, [*train_batches, *eval_batches], first_block,
                           autocast=autocast_dtype(next(peft_model.parameters()).device))
    _PREFIX_MEMO[key] = {"first_block": first_block, "states": states,
                         "seconds": round(time.perf_counter() - started, 2)}
    return {**_PREFIX_MEMO[key], "reused": False}


@torch.no_grad()
def evaluate(model, batches, kind: str, states=None) -> tuple[float, float | None]:
    """(mean loss, accuracy or None): token-weighted for causal LM, row-weighted for seq-cls;
    ``states``: as in :func:`_scored`."""
    model.eval()
    total, count, correct = 0.0, 0, 0
    for batch in batches:
        loss, logits, n = _summed_loss(model, batch, kind, states)
        total += float(loss)
        count += n
        if kind == "seq-cls":
            correct += int((logits.argmax(-1) == batch.labels.to(logits.device)).sum())
    if count == 0:
        raise ValueError("the eval rows have no loss token")
    return total / count, (correct / count if kind == "seq-cls" else None)


# --------------------------------------------------------------------------- the trained adapter
@torch.no_grad()
def adapter_layers(peft_model, targets: list[str]) -> list[dict]:
    """Spectrum of every trained update scaling * B @ A (:func:`advisor.spectrum.product_singular_values`)."""
    from peft.tuners.lora import LoraLayer

    from advisor import spectrum
    from advisor.layers import block_depth, layer_types

    types = layer_types(targets)
    prefix = "base_model.model."
    layers = []
    for full_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        name = full_name[len(prefix):] if full_name.startswith(prefix) else full_name
        a = module.lora_A["default"].weight  # [r, in]
        scaling = float(module.scaling["default"])
        sv = spectrum.product_singular_values(module.lora_B["default"].weight, a)
        layers.append({
            "name": name,
            "layer_type": types.get(name, name.rsplit(".", 1)[-1]),
            "group": layer_group(name),
            "depth": block_depth(name),
            "r": int(a.shape[0]),
            "scaling": scaling,
            "effective_rank_BA": _round(spectrum.effective_rank(sv)),
            "stable_rank_BA": _round(spectrum.stable_rank(sv)),
            "energy_rank_90_BA": spectrum.energy_rank(sv, 0.90),
            "sigma_max": _round(scaling * float(sv[0])),
            "frobenius": _round(scaling * float(sv.norm())),
        })
    return layers


# --------------------------------------------------------------------------- cached measurements
def _cache_root() -> Path:
    from advisor.embedded_data import cache_dir

    return cache_dir() / "calibration"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    """Atomic write (:func:`advisor.files.write_atomically`); a read-only cache is silently skipped."""
    from advisor.files import write_atomically

    write_atomically(path, [json.dumps(data)])


def _key(data: dict) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _cached_initial_eval(config: RunConfig, model, eval_batches, kind: str) -> dict:
    """Eval loss (and accuracy) of the base model before training, cached on disk.

    Keyed by (model, task, eval_rows, max_length, protocol, device, autocast) and, for seq-cls, the seed (the
    random head is part of the base model there).
    """
    import transformers

    key = {
        "model": config.model, "task": config.task, "eval_rows": config.eval_rows, "max_length": config.max_length,
        "protocol": PROTOCOL, "head_seed": config.seed if kind == "seq-cls" else None,
        "device": next(model.parameters()).device.type,
        "autocast": str(autocast_dtype(next(model.parameters()).device)),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    path = _cache_root() / "initial-eval" / f"{config.model}-{config.task}-{_key(key)}.json"
    cached = _read_json(path)
    if cached is not None and cached.get("key") == key:
        return cached["value"]
    loss, accuracy = evaluate(model, eval_batches, kind)
    value = {"loss": _round(loss), "accuracy": _round(accuracy)}
    _write_json(path, {"key": key, "value": value})
    return value


def training_loss_tokens(config: RunConfig) -> dict:
    """What a run's training rows hold, counted with :func:`advisor.data.count_tokens` at the
    run's ``max_length`` (the tokens training saw): ``{"rows", "tokens", "loss_tokens"}``.
    Cached on disk."""
    import transformers

    from advisor.data import count_tokens
    from calibration.tasks import TASKS

    task = TASKS[config.task]

    key = {"model": config.model, "task": config.task, "train_size": config.train_size,
           "data_seed": config.data_seed, "max_length": config.max_length, "transformers": transformers.__version__}
    path = _cache_root() / "loss-tokens" / f"{config.model}-{config.task}-{_key(key)}.json"
    cached = _read_json(path)
    if cached is not None and cached.get("key") == key:
        return cached["value"]
    from advisor.loading import load_tokenizer
    from calibration.models import model_dir

    counted = count_tokens(training_rows(config), load_tokenizer(model_dir(config.model)),
                           task=_loss_kind(task), max_length=config.max_length)
    value = {"rows": counted.rows, "tokens": counted.tokens, "loss_tokens": counted.loss_tokens}
    _write_json(path, {"key": key, "value": value})
    return value


def probe_training_rows(config: RunConfig, train_rows: list[dict] | None = None):
    """The step-0 :class:`advisor.probe_pass.ProbeResult` of a run's training rows (not cached): the
    base model with its seq-cls head from ``PROBE_SEED``, ``PROBE_SETTINGS[model]``, the run's
    ``max_length``."""
    from advisor.probe_pass import probe
    from calibration.tasks import TASKS

    settings = PROBE_SETTINGS[config.model]
    task = TASKS[config.task]
    rows = train_rows if train_rows is not None else training_rows(config)
    if task.kind == "seq-cls":  # integer class ids: the probe's make_batches then needs no label list
        index = {label: k for k, label in enumerate(task.label_names())}
        rows = [{"text": row["text"], "label": index[row["label"]]} for row in rows]
    model, tokenizer = _load_base(config.model, task, PROBE_SEED)
    return probe(
        model, rows, tokenizer=tokenizer, task=_loss_kind(task), num_samples=settings["num_samples"],
        batch_size=settings["batch_size"], max_length=config.max_length, method="auto", seed=PROBE_SEED,
        progress=False,
    )


def probe_features(config: RunConfig, train_rows: list[dict] | None = None) -> dict:
    """The step-0 probe of the run's training rows, cached on disk (it ignores the LoRA config).

    :func:`advisor.probe_pass.probe` on the base model (seq-cls head initialised from
    ``PROBE_SEED``), ``PROBE_SETTINGS[model]`` rows from the training rows, the run's
    ``max_length``. Keyed by (model, task, train_size, data_seed, max_length, settings,
    versions). Returns the probe's settings and, per layer, the scalar fields of
    :class:`advisor.probe_pass.LayerStats` (the singular value lists are left out).
    """
    import transformers

    settings = PROBE_SETTINGS[config.model]
    key = {
        "model": config.model, "task": config.task, "train_size": config.train_size, "data_seed": config.data_seed,
        "max_length": config.max_length, "seed": PROBE_SEED, "version": PROBE_VERSION, **settings,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    path = _cache_root() / "probes" / f"{config.model}-{config.task}-{_key(key)}.json"
    cached = _read_json(path)
    if cached is not None and cached.get("key") == key:
        return cached["value"]
    result = probe_training_rows(config, train_rows)
    layers = {}
    for name, stats in result.layers.items():
        data = asdict(stats)
        for left_out in _SCALAR_PROBE_FIELDS_LEFT_OUT:
            data.pop(left_out)
        data = {k: _round(v) if isinstance(v, float) else v for k, v in data.items()}
        data["shape"] = list(data["shape"])
        data["group"] = layer_group(name)
        layers[name] = data
    value = {
        "method": result.method, "num_rows": result.num_rows, "tokens": result.tokens,
        "loss_tokens": result.loss_tokens, "batch_size": result.batch_size, "max_length": result.max_length,
        "seed": result.seed, "seconds": round(result.seconds, 2), "layers": layers,
    }
    _write_json(path, {"key": key, "value": value})
    return value
