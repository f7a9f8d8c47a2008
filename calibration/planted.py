"""Planted ground truth: does the probe find a known low-rank change, and its rank?

Teacher = SmolLM2 with a planted rank-k update in chosen layers. Data = real text (the
embedded standard-library rows) whose next-token labels are *sampled from the teacher*: the
expected gradient of the probe's loss at the base is then the gradient of KL(teacher || base),
exactly zero when nothing is planted (score-function identity), so whatever the probe calls
signal comes from the plant or from sampling noise. The probe runs on the base model.

Plant kinds:
- ``random``: dW = scale * sigma_1(W) * U V^T, U [out, k] and V [in, k] random orthonormal;
- ``top``: dW = scale * U_k S_k V_k^T, the layer's own top-k singular directions amplified by
  (1 + scale).

Per record (``calibration/results/planted.jsonl``, one per run, with the command): for each
planted layer its signal rank and signal effective rank against k, its place among all layers
when sorted by signal effective rank (1 = highest) and by noise fraction (1 = least noise),
and the overlap of its gradient's top-k right singular subspace with the planted V (mean
squared cosine of the principal angles; about k / in for unrelated directions); plus the
median noise fraction and the 10 layers with the highest signal effective rank.

    python -m calibration.planted --kind top --scale 1.0 --plant model.layers.10.mlp.down_proj:4 model.layers.20.self_attn.v_proj:2
    python -m calibration.planted --kind random --scale 0.0      # the control: nothing planted
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "planted.jsonl"
DEFAULT_PLANTS = ("model.layers.10.mlp.down_proj:4", "model.layers.20.self_attn.v_proj:2")


def plant(model, plants: dict[str, int], kind: str, scale: float, seed: int = 0):
    """A copy of ``model`` with the planted updates; returns (teacher, {name: planted V [in, k]})."""
    teacher = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    planted_v = {}
    for name, k in plants.items():
        weight = teacher.get_submodule(name).weight
        w = weight.detach().double()
        if kind == "random":
            u, _ = torch.linalg.qr(torch.randn(w.shape[0], k, generator=generator, dtype=torch.float64))
            v, _ = torch.linalg.qr(torch.randn(w.shape[1], k, generator=generator, dtype=torch.float64))
            update = scale * torch.linalg.matrix_norm(w, ord=2) * u @ v.T
        else:
            u_all, s_all, vh_all = torch.linalg.svd(w, full_matrices=False)
            v = vh_all[:k].T
            update = scale * (u_all[:, :k] * s_all[:k]) @ vh_all[:k]
        weight.data += update.to(weight.dtype)
        planted_v[name] = v
    return teacher, planted_v


def teacher_labelled_rows(teacher, tokenizer, samples: int, max_length: int, seed: int) -> list[dict]:
    """Pre-tokenized rows of real text whose labels are sampled from the teacher's next-token distribution."""
    from advisor.data import make_batches
    from advisor.embedded_data import stdlib_code_rows

    texts = [{"text": row["instruction"] + "\n\n" + row["output"]} for row in stdlib_code_rows()]
    batches = make_batches(texts, tokenizer, task="causal-lm", num_samples=samples, batch_size=8,
                           max_length=max_length, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    for batch in batches:
        with torch.no_grad():
            logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        sampled = torch.multinomial(torch.softmax(logits, -1).flatten(0, 1), 1, generator=generator)
        sampled = sampled.view(logits.shape[:2])
        for i in range(batch.input_ids.shape[0]):
            length = int(batch.attention_mask[i].sum())
            rows.append({"input_ids": batch.input_ids[i, :length].tolist(),
                         "labels": [-100] + sampled[i, : length - 1].tolist()})
    return rows


def subspace_overlap_with(gradient: torch.Tensor, v: torch.Tensor) -> float:
    k = v.shape[1]
    _, _, vh = torch.linalg.svd(gradient.double(), full_matrices=False)
    return float((vh[:k] @ v).square().sum() / k)


def run(plants: dict[str, int], kind: str, scale: float, samples: int, max_length: int, seed: int) -> dict:
    from advisor.loading import load_model
    from advisor.probe import gradients, probe

    base, tokenizer = load_model(None)
    teacher, planted_v = plant(base, plants, kind, scale, seed)
    rows = teacher_labelled_rows(teacher, tokenizer, samples, max_length, seed)
    del teacher
    settings = dict(tokenizer=tokenizer, num_samples=len(rows), batch_size=8, max_length=max_length, seed=seed)
    result = probe(base, rows, method="exact", progress=True, **settings)
    planted_gradients = gradients(base, rows, target_modules=list(plants), **settings)
    by_signal = sorted(result.layers, key=lambda n: -result.layers[n].signal_effective_rank)
    by_noise = sorted(result.layers, key=lambda n: result.layers[n].noise_fraction)
    layers = {}
    for name, k in plants.items():
        stats = result.layers[name]
        layers[name] = {
            "k": k, "signal_rank": stats.signal_rank, "signal_effective_rank": round(stats.signal_effective_rank, 3),
            "noise_fraction": round(stats.noise_fraction, 4),
            "place_by_signal_erank": by_signal.index(name) + 1, "place_by_noise": by_noise.index(name) + 1,
            "overlap_with_planted": round(subspace_overlap_with(planted_gradients[name], planted_v[name]), 4),
            "chance_overlap": round(k / stats.shape[1], 4),
        }
    return {
        "kind": kind, "scale": scale, "samples": len(rows), "max_length": max_length, "seed": seed,
        "layers_probed": len(result.layers), "planted": layers,
        "median_noise_fraction": round(statistics.median(s.noise_fraction for s in result.layers.values()), 4),
        "top_signal": [[n, round(result.layers[n].signal_effective_rank, 3), result.layers[n].signal_rank]
                       for n in by_signal[:10]],
    }


def markdown_table() -> str:
    """Every stored run: one row per planted layer (the table of calibration/README.md)."""
    lines = ["| plant | scale | layer | k | signal rank | signal eff. rank | noise share | place by signal eff. rank "
             "(of 210) | overlap with planted V (chance) | median noise share, all layers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for line in RESULTS.read_text().splitlines():
        record = json.loads(line)
        for name, layer in record["planted"].items():
            lines.append(
                f"| {record['kind']} | {record['scale']:g} | {name.removeprefix('model.')} | {layer['k']} "
                f"| {layer['signal_rank']} | {layer['signal_effective_rank']:.2f} | {layer['noise_fraction']:.2f} "
                f"| {layer['place_by_signal_erank']} | {layer['overlap_with_planted']:.4f} ({layer['chance_overlap']:.4f}) "
                f"| {record['median_noise_fraction']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration.planted", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("random", "top"), default="top")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--plant", nargs="+", default=list(DEFAULT_PLANTS), metavar="NAME:K")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="print the stored runs as a markdown table, probe nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    plants = {}
    for item in args.plant:
        name, _, k = item.rpartition(":")
        if not name or not k.isdigit() or int(k) < 1:
            parser.error(f"--plant takes NAME:K with K >= 1, got {item!r}")
        plants[name] = int(k)
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    record = run(plants, args.kind, args.scale, args.samples, args.max_length, args.seed)
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["command"] = "python -m calibration.planted " + shlex.join(
        ["--kind", args.kind, "--scale", str(args.scale), "--samples", str(args.samples),
         "--max-length", str(args.max_length), "--seed", str(args.seed), "--plant", *args.plant])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
