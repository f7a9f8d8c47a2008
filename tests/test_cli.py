"""The lora-advisor command line: outputs PEFT can load, exit codes, and clean failures."""

import json
import os

import pytest
from peft import LoraConfig

from advisor.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_advise_writes_a_config_peft_loads(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "advice"
    code, stdout, stderr = run_cli(capsys, "advise", "--model", str(tiny_checkpoint), "--samples", "8",
                                   "--max-length", "64", "--calibration", "none", "--out", str(out))
    assert code == 0
    # stderr is not a terminal here: a line per stage, no progress bars
    assert "probe: " in stderr and "%|" not in stderr and "\r" not in stderr
    assert "q_proj" in stdout and "uncalibrated" in stdout
    # the headline comes first: what to set, then how sure, read from the stored decision
    first, second = stdout.splitlines()[:2]
    advice = json.loads((out / "advice.json").read_text())
    assert advice["decision"]["level"] == "probe's rule" and advice["decision"]["shape"] == "probe"
    assert first.startswith(f"Set r={advice['adapter_config']['r']}, lora_alpha=") and "q_proj" in first
    assert f"{advice['trainable_params']:,} trainable parameters" in first
    assert second.startswith("How sure: rough, uncalibrated")
    assert "decision:" not in stdout and "entropy effective rank" not in stdout  # diagnostics only with --verbose
    config = LoraConfig.from_pretrained(out)
    probe = json.loads((out / "probe.json").read_text())
    advised = {name: layer["rank"] for name, layer in json.loads((out / "advice.json").read_text())["layers"].items()}
    assert set(advised) == set(probe["layers"])
    # idiomatic: every layer of each type is adapted, so target_modules names the types, as people write them
    assert sorted(config.target_modules) == sorted({name.rsplit(".", 1)[-1] for name in probe["layers"]})
    assert set(config.rank_pattern) == set(config.alpha_pattern)
    # PEFT's own get_peft_model builds exactly the advised ranks from it
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), config)
    built = {name.removeprefix("base_model.model."): module.r["default"] for name, module in peft_model.named_modules()
             if isinstance(module, LoraLayer)}
    assert built == advised


def test_probe_json_output(tmp_path, capsys, tiny_checkpoint):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Question {i}?", "completion": f" Answer {i}."}) for i in range(6)))
    code, stdout, _ = run_cli(capsys, "probe", "--model", str(tiny_checkpoint), "--data", str(data),
                              "--samples", "6", "--batch-size", "2", "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["num_rows"] == 6 and len(result["layers"]) == 14


@pytest.mark.parametrize(
    "file_name, content, extra, message",
    [
        ("missing.jsonl", None, [], "data file not found"),
        ("empty.jsonl", b"", [], "data file is empty"),
        ("blob.txt", b"\x00\x01\xff\xfe" * 50, [], "not UTF-8"),
        ("rows.jsonl", b'{"id": 1, "score": 2}\n', [], "no usable text field"),
        (None, None, ["--target-modules", "query"], "match no linear layer"),
        (None, None, ["--samples", "0"], "--samples must be positive"),
    ],
    ids=["missing", "empty", "binary", "no-text", "bad-targets", "zero-samples"],
)
def test_bad_input_exits_2_with_one_error_line_and_no_output(
    tmp_path, capsys, tiny_checkpoint, file_name, content, extra, message
):
    out = tmp_path / "advice"
    argv = ["advise", "--model", str(tiny_checkpoint), "--samples", "4", "--out", str(out), *extra]
    if file_name is not None:
        if content is not None:
            (tmp_path / file_name).write_bytes(content)
        argv += ["--data", str(tmp_path / file_name)]
    code, _, stderr = run_cli(capsys, *argv)
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in stderr
    assert not out.exists()


def test_a_fresh_process_prints_only_the_error_line(tmp_path):
    """Importing peft imports bitsandbytes, which logs warnings about an optional Hub kernel: the
    CLI keeps them out of its output, so a bad input gets exactly one line."""
    import subprocess
    import sys

    command = "import sys; from advisor.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", command, "audit", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path} is not a saved PEFT adapter (no adapter_config.json)\n"


def test_missing_model_exits_2(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "advise", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2 and "model path not found" in stderr.strip().splitlines()[-1]


def test_load_in_4bit_probes_the_quantized_base(capsys, tiny_checkpoint_64):
    code, stdout, _ = run_cli(capsys, "probe", "--model", str(tiny_checkpoint_64), "--load-in-4bit",
                              "--bnb-4bit-quant-type", "fp4", "--samples", "8", "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["quantization"] == "4-bit FP4, compute float32" and len(result["layers"]) == 14


def cpu_kernel_dequantizes_wrongly(checkpoint) -> bool:
    """Whether bitsandbytes' kernel gets this checkpoint's 32-wide 4-bit layers wrong here
    (it does on CPUs with AVX512-BF16, not on others), against the independent reference."""
    import bitsandbytes as bnb

    from advisor.loading import load_model
    from advisor.quantized import DEQUANTIZATION_TOLERANCE, Quantization, reference_dequantize_4bit

    quantized, _ = load_model(checkpoint, quantization=Quantization(bits=4))
    layer = quantized.model.layers[0].self_attn.q_proj  # in_features 32, half a 64-value block
    kernel = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    reference = reference_dequantize_4bit(layer)
    return float((kernel - reference).norm() / reference.norm()) > DEQUANTIZATION_TOLERANCE


def test_load_in_4bit_refuses_what_bitsandbytes_gets_wrong(tmp_path, capsys, tiny_checkpoint):
    # the widths of 32 of this checkpoint are not a multiple of bitsandbytes' 64-value block
    out = tmp_path / "advice"
    code, _, stderr = run_cli(capsys, "advise", "--model", str(tiny_checkpoint), "--load-in-4bit",
                              "--samples", "4", "--out", str(out))
    if cpu_kernel_dequantizes_wrongly(tiny_checkpoint):
        last = stderr.strip().splitlines()[-1]
        assert code == 2 and "dequantizes the 4-bit layer" in last and not out.exists()
    else:  # a CPU whose kernel is right: nothing to refuse
        assert code == 0 and (out / "adapter_config.json").exists()


def test_compare_full_precision_adds_the_quantization_share_column(capsys, tiny_checkpoint_64):
    code, stdout, _ = run_cli(capsys, "probe", "--model", str(tiny_checkpoint_64), "--load-in-4bit",
                              "--compare-full-precision", "--samples", "8")
    assert code == 0 and "q-share (flagged)" in stdout and "q-share:" in stdout


def test_the_rank_bounds_default_to_the_librarys():
    """--min-rank / --max-rank repeat advisor.recommend's defaults (the CLI does not import peft for --help)."""
    from advisor.cli import build_parser
    from advisor.recommend import MAX_RANK, MIN_RANK

    args = build_parser().parse_args(["advise"])
    assert (args.min_rank, args.max_rank) == (MIN_RANK, MAX_RANK)
