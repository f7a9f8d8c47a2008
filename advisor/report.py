"""Stage 7 of the data path: human-readable summaries of a probe and its advice.

Text tables for the terminal, and ``report.html`` with its PNG plots (gradient spectra per
layer type, a depth x layer-type heatmap of the advised ranks, trainable parameters against
uniform ranks), rendered from ``advice.json`` and ``probe.json`` so that ``lora-advisor
report DIR`` can redraw it.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from advisor.calibrated import USERS_RULES
from advisor.probe_pass import ProbeResult
from advisor.quantized import QUANTIZATION_SHARE_FLAG


def layer_type_table(result: ProbeResult, ranks: dict[str, int] | None = None) -> str:
    """One row per layer type: shape, mean spectral measures, noise, and the advised ranks."""
    rows = layer_type_rows(result, ranks)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def layer_type_rows(result: ProbeResult, ranks: dict[str, int] | None = None) -> list[list[str]]:
    """The header and one row of strings per layer type (see :func:`layer_type_table`)."""
    header = ["layer type", "n", "shape", "eff.rank", "stable", "E90", "signal", "noise", "conv.", "gain"]
    gain_shares = result.natural_gain_shares()
    compared = any(s.quantization_share is not None for s in result.layers.values())
    if compared:
        header.append("q-share (flagged)")
    if ranks is not None:
        header.append("advised r")
    rows = [header]
    for layer_type, summary in result.by_type().items():
        members = [s for s in result.layers.values() if s.layer_type == layer_type]
        row = [
            layer_type,
            str(summary["layers"]),
            "x".join(map(str, members[0].shape)),
            f"{summary['effective_rank']:.1f}",
            f"{summary['stable_rank']:.1f}",
            f"{summary['energy_rank_90']:.1f}",
            signal_text(summary),
            f"{100 * summary['noise_fraction']:.0f}%",
            f"{100 * summary['converged']:.0f}%",
            f"{100 * gain_shares[layer_type]:.0f}%" if gain_shares else "-",
        ]
        if compared:
            shares = [m.quantization_share for m in members if m.quantization_share is not None]
            flagged = sum(share > QUANTIZATION_SHARE_FLAG for share in shares)
            row.append(f"{100 * sum(shares) / len(shares):.0f}% ({flagged})" if shares else "-")
        if ranks is not None:
            advised = sorted(ranks[m.name] for m in members)
            row.append(str(advised[0]) if advised[0] == advised[-1] else f"{advised[0]}-{advised[-1]}")
        rows.append(row)
    return rows


def signal_text(summary: dict) -> str:
    """A layer type's signal effective rank, with how many of its layers have no signal direction."""
    if summary["signal_effective_rank"] is None:
        return "none"
    none = f" ({summary['no_signal']} none)" if summary["no_signal"] else ""
    return f"{summary['signal_effective_rank']:.1f}{none}"


def probe_summary(result: ProbeResult) -> str:
    """One line: what was probed, how, and for how long."""
    growth = result.growth or {}
    grown = (f" (grown from {growth['checks'][0][0]}: {growth['stopped']})" if growth.get("checks") else "")
    return (
        f"{result.model}{f' ({result.quantization})' if result.quantization else ''}: {len(result.layers)} layers, "
        f"{result.num_rows} rows{grown}, {result.tokens} tokens "
        f"({result.loss_tokens} with loss{'' if result.base_loss is None else f', base loss {result.base_loss:.2f} nats each'}), "
        f"method={result.method}, {result.seconds:.1f} s"
    )


QUANTIZATION_LEGEND = (
    "q-share: share of the 4-bit base's gradient energy that the full-precision gradient does not have "
    f"(flagged: layers above {QUANTIZATION_SHARE_FLAG:.0%};\nthere the 4-bit gradient is mostly not the "
    "full-precision one, so advice measured on the full-precision model would not carry over)."
)

