"""The ``lora-advisor`` command line.

Exit codes: 0 success; 2 bad input (last stderr line ``error: ...``, no traceback);
1 internal failure. Output directories appear whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from advisor.probe_config import METHODS, TASKS, ProbeConfig
from advisor.quantized import COMPUTE_DTYPES, QUANT_TYPES

EXAMPLES = """\
examples:
  lora-advisor advise                          # embedded SmolLM2 + standard-library code data
  lora-advisor advise --model ./my-llama --data train.jsonl --out advice
  lora-advisor advise --data chats.jsonl --samples 128 --max-length 512 --json
  lora-advisor advise --model ./my-llama --load-in-4bit --data train.jsonl   # QLoRA: probe the NF4 base
  lora-advisor advise --data train.jsonl --budget r=16 --alpha-mode rslora   # spend what uniform r=16 would
  lora-advisor advise --data train.jsonl --compare my_adapter/adapter_config.json
  lora-advisor probe --model ./minilm --task seq-cls --data news.csv --out probe.json
  lora-advisor report advice                   # redraw advice/report.html
"""


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint directory, .gguf file or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", help=".jsonl/.json/.csv/.parquet/.txt file (default: embedded standard-library code pairs)")
    parser.add_argument("--task", choices=TASKS, help="default: causal-lm")
    parser.add_argument("--samples", type=int, help=f"rows drawn for the probe (default: {ProbeConfig.num_samples}; "
                        "advise: from as many as the calibration's cells were probed with, 32 for causal LMs and 64 "
                        "for classifiers today, growing until the spectra converge; given, exactly this many)")
    parser.add_argument("--max-samples", type=int,
                        help="grow the probe, doubling its rows, up to this many until the median layer's noise share "
                             "is at most 20%% or stops falling (advise's default without --samples: 256)")
    parser.add_argument("--max-probe-seconds", type=float,
                        help="stop growing the probe after this many seconds of data pass (advise's default: 300)")
    parser.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size,
                        help="rows per probe batch (default: %(default)s)")
    parser.add_argument("--max-length", type=int, help=f"tokens kept per row (default: {ProbeConfig.max_length}; "
                        "advise: as the calibration's cells were probed, 128 for causal LMs and 64 for classifiers today)")
    parser.add_argument("--method", choices=METHODS, default=ProbeConfig.method,
                        help="gradient accumulator (default: auto: exact while it fits --max-memory, else a sketch that fits)")
    parser.add_argument("--max-memory", default="2GB", help="memory for the probe's accumulators, e.g. 512MB, 8GB (default: 2GB)")
    parser.add_argument("--target-modules", nargs="+", help="module names or suffixes to probe (default: all linear layers in the blocks)")
    quantization = parser.add_argument_group("quantized base (QLoRA): quantize the checkpoint while loading it")
    quantization.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit, as QLoRA trains")
    quantization.add_argument("--load-in-8bit", action="store_true", help="bitsandbytes 8-bit (LLM.int8)")
    quantization.add_argument("--bnb-4bit-quant-type", choices=QUANT_TYPES, default="nf4", help="4-bit data type (default: nf4)")
    quantization.add_argument("--bnb-4bit-double-quant", action="store_true", help="quantize the block scales too")
    quantization.add_argument("--bnb-4bit-compute-dtype", choices=tuple(COMPUTE_DTYPES), default="float32",
                              help="dtype of the 4-bit matmuls (default: float32)")
    quantization.add_argument("--compare-full-precision", action="store_true",
                              help="also probe the same rows on the full-precision checkpoint and flag layers whose "
                                   "4-bit gradient is mostly quantization (one more pass)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    parser.add_argument("--seed", type=int, default=ProbeConfig.seed, help="sampling seed (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the probe's settings, the table's legend, the full decision and every reason")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-advisor",
        description="Measure each layer's gradient spectrum on your data and advise LoRA ranks and alpha.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    advise = commands.add_parser(
        "advise", help="probe, then write a PEFT adapter_config.json with per-layer ranks",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(advise)
    advice = advise.add_argument_group("advice")
    advice.add_argument("--budget", help="trainable parameters to spend (e.g. 2M, 500k) or r=N for what uniform rank N "
                                         "costs on the same layers (default: what the evidence supports: the "
                                         "calibration's pooled level where it beat the probe's rule leave one task "
                                         "out, else the probe's rule, or a users' rule (Tinker's tokens rule, "
                                         "axolotl's thresholds) where that did better on the calibration's sweeps; "
                                         "the advice says which)")
    advice.add_argument("--train-size", type=int, help="rows you will train on (default: the rows of --data)")
    advice.add_argument("--alpha-mode", choices=("fixed", "scale", "rslora", "calibrated"), default="fixed",
                        help="fixed: alpha = 32 on every layer with PEFT's alpha / r, so a layer's step does not "
                             "grow with its rank, and the advice states the learning rate where the calibration "
                             "measured it; scale: "
                             "alpha = 2r (the habit); rslora: use_rslora with one alpha; calibrated: alpha = the "
                             "calibration's best scaling at each rank x r (needs a calibration with an alpha "
                             "model) (default: fixed)")
    # the library's defaults (advisor.rules.MIN_RANK / MAX_RANK), repeated here so that --help
    # need not import peft; tests/test_cli.py keeps the two equal
    advice.add_argument("--min-rank", type=int, default=2, help="smallest advised rank (default: %(default)s)")
    advice.add_argument("--max-rank", type=int, default=64, help="largest advised rank (default: %(default)s)")
    advice.add_argument("--calibration", default="auto",
                        help="a calibration file, 'none' for the uncalibrated rule, or 'auto' (default): the one "
                             "shipped with the package for the model's kind (causal LM or classifier), the "
                             "uncalibrated rule when none covers the probe")
    advice.add_argument("--compare", metavar="ADAPTER_CONFIG",
                        help="your planned adapter_config.json (or its directory), shown beside the advice")
    advise.add_argument("--out", default="advice",
                        help="output directory (default: ./advice): adapter_config.json, advice.json, probe.json, "
                             "axolotl.yaml, lora_config.py, report.html and its plots")
    probe = commands.add_parser(
        "probe", help="measure gradient spectra only and save them as JSON",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(probe)
    probe.add_argument("--out", help="write the ProbeResult JSON to this file")
    audit = commands.add_parser(
        "audit", help="after training: how much of its rank each LoRA layer uses, conditioning, dominance, alerts",
        epilog="examples:\n  lora-advisor audit ./my-adapter\n  lora-advisor audit ./my-adapter --base ./my-llama --json\n"
               "  lora-advisor audit ./my-adapter --suggest smaller   # ranks that keep 90% of each update's energy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("adapter", help="a saved PEFT adapter directory (adapter_config.json + weights)")
    audit.add_argument("--base", help="its base model (default: base_model_name_or_path in adapter_config.json)")
    audit.add_argument("--energy", type=float, default=0.9, help="energy share the suggested ranks keep (default: 0.9)")
    audit.add_argument("--suggest", metavar="DIR", help="write the suggested config (adapter_config.json, axolotl.yaml, "
                                                        "lora_config.py) to DIR")
    audit.add_argument("--json", action="store_true", help="print the audit as JSON")
    report = commands.add_parser("report", help="redraw report.html and its plots in an advise --out directory")
    report.add_argument("directory", help="the --out directory of lora-advisor advise")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # bitsandbytes (imported by peft) looks for an optional CPU kernel on the Hub when imported, and
    # it and the `kernels` package log warnings when the Hub is offline or the kernel missing
    for upstream in ("bitsandbytes", "kernels"):
        logging.getLogger(upstream).setLevel(logging.ERROR)
    if not sys.stderr.isatty():  # a log file or a pipe: one line per stage, no progress bars (ours skip themselves)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as error:  # an internal failure: keep the traceback for a bug report
        import traceback

        traceback.print_exc()
        print(f"error: internal failure: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.command == "audit":
        return _audit(args)
    if args.command == "report":
        from advisor.report import write_html_report

        print(f"wrote {write_html_report(args.directory)}")
        return 0
    from advisor.files import atomic_directory
    from advisor.loading import load_model
    from advisor.report import LEGEND, QUANTIZATION_LEGEND, layer_type_table, probe_summary

    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    data = args.data
    if data is not None and not os.path.exists(data):
        raise ValueError(f"data file not found: {data}")
    num_labels = None
    if args.task == "seq-cls":
        from advisor.data import label_names_of, load_rows

        names = label_names_of(load_rows(data))
        num_labels = len(names) if names else None
    # the probe's settings, validated before the model loads; unset ones (None) are left to the
    # probe's defaults, or to advise's calibration protocol
    settings = dict(
        target_modules=args.target_modules, task=args.task, num_samples=args.samples, max_samples=args.max_samples,
        max_seconds=args.max_probe_seconds, batch_size=args.batch_size,
        max_length=args.max_length, method=args.method, seed=args.seed, memory_budget=parse_memory(args.max_memory),
    )
    config = ProbeConfig.build(
        **{name: value for name, value in settings.items() if value is not None},
        load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit, bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.bnb_4bit_double_quant, bnb_4bit_compute_dtype=args.bnb_4bit_compute_dtype,
    )
    quantization = config.quantization
    options = {**settings, "progress": True}
    if args.compare_full_precision:
        if quantization is None or args.task == "seq-cls":
            raise ValueError("--compare-full-precision needs --load-in-4bit or --load-in-8bit and a causal LM")
        model = args.model  # the probe loads the checkpoint twice: quantized, then in full precision
        options.update(
            compare_full_precision=True, load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit,
            bnb_4bit_quant_type=args.bnb_4bit_quant_type, bnb_4bit_use_double_quant=args.bnb_4bit_double_quant,
            bnb_4bit_compute_dtype=args.bnb_4bit_compute_dtype, method="exact" if args.method == "auto" else args.method,
        )
    else:
        model, options["tokenizer"] = load_model(
            args.model, task=args.task, num_labels=num_labels, trust_remote_code=args.trust_remote_code,
            seed=args.seed, quantization=quantization,
        )
    if args.command == "probe":
        from advisor.probe_pass import probe

        result = probe(model, data, **{k: v for k, v in options.items() if v is not None})  # unset: the defaults
        if args.out:
            result.save(args.out)
        if args.json:
            print(json.dumps(result.to_dict()))
        else:
            print(probe_summary(result))
            print(layer_type_table(result))
            print(LEGEND)
            if args.compare_full_precision:
                print(QUANTIZATION_LEGEND)
        return 0

    from advisor.compare import compare_with
    from advisor.recommend import advise
    from advisor.report import write_html_report

    planned = _planned_config(args.compare) if args.compare else None
    advice = advise(model, data, budget=args.budget, train_size=args.train_size, alpha_mode=args.alpha_mode,
                    min_rank=args.min_rank, max_rank=args.max_rank, calibration=args.calibration,
                    return_advice=True, **options)
    comparison = compare_with(advice, planned) if planned is not None else None
    with atomic_directory(args.out) as staging:
        advice.save(staging)
        write_html_report(staging)
    if args.json:
        print(json.dumps({**advice.to_dict(), "comparison": comparison}))
        return 0
    from advisor.report import headline

    summary = advice.to_dict()
    print("\n".join(headline(summary)) + "\n")
    print(layer_type_table(advice.probe, advice.ranks))
    if args.verbose:
        print(probe_summary(advice.probe))
        print(LEGEND)
    if args.compare_full_precision:
        print(QUANTIZATION_LEGEND)
    print()
    if args.verbose:
        print(f"decision: {advice.calibration}")
    # at most five, the dataset's size and the users' rules among them
    short = [r for r in advice.reasons if not r.startswith("the rank level")]
    data = [r for r in short if r.startswith("your data:")]
    shown = advice.reasons if args.verbose else [r for r in short if r not in data][:5 - len(data)] + data
    for reason in shown:
        print(f"- {reason}")
    if advice.loss_curve:
        from advisor.report import loss_curve_text

        print(f"- {loss_curve_text(advice.to_dict())}")
    if comparison is not None:
        print(_comparison_text(comparison))
    config = advice.config
    print(f"wrote {args.out}/: adapter_config.json (r={config.r}, lora_alpha={config.lora_alpha:g}, "
          f"{len(config.rank_pattern)} layers in rank_pattern), advice.json, probe.json, axolotl.yaml, "
          f"lora_config.py, report.html and its {', '.join(sorted(p.name for p in Path(args.out).glob('*.png')))}")
    return 0


def _audit(args) -> int:
    from advisor.adapter_audit import audit
    from advisor.files import atomic_directory

    if not os.path.isdir(args.adapter):
        raise ValueError(f"adapter directory not found: {args.adapter}")
    result = audit(args.adapter, args.base, energy=args.energy)
    if args.suggest:
        from advisor import exports

        config = result.suggested_config()
        with atomic_directory(args.suggest) as staging:
            config.save_pretrained(staging)
            (staging / "axolotl.yaml").write_text(exports.axolotl_yaml(config))
            (staging / "lora_config.py").write_text(exports.python_snippet(config))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    rows = [["layer", "r", "eff.rank", "util.", "kappa A", "kappa B", "dominance", "||dW||/||W||", "suggested r"]]
    for layer in result.layers:
        rows.append([layer.name, str(layer.nominal_rank), f"{layer.effective_rank:.1f}", f"{layer.utilization:.0%}",
                     f"{layer.kappa_A:.3g}", f"{layer.kappa_B:.3g}",
                     "-" if layer.dominance is None else f"{layer.dominance:.3f}",
                     "-" if layer.update_ratio is None else f"{layer.update_ratio:.2g}", str(layer.suggested_rank)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    summary = result.summary
    print(f"\n{summary['layers']} layers; mean utilisation {summary['mean_utilization']:.0%}; health (1 / max kappa) "
          f"{summary['health']:.3g}; max dominance "
          f"{'-' if summary['max_dominance'] is None else format(summary['max_dominance'], '.3f')}; suggested ranks keep "
          f"{args.energy:.0%} of each update's energy with {summary['suggested_params']:,} of "
          f"{summary['trainable_params']:,} parameters")
    for alert in result.alerts:
        print(f"{alert.severity.upper()} {alert.code} {alert.layer}: {alert.message}")
    if args.suggest:
        print(f"wrote the suggested config to {args.suggest}/")
    return 0


def parse_memory(text: str) -> int:
    """Bytes from "512MB", "8GB", "2GiB" or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"--max-memory {text!r} is not a size like 512MB or 8GB")
    value = float(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2)]
    if value <= 0:
        raise ValueError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def _planned_config(path: str):
    """The user's LoraConfig from an adapter_config.json file or its directory."""
    from peft import LoraConfig

    location = path[: -len("adapter_config.json")] or "." if path.endswith("adapter_config.json") else path
    if not os.path.exists(os.path.join(location, "adapter_config.json")):
        raise ValueError(f"--compare: no adapter_config.json at {path}")
    try:
        config = LoraConfig.from_pretrained(location)
    except Exception as error:  # a JSON that is not a PEFT adapter config
        raise ValueError(f"--compare: {path} is not a PEFT LoRA adapter config ({error})") from None
    if not isinstance(config, LoraConfig):  # PEFT returns the class the file names (IA3Config, ...)
        raise ValueError(f"--compare: {path} is a {type(config).__name__}, not a LoRA adapter config")
    if isinstance(config.target_modules, str) and config.target_modules != "all-linear":
        try:
            re.compile(config.target_modules)
        except re.error as error:
            raise ValueError(f"--compare: target_modules {config.target_modules!r} is not a valid regex ({error})") from None
    return config


def _comparison_text(comparison: dict) -> str:
    lines = [f"\nyour config: {comparison['planned_params']:,} trainable parameters; the advice: "
             f"{comparison['advised_params']:,}"]
    for layer_type, entry in comparison["by_type"].items():
        verdict = []
        if entry["over_provisioned"]:
            verdict.append(f"{entry['over_provisioned']} over-provisioned")
        if entry["under_provisioned"]:
            verdict.append(f"{entry['under_provisioned']} under-provisioned")
        lines.append(f"  {layer_type}: your r {entry['planned_rank']} vs advised {entry['advised_rank']} "
                     f"({entry['factor']:g}x){': ' + ', '.join(verdict) if verdict else ''} of {entry['layers']}")
    lines += [f"  warning: {warning}" for warning in comparison.get("scale_warnings", [])]
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
