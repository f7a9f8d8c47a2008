"""Research question 5: what 4-bit quantization does to the gradient picture (SmolLM2, NF4).

For each SmolLM2 calibration task, the same probe rows go through the fp32 base and through the
NF4 base (bitsandbytes, float32 compute, the base QLoRA trains). Per layer it records:

- ``erank_fp32`` / ``erank_4bit``: entropy effective rank of G and of G_q;
- ``overlap_k``: overlap of the top-k singular subspaces of G and G_q (mean squared cosine of
  the principal angles between the right singular vectors, 1 = the same directions), k = 8;
- ``quant_error``: ||E||_F / ||W||_F with E = W - dequant(quant(W)), and ``quant_error_erank``,
  the effective rank of E (computed once per layer, the weights do not depend on the task);
- ``repair_share``: ||D||^2 / ||G_q||^2 with D = G_q - G, the part of the 4-bit gradient that
  the full-precision gradient does not have (same rows, so no sampling noise in D);
- ``repair_alignment``: cos(-D, E); positive when a gradient step on D moves the quantized
  weights back toward the full-precision ones, i.e. when D is repairing quantization error.
A layer is flagged when ``repair_share`` > 0.5 (the repair component dominates its gradient).

Writes one record per task to ``calibration/results/quantization.jsonl`` (append-only, with the
command) and ``calibration/plots/quantization.png`` from all records.

    python -m calibration.quantization_study [--tasks stdlib-code wordnet-defs] [--samples 32] [--max-length 128]
    python -m calibration.quantization_study --plot-only
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from calibration import read_results, script_parser  # noqa: E402
from calibration.sweep import SMOLLM2_TASKS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quantization.jsonl"
PLOT = Path(__file__).resolve().parent / "plots" / "quantization.png"
TOP_K = 8
REPAIR_FLAG = 0.5


def subspace_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean squared cosine of the principal angles between the top-k right singular subspaces."""
    _, _, va = torch.linalg.svd(a.double(), full_matrices=False)
    _, _, vb = torch.linalg.svd(b.double(), full_matrices=False)
    return float((va[:k] @ vb[:k].T).square().sum() / k)


def quantization_errors(full, quantized) -> dict[str, dict]:
    """Per 4-bit layer: ||W - dequant(quant(W))|| / ||W|| and the effective rank of that error."""
    from advisor import spectrum
    from advisor.quantized import autograd_safe, linear4bit_modules, reference_dequantize_4bit

    errors = {}
    with autograd_safe(quantized):
        for name, module in linear4bit_modules(quantized).items():
            weight = full.get_submodule(name).weight.detach().float().cpu()
            error = weight - reference_dequantize_4bit(module).cpu()
            errors[name] = {
                "error": error,
                "quant_error": float(error.norm() / weight.norm()),
                "quant_error_erank": spectrum.effective_rank(torch.linalg.svdvals(error.double())),
            }
    return errors


def study_task(task_name: str, full, quantized, tokenizer, errors, samples: int, max_length: int) -> dict:
    from advisor import spectrum
    from advisor.layers import layer_types
    from advisor.probe_pass import gradients
    from calibration.tasks import TASKS

    rows = TASKS[task_name].rows("train")
    options = dict(tokenizer=tokenizer, num_samples=samples, batch_size=8, max_length=max_length, seed=0, progress=True)
    g_full = gradients(full, rows, **options)
    g_quant = gradients(quantized, rows, **options)
    types = layer_types(g_full)
    layers = {}
    for name, g in g_full.items():
        g, gq = g.cpu(), g_quant[name].cpu()
        d = gq - g
        e = errors[name]["error"]
        layers[name] = {
            "layer_type": types[name],
            "erank_fp32": spectrum.effective_rank(torch.linalg.svdvals(g.double())),
            "erank_4bit": spectrum.effective_rank(torch.linalg.svdvals(gq.double())),
            "overlap_k": subspace_overlap(g, gq, TOP_K),
            "quant_error": errors[name]["quant_error"],
            "quant_error_erank": errors[name]["quant_error_erank"],
            "repair_share": float(d.square().sum() / gq.square().sum()),
            "repair_alignment": float(-(d * e).sum() / (d.norm() * e.norm()).clamp_min(1e-30)),
        }
    return layers


def summarise(layers: dict) -> dict:
    """Per layer type: means of the per-layer numbers, and the flagged layers."""
    by_type: dict[str, list[dict]] = {}
    for stats in layers.values():
        by_type.setdefault(stats["layer_type"], []).append(stats)
    keys = ("erank_fp32", "erank_4bit", "overlap_k", "quant_error", "quant_error_erank", "repair_share", "repair_alignment")
    summary = {t: {k: round(sum(s[k] for s in group) / len(group), 4) for k in keys} for t, group in by_type.items()}
    for t, group in by_type.items():
        summary[t]["erank_change"] = round(summary[t]["erank_4bit"] - summary[t]["erank_fp32"], 4)
        summary[t]["flagged"] = sum(s["repair_share"] > REPAIR_FLAG for s in group)
        summary[t]["layers"] = len(group)
    return summary