LEGEND = (
    "eff.rank: entropy effective rank of the gradient; stable: stable rank; E90: directions holding "
    "90% of its energy;\nsignal: effective rank of the directions above the split-half noise edge (mean over the "
    "layers that have one; (k none): k layers have none); "
    "noise: share of the gradient energy that is sampling noise;\nconv.: layers whose noise share is "
    "at most 20% (more rows would change the ranks less);\ngain: the type's share of the layers' summed "
    "natural gain (gradient energy over the layer's Fisher scale, noise removed;\nit ranks planted changes "
    "near the top where the plain gradient does not, but does not set the ranks: calibration/README.md)."
)


# --------------------------------------------------------------------------- report.html
SPECTRUM_VALUES_PLOTTED = 128


def plot_spectra(result: ProbeResult, path: Path) -> None:
    """Mean normalised singular values sigma_i / sigma_1 of G per layer type, log scale."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for layer_type in result.by_type():
        curves = [s.singular_values[:SPECTRUM_VALUES_PLOTTED] for s in result.layers.values() if s.layer_type == layer_type]
        length = min(len(c) for c in curves)
        mean = [sum(c[i] / c[0] for c in curves if c[0] > 0) / len(curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, label=layer_type)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1 (mean over layers)")
    ax.set_title("Gradient spectrum per layer type")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def loss_curve_text(advice: dict) -> str:
    """One line: the predicted relative eval loss at each uniform rank, its error factor, and
    whether the curve's whole spread (highest over lowest) lies within that error."""
    curve = ", ".join(f"r={r}: {v:.3f}" for r, v in advice["loss_curve"].items())
    factor = advice.get("loss_curve_error")
    error = f" (leave-one-task-out error: x/÷ {factor:.3f})" if factor else ""
    values = list(advice["loss_curve"].values())
    if factor and max(values) / min(values) <= factor:
        error += "; the whole curve lies within that error, so it does not tell these ranks apart"
    return f"predicted eval loss over the best uniform rank's, at uniform rank {curve}{error}"


def plot_rank_heatmap(advice: dict, path: Path) -> None:
    """Advised rank for every (block, layer type), colour on a log2 scale, numbers written in."""
    plt = pyplot()
    layers = [a for a in advice["layers"].values() if a["depth"] is not None]
    types = list(dict.fromkeys(a["layer_type"] for a in layers))
    depths = sorted({a["depth"] for a in layers})
    grid = [[math.nan] * len(depths) for _ in types]
    for a in layers:
        grid[types.index(a["layer_type"])][depths.index(a["depth"])] = math.log2(a["rank"])
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(depths) + 2), 0.45 * len(types) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, str(2 ** round(value)), ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(types)), types)
    ax.set_xticks(range(len(depths)), depths, fontsize=7)
    ax.set_xlabel("block")
    ax.set_title("Advised LoRA rank")
    low, high = math.floor(min(map(min, grid))), math.ceil(max(map(max, grid)))
    ticks = list(range(low, high + 1))
    bar = fig.colorbar(image, ax=ax, label="rank (log scale)", ticks=ticks)
    bar.ax.set_yticklabels([str(2**t) for t in ticks])
    save_figure(fig, path)


def plot_parameters(advice: dict, path: Path) -> None:
    """Trainable parameters of the advice against uniform ranks over the same layers."""
    plt = pyplot()
    labels = ["advised"] + [f"r={r}" for r in advice["uniform_params"]]
    values = [advice["trainable_params"]] + list(advice["uniform_params"].values())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, [v / 1e6 for v in values], color=["tab:orange"] + ["tab:gray"] * (len(values) - 1))
    ax.set_ylabel("trainable parameters (M)")
    ax.set_title("Adapter size: advice against uniform ranks")
    save_figure(fig, path)


