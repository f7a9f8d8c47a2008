"""Tiny random models built from configs (no download) and fixture calibrations, shared by the tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advisor.layers import Conv1D, find_target_layers

VOCAB = 128


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config)


def tiny_bert(seed: int = 0, num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def token_rows(num_rows: int, length: int, seed: int = 0, with_class_labels: bool = False):
    """Pre-tokenized rows of equal length (no padding); optional class labels in 0..2."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (num_rows, length), generator=generator)
    rows = [{"input_ids": row.tolist()} for row in ids]
    if with_class_labels:
        for i, row in enumerate(rows):
            row["labels"] = i % 3
    return rows


def autograd_weight_gradients(model: nn.Module, rows, task: str) -> dict[str, torch.Tensor]:
    """Autograd's weight gradient [out, in] of the mean loss over ``rows`` (one batch)."""
    reference = copy.deepcopy(model).eval()
    ids = torch.tensor([row["input_ids"] for row in rows])
    logits = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    if task == "seq-cls":
        loss = F.cross_entropy(logits, torch.tensor([row["labels"] for row in rows]))
    else:
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    gradients = {}
    for name, module in find_target_layers(reference).items():
        gradients[name] = module.weight.grad.T if isinstance(module, Conv1D) else module.weight.grad
    return gradients


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct and its tokenizer (converted once, cached)."""
    from advisor.loading import load_model

    return load_model(None)


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def build_tiny_tokenizer(vocab_size: int = 8192):
    """A byte-level BPE tokenizer trained in about a second on a third of the embedded data's rows
    as Alpaca prompts + completions (on those rows at 64 tokens it leaves about as many with a
    completion token as SmolLM2's 49,152-token vocabulary does), with SmolLM2's special tokens
    (<|im_start|>, <|im_end|> as EOS and pad, <|endoftext|>) and a ChatML chat template: what the
    unit tests need from a tokenizer, without the embedded model's package."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from advisor.data import ALPACA_PROMPT
    from advisor.embedded_data import stdlib_code_rows

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rows = stdlib_code_rows()[::3]
    bpe.train_from_iterator([ALPACA_PROMPT.format(instruction=row["instruction"]) + row["output"] for row in rows],
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def save_tiny_checkpoint(path, tokenizer, hidden_size: int = 32, intermediate_size: int = 64):
    """A tiny random Llama saved as a checkpoint directory with ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A tiny random Llama (widths 32 / 64) with the tiny tokenizer."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint_64(tmp_path_factory, tiny_tokenizer):
    """Like ``tiny_checkpoint`` with widths 64 / 128, multiples of bitsandbytes' 4-bit block."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama-64"), tiny_tokenizer, 64, 128)


CALIBRATIONS = Path(__file__).resolve().parent / "data" / "calibrations"
"""Calibrations fitted on synthetic sweeps whose answers are known (``python -m calibration.synthetic``
writes them; its docstring says what each one learned)."""


def probe_layers(signal: float) -> dict:
    """Probe features of a 2-block model whose signal effective rank is ``signal`` (scale-free rest):
    the layers of the records the fixture calibrations were fitted on (``calibration.synthetic``)."""
    layers = {}
    for depth in range(2):
        for name, shape in (("self_attn.q_proj", (64, 64)), ("mlp.down_proj", (64, 128))):
            layers[f"model.layers.{depth}.{name}"] = {
                "shape": list(shape), "depth": depth, "effective_rank": 10.0 + signal, "stable_rank": 2.0,
                "signal_effective_rank": signal, "noise_fraction": 0.1, "subspace_overlap": 0.8, "rank_growth": 1.1,
            }
    return layers


def calibration_description(name: str) -> dict:
    """The JSON description of the fixture calibration ``name``."""
    return json.loads((CALIBRATIONS / f"{name}.json").read_text())


def fixture_calibration(name: str, directory: Path, as_name: str | None = None, **changes) -> Path:
    """Copy the fixture calibration ``name`` into ``directory`` as ``as_name`` (default: its name),
    its description's top-level entries replaced by ``changes``; the path of its JSON file."""
    as_name = as_name or name
    shutil.copyfile(CALIBRATIONS / f"{name}.joblib", directory / f"{as_name}.joblib")
    metadata = {**calibration_description(name), **changes, "name": as_name}
    (directory / f"{as_name}.json").write_text(json.dumps(metadata, indent=1) + "\n")
    return directory / f"{as_name}.json"
