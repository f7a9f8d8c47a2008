"""Stage 7 of the data path: human-readable summaries of a probe and its advice."""

from __future__ import annotations

from advisor.probe import ProbeResult
from advisor.quantized import QUANTIZATION_SHARE_FLAG


def layer_type_table(result: ProbeResult, ranks: dict[str, int] | None = None) -> str:
    """One row per layer type: shape, mean spectral measures, noise, and the advised ranks."""
    header = ["layer type", "n", "shape", "eff.rank", "stable", "E90", "signal", "noise", "conv."]
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
            f"{summary['signal_effective_rank']:.1f}",
            f"{100 * summary['noise_fraction']:.0f}%",
            f"{100 * summary['converged']:.0f}%",
        ]
        if compared:
            shares = [m.quantization_share for m in members if m.quantization_share is not None]
            flagged = sum(share > QUANTIZATION_SHARE_FLAG for share in shares)
            row.append(f"{100 * sum(shares) / len(shares):.0f}% ({flagged})" if shares else "-")
        if ranks is not None:
            advised = sorted(ranks[m.name] for m in members)
            row.append(str(advised[0]) if advised[0] == advised[-1] else f"{advised[0]}-{advised[-1]}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def probe_summary(result: ProbeResult) -> str:
    """One line: what was probed, how, and for how long."""
    return (
        f"{result.model}{f' ({result.quantization})' if result.quantization else ''}: {len(result.layers)} layers, {result.num_rows} rows, {result.tokens} tokens "
        f"({result.loss_tokens} with loss), method={result.method}, {result.seconds:.1f} s"
    )


QUANTIZATION_LEGEND = (
    "q-share: share of the 4-bit base's gradient energy that the full-precision gradient does not have "
    f"(flagged: layers above {QUANTIZATION_SHARE_FLAG:.0%};\nthere the 4-bit gradient is mostly not the "
    "full-precision one, so advice measured on the full-precision model would not carry over)."
)

LEGEND = (
    "eff.rank: entropy effective rank of the gradient; stable: stable rank; E90: directions holding "
    "90% of its energy;\nsignal: effective rank of the directions above the split-half noise edge; "
    "noise: share of the gradient energy that is sampling noise;\nconv.: layers whose noise share is "
    "at most 20% (more rows would change the ranks less)."
)
