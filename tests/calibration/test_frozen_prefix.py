"""Training the top blocks from stored prefix states gives the full forward's loss and gradients."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from advisor.data import make_batches
from calibration.frozen_prefix import (
    decoder_layers,
    embedded_batch,
    first_adapted_block,
    prefix_states,
    scoring_only,
    skipping_prefix,
)
from calibration.train import _mean_loss


def tiny_llama_4():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def tiny_gemma3_4():
    """Sliding-window and full attention alternating, as Gemma 3's blocks do (window 4 < the rows)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              max_position_embeddings=64,
                              layer_types=["sliding_attention", "full_attention"] * 2)
    return Gemma3ForCausalLM(config)


def next_token_loss(logits, labels):
    """The reference: summed cross-entropy of the full logits against the next-token labels (-100
    ignored), and their count."""
    shifted = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), shifted.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((shifted != -100).sum())


def loss_and_gradients(model, batches, states=None):
    """The token-mean loss over ``batches`` and the adapters' gradients, by the full forward or from ``states``."""
    model.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    for batch in batches:
        if states is None:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        else:
            logits = model(inputs_embeds=embedded_batch(states, batch), attention_mask=batch.attention_mask,
                           use_cache=False).logits
        loss, n = next_token_loss(logits, batch.labels)
        total, count = total + loss, count + n
    (total / count).backward()
    return float((total / count).detach()), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


TOP_TWO = [f"model.layers.{depth}.{kind}" for depth in (2, 3) for kind in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]


def padded_batches():
    generator = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(3, 128, (length,), generator=generator).tolist()} for length in (5, 16, 9, 12, 7, 14)]
    batches = make_batches(rows, None, num_samples=len(rows), batch_size=3, max_length=32, seed=0)
    assert batches[0].attention_mask.sum(1).unique().numel() > 1  # padded rows in a batch
    return rows, batches


def assert_prefix_states_serve(peft_model, rows, batches, first_block: int) -> None:
    """The adapters' loss and gradients from stored states entering ``first_block`` equal the full forward's,
    and the blocks below it neither run nor stay removed."""
    peft_model.train()
    full_loss, full_gradients = loss_and_gradients(peft_model, batches)
    states = prefix_states(peft_model, batches, first_block)
    assert peft_model.training and len(states) == len(rows)
    assert {tuple(v.shape) for v in states.values()} == {(len(r["input_ids"]), 32) for r in rows}
    lower = list(decoder_layers(peft_model))[:first_block]
    calls = []
    hooks = [layer.register_forward_hook(lambda *args: calls.append(1)) for layer in lower]
    with skipping_prefix(peft_model, first_block):
        stored_loss, stored_gradients = loss_and_gradients(peft_model, batches, states)
    assert not calls  # the frozen blocks did not run
    for hook in hooks:
        hook.remove()
    assert list(decoder_layers(peft_model))[:first_block] == lower  # put back
    assert stored_loss == pytest.approx(full_loss, rel=1e-6)
    assert stored_gradients.keys() == full_gradients.keys() and len(full_gradients) == 2 * len(TOP_TWO)
    for name, gradient in full_gradients.items():
        assert gradient.abs().max() > 0
        torch.testing.assert_close(stored_gradients[name], gradient, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("build", [tiny_llama_4, tiny_gemma3_4], ids=["llama", "gemma3"])
def test_stored_prefix_states_give_the_full_forwards_loss_and_adapter_gradients(build):
    peft_model = get_peft_model(build(), LoraConfig(r=4, lora_alpha=8, target_modules=TOP_TWO, init_lora_weights=False))
    assert first_adapted_block(TOP_TWO) == 2
    assert_prefix_states_serve(peft_model, *padded_batches(), 2)


def test_prefix_states_serve_adapters_that_eva_initialised():
    """PEFT's EVA initialises A from the full model's inputs and redistributes the ranks; training
    from the stored states then gives the full forward's loss and gradients (B set non-zero so
    that every adapter weight has a gradient)."""
    from peft import EvaConfig, initialize_lora_eva_weights
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=4, lora_alpha=8, target_modules=TOP_TWO, init_lora_weights="eva", eva_config=EvaConfig(rho=2.0))
    peft_model = get_peft_model(tiny_llama_4(), config)
    rows, batches = padded_batches()
    initialize_lora_eva_weights(peft_model, [{"input_ids": b.input_ids, "attention_mask": b.attention_mask} for b in batches],
                                show_progress_bar=False)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
    assert len({layer.r["default"] for layer in layers}) > 1  # EVA moved rank between layers
    torch.manual_seed(2)
    for layer in layers:
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    assert_prefix_states_serve(peft_model, rows, batches, 2)


def test_the_prefix_is_put_back_after_an_error():
    model = tiny_llama_4()
    lower = list(decoder_layers(model))[:3]
    with pytest.raises(RuntimeError, match="boom"), skipping_prefix(model, 3):
        raise RuntimeError("boom")
    assert list(decoder_layers(model))[:3] == lower


@pytest.mark.parametrize("build", [tiny_llama_4, tiny_gemma3_4], ids=["llama", "gemma3"])
def test_the_head_run_at_scored_positions_only_gives_the_full_heads_loss_and_gradients(build):
    model = build()
    targets = [f"model.layers.{depth}.mlp.down_proj" for depth in (2, 3)]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    generator = torch.Generator().manual_seed(2)
    rows = [{"prompt_ids": torch.randint(3, 128, (prompt,), generator=generator).tolist(),
             "completion_ids": torch.randint(3, 128, (completion,), generator=generator).tolist()}
            for prompt, completion in ((6, 2), (11, 1), (4, 5), (9, 3))]
    batches = make_batches([{"input_ids": r["prompt_ids"] + r["completion_ids"]} for r in rows], None,
                           num_samples=len(rows), batch_size=4, max_length=32, seed=0)
    batch = batches[0]
    for row in range(batch.labels.shape[0]):  # score the completions only, as an instruction task does
        length = int(batch.attention_mask[row].sum())
        completion = next(len(r["completion_ids"]) for r in rows
                          if r["prompt_ids"] + r["completion_ids"] == batch.input_ids[row, :length].tolist())
        batch.labels[row, : length - completion] = -100
    peft_model.train()
    full_loss, full_gradients = loss_and_gradients(peft_model, [batch])

    head = peft_model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    peft_model.zero_grad(set_to_none=True)
    loss = _mean_loss(peft_model, batch, "causal-lm")
    loss.backward()
    hook.remove()
    assert seen == [torch.Size([11, 32])]  # the head saw the 11 scored positions only
    assert peft_model.get_output_embeddings() is head  # put back
    assert float(loss.detach()) == pytest.approx(full_loss, rel=1e-6)
    for name, gradient in full_gradients.items():
        torch.testing.assert_close(dict(peft_model.named_parameters())[name].grad, gradient, rtol=1e-4, atol=1e-7)


def test_the_head_is_put_back_after_an_error():
    model = tiny_llama_4()
    head = model.get_output_embeddings()
    with pytest.raises(RuntimeError, match="boom"), scoring_only(model, torch.full((2, 5), -100)):
        assert model.get_output_embeddings() is not head
        raise RuntimeError("boom")
    assert model.get_output_embeddings() is head
