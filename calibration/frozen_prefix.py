"""Train the top blocks of a causal LM without running the frozen blocks below them at every step,
nor its frozen output layer where no token is scored.

When only the last ``top_blocks`` blocks carry adapters, the blocks below hold no trainable
parameter: what they hand to the first adapted block is, for a given row, the same at every
step of every run on that row. :func:`prefix_states` runs them once per row (the model's own
forward, stopped as it enters the first adapted block); inside :func:`skipping_prefix` the model
runs from there: the blocks below are identities and the stored states come in as
``inputs_embeds``, so positions, attention masks, the adapted blocks, the final norm and the head
run exactly as in the full forward. The loss and the adapters' gradients are the full model's to
float rounding (tests/calibration/test_frozen_prefix.py). With the top 4 of SmolLM2's 30 blocks
adapted, a step costs 0.58x the full forward's on this CPU (``python bench/calibration_speed.py``).

The output layer maps each position's hidden state to the vocabulary (576 x 49,152 weights on
SmolLM2, 640 x 262,144 on Gemma 3: more than the 4 adapted blocks hold); an instruction task
scores only its completion tokens. Inside :func:`scoring_only`, the head runs at the positions
whose next token carries a label and nowhere else; the loss and gradients are unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class _Entered(Exception):
    """Raised by the hook on the first adapted block: the rest of the forward is not needed."""


class _Identity(nn.Module):
    """A decoder block that hands its input on unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def decoder_layers(model) -> nn.ModuleList:
    """The decoder's blocks of a causal LM, or of the PEFT model wrapping one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder().layers


def first_adapted_block(adapted_modules: list[str]) -> int:
    """The lowest block index among the adapted modules' names (``model.layers.26.mlp.up_proj`` -> 26)."""
    from advisor.layers import block_depth

    return min(block_depth(name) for name in adapted_modules)


def row_key(batch, row: int) -> tuple[int, ...]:
    """The token ids of ``row`` of a right-padded ``advisor.data.ProbeBatch`` (its real tokens only)."""
    length = int(batch.attention_mask[row].sum())
    return tuple(batch.input_ids[row, :length].tolist())


@torch.no_grad()
def prefix_states(model, batches, first_block: int,
                  autocast: torch.dtype | None = None) -> dict[tuple[int, ...], torch.Tensor]:
    """Each row's hidden states as they enter block ``first_block``: its token ids -> a
    [tokens, hidden] float32 CPU tensor. ``batches``: right-padded ``ProbeBatch``es; ``autocast``:
    the dtype the training forward autocasts to (None: none), so the stored states are the ones it
    would compute. The model's mode is restored after."""
    layers = decoder_layers(model)
    entering = {}

    def stop(module, args, kwargs):
        entering["states"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        raise _Entered

    handle = layers[first_block].register_forward_pre_hook(stop, with_kwargs=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    states = {}
    try:
        for batch in batches:
            try:
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                          use_cache=False)
            except _Entered:
                pass
            hidden = entering.pop("states")
            for row in range(batch.input_ids.shape[0]):
                key = row_key(batch, row)
                states[key] = hidden[row, : len(key)].float().cpu().clone()
    finally:
        handle.remove()
        model.train(was_training)
    return states


def embedded_batch(states: dict[tuple[int, ...], torch.Tensor], batch) -> torch.Tensor:
    """``inputs_embeds`` [B, T, hidden] for ``batch``: each row's stored states, zeros at its padding."""
    rows, length = batch.input_ids.shape
    hidden = next(iter(states.values())).shape[-1]
    embeds = torch.zeros(rows, length, hidden)
    for row in range(rows):
        key = row_key(batch, row)
        embeds[row, : len(key)] = states[key]
    return embeds


@contextmanager
def skipping_prefix(model, first_block: int):
    """Within the block, the decoder's blocks below ``first_block`` are identities; they are put
    back after, errors included."""
    layers = decoder_layers(model)
    originals = [layers[index] for index in range(first_block)]
    try:
        for index in range(first_block):
            layers[index] = _Identity()
        yield
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer


class _HeadAt(nn.Module):
    """An output layer applied at the positions of a [batch, tokens] bool mask only: [1, n, vocab]."""

    def __init__(self, head: nn.Module, positions: torch.Tensor):
        super().__init__()
        self.head, self.positions = head, positions

    def forward(self, hidden_states):
        return self.head(hidden_states[self.positions.to(hidden_states.device)]).unsqueeze(0)


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, tokens] bool: the positions whose next token carries a label (not -100)."""
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != -100
    return positions


def scored_labels(labels: torch.Tensor) -> torch.Tensor:
    """[n]: the labels the positions of :func:`scored_positions` predict, in the same (row-major) order."""
    shifted = labels[:, 1:]
    return shifted[shifted != -100]


@contextmanager
def scoring_only(model, labels: torch.Tensor):
    """Within the block, the causal LM's output layer maps only the positions of
    :func:`scored_positions` (``labels``: the batch's [batch, tokens] next-token labels), and the
    model's logits are [1, n, vocab] in the order of :func:`scored_labels`. The layer is put back
    after, errors included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    name = next(name for name, child in base.named_children() if child is head)
    setattr(base, name, _HeadAt(head, scored_positions(labels)))
    try:
        yield
    finally:
        setattr(base, name, head)