def plot(records: list[dict], path: Path) -> None:
    from advisor.report import pyplot, save_figure

    plt = pyplot()

    types = list(records[0]["by_type"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(records)
    for i, record in enumerate(records):
        xs = [j + i * width for j in range(len(types))]
        by_type = record["by_type"]
        axes[0].bar(xs, [by_type[t]["erank_change"] / by_type[t]["erank_fp32"] * 100 for t in types], width,
                    label=f"{record['task']} ({record['samples']} rows)")
        axes[1].bar(xs, [by_type[t]["overlap_k"] for t in types], width)
        axes[2].bar(xs, [by_type[t]["repair_share"] for t in types], width)
    for ax, title in zip(axes, ("effective rank of G: 4-bit vs fp32 (% change)",
                                f"top-{TOP_K} gradient subspace overlap (1 = same)",
                                "share of G_q not in G: ||G_q - G||² / ||G_q||²")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(types))], types, rotation=30)
        ax.set_title(title, fontsize=10)
    axes[2].axhline(REPAIR_FLAG, color="k", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: probe on the NF4 base against the fp32 base, same rows", fontsize=11)
    save_figure(fig, path, dpi=110)


TYPE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def markdown_table(records: list[dict]) -> str:
    """The per-type table of calibration/README.md; each cell lists the tasks' values in record order."""
    def joined(t: str, value) -> str:
        return " / ".join(value(r["by_type"][t]) for r in records)

    lines = ["| type | eff. rank change of G (%) | top-8 subspace overlap | share of G_q not in G | "
             "cos(-(G_q - G), W - W_q) | ‖W - W_q‖/‖W‖ | eff. rank of W - W_q |",
             "|---|---|---|---|---|---|---|"]
    types = sorted(records[0]["by_type"], key=lambda t: TYPE_ORDER.index(t) if t in TYPE_ORDER else len(TYPE_ORDER))
    for t in types:
        first = records[0]["by_type"][t]
        lines.append("| " + " | ".join([
            t,
            joined(t, lambda v: f"{100 * v['erank_change'] / v['erank_fp32']:+.1f}"),
            joined(t, lambda v: f"{v['overlap_k']:.2f}"),
            joined(t, lambda v: f"{v['repair_share']:.2f}"),
            joined(t, lambda v: f"{v['repair_alignment']:.3f}"),
            f"{first['quant_error']:.3f}",
            f"{first['quant_error_erank']:.0f}",
        ]) + " |")
    shares = sorted(100 * layer["repair_share"] for r in records for layer in r["layers"].values())
    flagged = [v["flagged"] for r in records for v in r["by_type"].values()]
    layers = records[0]["by_type"][types[0]]["layers"]
    lines.append(f"\nShare of G_q not in G over single layers: {shares[0]:.0f}-{shares[-1]:.0f} %, median "
                 f"{statistics.median(shares):.0f} %. Flagged layers (share > {REPAIR_FLAG}) per type and task: "
                 f"{min(flagged)}-{max(flagged)} of {layers}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.quantization_study", __doc__, [
        "python -m calibration.quantization_study --table",
        "python -m calibration.quantization_study --plot-only",
        "python -m calibration.quantization_study --tasks stdlib-code --samples 32",
    ])
    parser.add_argument("--tasks", nargs="+", choices=SMOLLM2_TASKS, default=list(SMOLLM2_TASKS))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the stored records")
    parser.add_argument("--table", action="store_true",
                        help="print the README table of the records with these --samples / --max-length (no probing)")
    args = parser.parse_args(argv)
    if args.table:
        chosen = [r for r in read_results(RESULTS) if (r["samples"], r["max_length"]) == (args.samples, args.max_length)]
        print(markdown_table(chosen))
        return 0
    if not args.plot_only:
        import logging

        import peft  # noqa: F401  (imports bitsandbytes: quiet its optional-kernel warning first)

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        from advisor.loading import load_model
        from advisor.quantized import Quantization
        from calibration.models import model_dir

        full, tokenizer = load_model(model_dir("smollm2"))
        quantized, _ = load_model(model_dir("smollm2"), quantization=Quantization(bits=4))
        errors = quantization_errors(full, quantized)
        done = {(r["task"], r["samples"], r["max_length"]) for r in read_results(RESULTS)}
        for task in args.tasks:
            if (task, args.samples, args.max_length) in done:
                print(f"{task}: already in {RESULTS.name}", file=sys.stderr)
                continue
            layers = study_task(task, full, quantized, tokenizer, errors, args.samples, args.max_length)
            record = {
                "task": task, "model": "smollm2", "quantization": "nf4, compute float32",
                "samples": args.samples, "max_length": args.max_length, "top_k": TOP_K,
                "by_type": summarise(layers), "layers": layers,
                "versions": {"torch": torch.__version__},
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": "python -m calibration.quantization_study " + shlex.join(
                    ["--tasks", task, "--samples", str(args.samples), "--max-length", str(args.max_length)]),
            }
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({"task": task, "by_type": record["by_type"]}, indent=1))
    records = read_results(RESULTS)
    if records:
        plot(records, PLOT)
        print(f"wrote {PLOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
