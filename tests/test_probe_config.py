"""The probe's settings: one validated ProbeConfig, refused before a model loads, stored with the result."""

import pytest
import torch
from conftest import tiny_llama, token_rows
from transformers import BitsAndBytesConfig

from advisor.probe_config import ProbeConfig, quantization_from_bnb
from advisor.probe_pass import ProbeResult, gradients, probe
from advisor.quantized import Quantization


@pytest.mark.parametrize("options, message", [
    ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ({"memory_budget": True}, "memory_budget must be a positive integer, got True"),
    ({"method": "fast"}, "unknown method 'fast'"),
    ({"task": "seq2seq"}, "unknown task 'seq2seq'"),
    ({"target_modules": ["q_proj", ""]}, "target_modules must be a regex string or a list of module names"),
    ({"samples": 8}, r"unknown probe option\(s\) samples"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "choose one of load_in_4bit and load_in_8bit"),
    ({"load_in_4bit": True, "quantization_config": BitsAndBytesConfig(load_in_8bit=True)}, "give the quantization once"),
])
def test_a_bad_setting_is_refused_naming_it(options, message):
    with pytest.raises(ValueError, match=message):
        ProbeConfig.build(**options)


def test_settings_are_checked_before_the_model_loads(tmp_path):
    missing = tmp_path / "no-such-checkpoint"  # loading it would fail with "model path not found"
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        probe(str(missing), token_rows(4, 8), num_samples=0)


def test_a_bitsandbytes_config_and_the_loading_flags_give_the_same_quantization():
    flags = ProbeConfig.build(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype="bfloat16")
    bnb = ProbeConfig.build(quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))
    assert flags == bnb and flags.quantization == Quantization(4, "fp4", True, "bfloat16")
    for quantization in (Quantization(8), Quantization(4, "nf4", False, "float32")):
        assert quantization_from_bnb(quantization.bnb_config()) == quantization
    assert quantization_from_bnb(BitsAndBytesConfig()) is None
    with pytest.raises(ValueError, match="must be a transformers BitsAndBytesConfig"):
        ProbeConfig.build(quantization_config={"load_in_4bit": True})


def test_a_config_probes_as_its_options_do_and_is_stored_with_the_result(tmp_path):
    model, rows = tiny_llama(), token_rows(16, 12)
    config = ProbeConfig(num_samples=8, batch_size=4, max_length=10, method="exact", seed=3, target_modules=["q_proj"])
    by_config = probe(model, rows, config, progress=False)
    by_options = probe(model, rows, num_samples=8, batch_size=4, max_length=10, method="exact", seed=3,
                       target_modules=["q_proj"], progress=False)
    assert list(by_config.layers) == list(by_options.layers) == ["model.layers.0.self_attn.q_proj",
                                                                   "model.layers.1.self_attn.q_proj"]
    for name, stats in by_config.layers.items():
        assert stats.singular_values == by_options.layers[name].singular_values
    by_config.save(tmp_path / "probe.json")
    assert ProbeConfig.from_dict(ProbeResult.load(tmp_path / "probe.json").config) == config
    # gradients() reads the same settings: the same rows, so the spectrum of its G is the probe's
    (name, gradient), *_ = gradients(model, rows, config).items()
    reference = torch.linalg.svdvals(gradient.double())
    measured = torch.tensor(by_config.layers[name].singular_values, dtype=torch.float64)
    torch.testing.assert_close(measured, reference, rtol=1e-4, atol=1e-6 * float(reference[0]))