def plot_loss_curve(advice: dict, path: Path) -> None:
    """The calibrated prediction of eval loss against uniform rank (over the best rank's),
    with its leave-one-task-out error band, and the advised adapter's size marked as a uniform rank."""
    plt = pyplot()
    curve = {int(r): v for r, v in advice["loss_curve"].items()}
    ranks = sorted(curve)
    values = [curve[r] for r in ranks]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(ranks, values, marker="o", color="tab:blue", label="predicted")
    factor = advice.get("loss_curve_error")
    if factor:
        ax.fill_between(ranks, [v / factor for v in values], [v * factor for v in values], color="tab:blue",
                        alpha=0.15, label="leave-one-task-out error")
    at_16 = advice["uniform_params"].get("16")  # the advice dict's keys are strings (JSON)
    if at_16:
        ax.axvline(16 * advice["trainable_params"] / at_16, color="tab:orange", linestyle="--",
                   label="advised size (as a uniform rank)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("uniform LoRA rank")
    ax.set_ylabel("eval loss / best rank's eval loss")
    ax.set_title("Predicted eval loss against rank")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Lay ``fig`` out, write it to ``path`` (its folder made if missing) and free it."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


_SHAPE_TEXT = {"calibration": "spread over the layers by the calibrated per-layer model",
               "probe": "spread by each layer's signal effective rank", "uniform": "the same on every layer"}


def headline(advice: dict) -> list[str]:
    """The two lines a practitioner reads first (from ``Advice.to_dict()``): what to set, and how
    sure the advice is and why."""
    config = advice["adapter_config"]
    layers = advice["layers"].values()
    types = list(dict.fromkeys(layer["layer_type"] for layer in layers))
    ranks = sorted({layer["rank"] for layer in layers})
    spread = f"ranks {ranks[0]}-{ranks[-1]} by layer via rank_pattern" if len(ranks) > 1 else "the same rank everywhere"
    rslora = ", use_rslora=True" if config.get("use_rslora") else ""
    total = advice.get("model_parameters")
    share = f" ({100 * advice['trainable_params'] / total:.2f} % of the model's {total / 1e6:,.1f}M)" if total else ""
    what = (f"Set r={config['r']}, lora_alpha={config['lora_alpha']:g}{rslora} on {', '.join(types)} "
            f"({spread}): {advice['trainable_params']:,} trainable parameters{share}.")
    rate = advice.get("learning_rate") or {}
    if rate.get("value") is not None:
        others = sorted({r for r in (rate.get("by_rank") or {}).values() if r != rate["value"]})
        every_block = set((rate.get("every_block") or {}).values())
        if others and every_block == {rate["value"]}:
            ranks = ", ".join(sorted(rate["every_block"], key=int))
            what += (f" Train at learning rate {rate['value']:g} (measured: the best on average over ranks, and at r = "
                     f"{ranks} with every block adapted; with the top {rate.get('top_blocks')} blocks some did best at "
                     f"{', '.join(f'{r:g}' for r in others)}).")
        elif others:
            what += (f" Train at learning rate {rate['value']:g} (measured: the best on average over ranks; some did "
                     f"best at {', '.join(f'{r:g}' for r in others)}).")
        elif rate.get("by_rank"):
            what += f" Train at learning rate {rate['value']:g} (measured; the best at every rank tried under alpha / r)."
        else:
            what += f" Train at learning rate {rate['value']:g} (measured under alpha / r)."
    elif rate:
        what += " Learning rate: not measured for this setting (see the reasons)."
    return [what, f"How sure: {how_sure(advice)}."]


def how_sure(advice: dict) -> str:
    """One phrase on how far to trust the advice, with the reason, read from its ``decision``."""
    decision = advice.get("decision")
    if not decision:  # an advice.json written before decisions were stored
        return f"as its decision says: {advice['calibration']}"
    level, shape = decision.get("level"), _SHAPE_TEXT.get(decision.get("shape"), "")
    rules = advice.get("users_rules") or {}
    if level == "budget" and advice.get("budget"):
        text = f"the size is your budget ({advice['budget']:,} parameters); the ranks are {shape}"
    elif level == "rank model":
        text = f"calibrated: {decision['calibration']}'s rank model sets the size; the ranks are {shape}"
    elif level == "tokens rule":
        evidence = decision.get("level_evidence") or {}
        ours, theirs = evidence.get("level"), evidence.get("baseline")
        traded = bool(ours and theirs and ours["regret_noises"] > theirs["regret_noises"])  # won on parameters only
        beat = (f"{evidence['beat']}, the cheapest rule you could apply by hand within one seed noise of the best of "
                f"them ({ours['regret_noises']:.2f} seed noises above "
                f"each task's best rank at {ours['params_vs_r16']:.2f}x r=16's parameters, against "
                f"{theirs['regret_noises']:.2f} at {theirs['params_vs_r16']:.2f}x)" if ours and theirs
                else "the rules you could apply by hand")
        verb = "which traded a little more loss for fewer parameters than" if traded else "which beat"
        counted = (f", its parameters counted per {evidence['blocks']} blocks as the sweeps adapted them"
                   if evidence.get("blocks") else "")
        text = (f"measured on other data: the size is the calibrated tokens rule's (r={decision['level_rank']} for your "
                f"data's loss tokens{counted}), {verb} {beat} on the calibration's capacity sweeps, each task held out; "
                f"the ranks are {shape}")
    elif level == "best users' rule":
        text = (f"rough, since the size is {decision['level_rule']}'s (r={decision['level_rank']} for your data), the best "
                "of the rules you could apply by hand on the calibration's capacity sweeps (the calibrated tokens rule "
                f"did not beat it); the ranks are {shape}")
    elif level == "pooled level":
        text = (f"rough, since the size is uniform r={decision['level_rank']}'s, the smallest rank within one seed noise "
                f"of the best on the calibration's sweeps, not a prediction for your data; the ranks are {shape}")
    elif level == "users' rule":
        rank = rules.get(USERS_RULES[decision["level_rule"]])
        spent = "" if rank == decision["level_rank"] else f", spent as r={decision['level_rank']} within the rank bounds"
        text = (f"rough, since the size is {decision['level_rule']}'s (r={rank} for your data{spent}), which did "
                f"better on the calibration's sweeps than the advisor's own level; the ranks are {shape}")
    elif decision.get("calibration"):  # the probe's rule sets the size, the calibration the spread
        text = ("rough, since the size comes from the probe's uncalibrated rule (each layer's signal effective rank); "
                f"the ranks are {shape}")
    else:
        text = "rough, uncalibrated: each layer gets its signal effective rank rounded up to a power of two"
        if decision.get("declined"):
            text += " (a calibration was considered and not used: see advice.json's decision)"
    if decision.get("outside"):
        text += f"; {len(decision['outside'])} of the probe's features lie outside what the calibration was fitted on"
    return text


def _budget_text(advice: dict) -> str:
    """The report's budget: the user's, else the calibrated level's (``level_rank``), else none."""
    if advice.get("budget"):
        return f"{advice['budget']:,} parameters"
    if advice.get("level_rank"):
        decision = advice.get("decision") or {}
        source = {"tokens rule": "the calibrated tokens rule", "best users' rule": decision.get("level_rule"),
                  "users' rule": decision.get("level_rule")}.get(decision.get("level"), "the calibration's pooled level")
        return f"none given; {source} spends uniform r = {advice['level_rank']}'s parameters"
    return "none (what the evidence supports)"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _calibration_used(advice: dict) -> bool:
    """Whether a calibration shaped the advice: its ``decision`` says (an advice.json written
    before decisions were stored: its label does)."""
    decision = advice.get("decision")
    if decision:
        return decision.get("calibration") is not None
    return not advice["calibration"].startswith("uncalibrated")


def write_html_report(directory: str | Path) -> Path:
    """Render ``report.html`` and its PNGs in ``directory`` from its advice.json and probe.json."""
    directory = Path(directory)
    for required in ("advice.json", "probe.json"):
        if not (directory / required).is_file():
            raise ValueError(f"{directory} has no {required}: is it the --out directory of lora-advisor advise?")
    try:
        advice = json.loads((directory / "advice.json").read_text())
        result = ProbeResult.load(directory / "probe.json")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{directory}: cannot read advice.json / probe.json ({error})") from None
    plot_spectra(result, directory / "spectra.png")
    plot_rank_heatmap(advice, directory / "ranks.png")
    plot_parameters(advice, directory / "parameters.png")
    if advice.get("loss_curve"):
        plot_loss_curve(advice, directory / "loss_curve.png")
        curve_section = ("<h2>Predicted eval loss against rank</h2>"
                         f"<p>{html.escape(loss_curve_text(advice))}</p><img src=\"loss_curve.png\" alt=\"loss curve\">")
    elif not _calibration_used(advice):
        curve_section = ("<h2>Predicted eval loss against rank</h2><p>Not available: this advice is uncalibrated "
                         "(the loss curve comes from a calibration file, <code>--calibration</code>).</p>")
    else:
        curve_section = ("<h2>Predicted eval loss against rank</h2><p>Not shown: the calibration's loss-curve model "
                         "is not better than its baseline (the median curve of the tasks it was fitted on) by the "
                         "margin every model it uses must clear in leave-one-task-out validation, scored on "
                         "the curve's shape (how much worse each rank is than the others).</p>")
    ranks = {name: layer["rank"] for name, layer in advice["layers"].items()}
    layer_rows = [["layer", "shape", "need", "rank", "interval", "alpha", "params", "noise", "converged"]]
    for name, layer in advice["layers"].items():
        stats = result.layers[name]
        layer_rows.append([name, "x".join(map(str, layer["shape"])), f"{layer['need']:.2f}", str(layer["rank"]),
                           f"{layer['rank_low']}-{layer['rank_high']}", f"{layer['alpha']:g}", f"{layer['params']:,}",
                           f"{100 * stats.noise_fraction:.0f}%", "yes" if stats.converged else "no"])
    size_rows = [["adapter", "trainable parameters", "of the model"]]
    total = advice.get("model_parameters")
    for label, value in [("advised", advice["trainable_params"])] + [(f"uniform r={r}", v) for r, v in advice["uniform_params"].items()]:
        size_rows.append([label, f"{value:,}", f"{100 * value / total:.2f}%" if total else "-"])
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in advice["reasons"])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>LoRA rank advice: {html.escape(result.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}code{{background:#f4f4f4}}</style></head><body>
<h1>LoRA rank advice</h1>
{"".join(f"<p><b>{html.escape(line)}</b></p>" for line in headline(advice))}
<p>{html.escape(probe_summary(result))}</p>
<h2>Why</h2><ul>{reasons}</ul>
<h2>Per layer type</h2>{_html_table(layer_type_rows(result, ranks))}
<p>{html.escape(LEGEND)}</p>
{curve_section}
<h2>Adapter size</h2>{_html_table(size_rows)}<img src="parameters.png" alt="parameters">
<h2>Advised ranks by depth</h2><img src="ranks.png" alt="advised ranks">
<h2>Gradient spectra</h2><img src="spectra.png" alt="gradient spectra">
<h2>How the advice was made</h2>
<p>{html.escape(advice["calibration"])}; alpha mode <code>{html.escape(advice["alpha_mode"])}</code>;
budget {_budget_text(advice)}; training rows {advice["train_size"]:,}.</p>
<h2>Every layer</h2>{_html_table(layer_rows)}
<p>Files: <code>adapter_config.json</code> (PEFT), <code>lora_config.py</code>, <code>axolotl.yaml</code>,
<code>advice.json</code>, <code>probe.json</code>. Redraw with <code>lora-advisor report {html.escape(str(directory))}</code>.</p>
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page)
    return path
