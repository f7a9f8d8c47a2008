"""Model sources: checkpoint directories, GGUF, offline hub ids, and their errors."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_llama

from advisor.loading import DEFAULT_MODEL, embedded_gguf_path, load_model, model_task


def test_checkpoint_directory_loads_model_and_tokenizer(tiny_checkpoint):
    model, tokenizer = load_model(tiny_checkpoint)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tokenizer is not None and tokenizer("def f(): pass")["input_ids"]


def test_seq_cls_task_builds_a_reproducible_head(tiny_checkpoint):
    first, _ = load_model(tiny_checkpoint, task="seq-cls", num_labels=4, seed=1)
    second, _ = load_model(tiny_checkpoint, task="seq-cls", num_labels=4, seed=1)
    assert model_task(first) == "seq-cls" and first.score.out_features == 4
    assert torch.equal(first.score.weight, second.score.weight)


def test_model_in_memory_is_returned_untouched():
    model = tiny_llama()
    loaded, tokenizer = load_model(model)
    assert loaded is model and tokenizer is None
    assert model_task(tiny_bert()) == "seq-cls" and model_task(model) == "causal-lm"


@pytest.mark.parametrize(
    "source, message",
    [
        ("./no/such/checkpoint", "model path not found"),
        ("/tmp/definitely-missing.gguf", "model file not found"),
        ("some-org/not-in-the-cache", "cannot load model"),
    ],
)
def test_missing_models_get_a_clear_error(source, message):
    with pytest.raises(ValueError, match=message):
        load_model(source)


def test_corrupt_checkpoint_and_directory_without_config(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="cannot load model"):
        load_model(corrupt)


@pytest.mark.slow
def test_gguf_file_and_cached_default_give_the_same_model(smollm2):
    default_model, _ = smollm2
    gguf_model, gguf_tokenizer = load_model(embedded_gguf_path())
    assert gguf_tokenizer.chat_template
    ids = torch.tensor([gguf_tokenizer("def add(a, b):\n    return a + b")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(gguf_model(ids).logits, default_model(ids).logits)
    assert default_model.name_or_path.endswith(DEFAULT_MODEL)
    # the GGUF model names a checkpoint that from_pretrained reads back (an advised adapter_config.json's base)
    from transformers import AutoModelForCausalLM

    assert (Path(gguf_model.name_or_path) / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(gguf_model.name_or_path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, default_model(ids).logits)


def test_hub_id_resolves_offline_from_the_local_cache(tmp_path, monkeypatch, tiny_checkpoint):
    """A hub id is read from the Hugging Face cache layout, never downloaded."""
    import shutil

    snapshot = tmp_path / "hub" / "models--some-org--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_checkpoint, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model, tokenizer = load_model("some-org/tiny-llama")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer is not None
