"""Planted ground truth: does the probe find a known low-rank change, and its rank?

Teacher = SmolLM2 with a planted rank-k update in chosen layers; the probe runs on the
unchanged base, on real text (the embedded standard-library rows), with one of two losses:

- ``--loss distill``: KL(teacher || base) over the full next-token distributions
  (:func:`distillation_loss`). Its gradient is zero when nothing is planted, and it has no
  label-sampling noise: every bit of gradient comes from the plant.
- ``--loss sampled`` (the first attempt, kept so its records reproduce): cross-entropy on
  next-token labels *sampled from the teacher*, whose expected gradient is the same KL's.

Plant kinds (dW added to W [out, in]):
- ``input``: dW = scale * sigma_1(W) * U V^T with V [in, k] the top-k principal directions of
  the layer's inputs on the probe's rows and U [out, k] random orthonormal: a change the data
  excites;
- ``input-equal``: the same V, each direction scaled by sqrt(lambda_k / lambda_i) (lambda: the
  input covariance's eigenvalues), so that every direction changes the layer's output by as
  much as the k-th: k equally excited directions;
- ``random``: the same with V random orthonormal (inputs barely excite random directions);
- ``top``: dW = scale * U_k S_k V_k^T, the layer's own top-k singular directions amplified.

To first order the planted layer's gradient is G ~ -S dW A (S: the output-side Fisher, A: the
input covariance), so its row space is span(A V): "the plant as the data sees it". Per record
(``calibration/results/planted.jsonl``, one per run, with the command), for each planted
layer: signal rank and signal effective rank against k, the share of ||G||_F^2 in the top k
singular values, the overlap of G's top-k right singular subspace with span(A V) and with V
(mean squared cosine of the principal angles; k / in for unrelated directions), and the
layer's place among all layers by ||G||_F (1 = largest), by the probe's ``natural_gain``
(||G||_F^2 scaled by the layer's size over its K-FAC Fisher trace, noise removed) and by signal
effective rank; plus the mean KL per token (distill), the median noise share and the 10 layers
with the largest ||G||_F and with the largest natural gain.

Every record also asks the advice whether it finds the plant (:func:`advised_places`): the planted
layer's advised rank and its place among all layers by advised need, under the uncalibrated rule
and under the shipped causal-LM calibration.

``--loss-visible`` (distill, one planted layer) adds the plant's rank *as the loss sees it*: for
j = 1..k, the share of KL(teacher || base) that the best j of the k planted rank-one terms remove
(base + those terms against the teacher, every subset tried: 2^k forwards on the probe's rows),
and the fewest directions that remove LOSS_VISIBLE_LEVEL (90 %) of it. A direction that the rows
barely excite, or whose change the later layers barely pass on, is planted but invisible to any
loss on these rows, so this, not k, is what a gradient probe of them could at best read.

    python -m calibration.planted --loss distill --kind input --scale 0.1 --plant model.layers.20.self_attn.v_proj:2
    python -m calibration.planted --loss distill --kind input-equal --scale 0.3 --samples 16 --max-length 64 \
        --loss-visible --plant model.layers.5.self_attn.q_proj:4
    python -m calibration.planted --kind top --scale 1.0      # the first attempt (sampled labels)
    python -m calibration.planted --table
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path

from calibration import read_results, script_parser

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "planted.jsonl"
DEFAULT_PLANTS = ("model.layers.10.mlp.down_proj:4", "model.layers.20.self_attn.v_proj:2")
LOSS_VISIBLE_LEVEL = 0.9  # share of the KL that the loss-visible rank's directions remove
MAX_LOSS_VISIBLE_K = 8  # --loss-visible tries all 2^k subsets of the planted directions
ADVICE_TRAIN_SIZE = 1000  # the training rows the advice is asked for: those of the calibration's cells


def planted_terms(model, plants: dict[str, int], kind: str, scale: float, seed: int = 0,
                  covariances: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each planted layer's update as its k rank-one terms [k, out, in] (float64; their sum is dW),
    and its planted V [in, k]. ``covariances`` (kinds "input", "input-equal"): each planted
    layer's input covariance [in, in]."""
    generator = torch.Generator().manual_seed(seed)
    terms, planted_v = {}, {}
    for name, k in plants.items():
        w = model.get_submodule(name).weight.detach().double()
        if kind in ("random", "input", "input-equal"):
            u, _ = torch.linalg.qr(torch.randn(w.shape[0], k, generator=generator, dtype=torch.float64))
            weights = torch.ones(k, dtype=torch.float64)
            if kind == "random":
                v, _ = torch.linalg.qr(torch.randn(w.shape[1], k, generator=generator, dtype=torch.float64))
            else:
                eigenvalues, eigenvectors = torch.linalg.eigh(covariances[name])
                v, top = eigenvectors[:, -k:].flip(1), eigenvalues[-k:].flip(0)
                if kind == "input-equal":  # every direction moves the output as much as the k-th
                    weights = (top[-1] / top).sqrt()
            u = u * (scale * torch.linalg.matrix_norm(w, ord=2) * weights)
        else:
            u_all, s_all, vh_all = torch.linalg.svd(w, full_matrices=False)
            v = vh_all[:k].T
            u = scale * u_all[:, :k] * s_all[:k]
        terms[name] = torch.einsum("ok,ik->koi", u, v)  # [k, out, in]: term j is u_j v_j^T
        planted_v[name] = v
    return terms, planted_v


def teacher_with(model, terms: dict[str, torch.Tensor]):
    """A copy of ``model`` with each named layer's planted terms [k, out, in] added to its weight."""
    teacher = copy.deepcopy(model)
    for name, parts in terms.items():
        weight = teacher.get_submodule(name).weight
        weight.data += parts.sum(0).to(weight.device, weight.dtype)
    return teacher.eval()


def plant(model, plants: dict[str, int], kind: str, scale: float, seed: int = 0, covariances: dict | None = None):
    """A copy of ``model`` with the planted updates (:func:`planted_terms`); returns (teacher,
    {name: planted V [in, k]})."""
    terms, planted_v = planted_terms(model, plants, kind, scale, seed, covariances)
    return teacher_with(model, terms), planted_v


def kl_by_direction_subset(base, teacher, name: str, terms: torch.Tensor, batches) -> dict[tuple[int, ...], float]:
    """KL(teacher || base + the planted terms in T) per token over ``batches`` (ProbeBatch, the
    positions with a label), for every subset T of the k planted directions of layer ``name``
    (``terms`` [k, out, in]): one teacher forward per batch, then 2^k forwards of the base with
    that layer's weight changed, and put back afterwards. The empty set is the base; the full set
    is the teacher when nothing else is planted (KL 0)."""
    with torch.no_grad():
        targets = [next_token_log_probs(teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits)
                   for b in batches]
    weight = base.get_submodule(name).weight
    original = weight.detach().clone()
    kl = {}
    try:
        for size in range(terms.shape[0] + 1):
            for subset in itertools.combinations(range(terms.shape[0]), size):
                weight.data.copy_(original + terms[list(subset)].sum(0).to(original.device, original.dtype))
                summed, count = 0.0, 0
                with torch.no_grad():
                    for batch, target in zip(batches, targets):
                        logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                        batch_sum, batch_count = summed_kl(target, logits, batch.labels)
                        summed, count = summed + float(batch_sum), count + batch_count
                kl[subset] = summed / max(count, 1)
    finally:
        weight.data.copy_(original)
    return kl


def loss_visible_shares(kl: dict[tuple[int, ...], float]) -> list[float]:
    """From :func:`kl_by_direction_subset`: for j = 1..k, the share of the base's KL to the teacher
    that the best j of the k planted directions remove, 1 - min over |T| = j of KL(T) / KL(empty);
    nan for a plant that does not change the loss on these rows (KL(empty) = 0)."""
    k = max(len(subset) for subset in kl)
    if kl[()] <= 0:
        return [math.nan] * k
    return [1 - min(value for subset, value in kl.items() if len(subset) == j) / kl[()] for j in range(1, k + 1)]


def loss_visible_rank(shares: list[float], level: float = LOSS_VISIBLE_LEVEL) -> int | None:
    """The fewest planted directions that remove ``level`` of the KL: the plant's rank as the loss
    on these rows sees it (what a probe of these rows could at best read). k when no j reaches
    ``level`` short of all k (with one planted layer all k remove all of it); None for nan shares."""
    if any(math.isnan(share) for share in shares):
        return None
    return next(j for j, share in enumerate(shares, 1) if share >= level or j == len(shares))


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """[B, T - 1, vocab] float32 log-probabilities of each position's next token from logits [B, T, vocab]."""
    return torch.log_softmax(logits[:, :-1].float(), -1)


def summed_kl(target: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed KL(target || the model's next-token distribution) over the positions with a label,
    and their count; ``target`` from :func:`next_token_log_probs`, ``logits`` [B, T, vocab], ``labels`` [B, T]."""
    mask = labels[:, 1:] != -100
    return (target.exp() * (target - next_token_log_probs(logits))).sum(-1)[mask].sum(), int(mask.sum())


def distillation_loss(teacher):
    """A probe ``loss_fn``: summed KL(teacher || model) over the next-token distributions of the
    positions with a label, and their count. The teacher runs without gradients; against the
    model itself it is zero with a zero gradient, so any gradient comes from the plant."""

    def loss_fn(logits: torch.Tensor, batch) -> tuple[torch.Tensor, int]:
        device = logits.device
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch.input_ids.to(device),
                                     attention_mask=batch.attention_mask.to(device)).logits
        summed, count = summed_kl(next_token_log_probs(teacher_logits), logits, batch.labels.to(device))
        seen[0] += float(summed.detach())
        seen[1] += count
        return summed, count

    seen = [0.0, 0]  # summed KL and positions over every call (every probe pass)
    loss_fn.kl_per_token = lambda: seen[0] / max(seen[1], 1)
    return loss_fn


def text_rows() -> list[dict]:
    """The embedded standard-library rows as plain text (instruction, blank line, code)."""
    from advisor.embedded_data import stdlib_code_rows

    return [{"text": row["instruction"] + "\n\n" + row["output"]} for row in stdlib_code_rows()]


def input_covariances(model, names, rows, tokenizer, samples: int, max_length: int, seed: int) -> dict:
    """E[x x^T] [in, in] (float64) of each named layer's input over the probe's rows (padding left out)."""
    from advisor.data import make_batches

    sums, counts, mask = {}, {}, {}

    def hook(name):
        def record(module, args, output):
            x = args[0].detach().double().flatten(0, 1)[mask["keep"]]
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        for batch in make_batches(rows, tokenizer, task="causal-lm", num_samples=samples, batch_size=8,
                                  max_length=max_length, seed=seed):
            mask["keep"] = batch.attention_mask.flatten().bool()
            with torch.no_grad():
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in names}


def teacher_labelled_rows(teacher, tokenizer, samples: int, max_length: int, seed: int) -> list[dict]:
    """Pre-tokenized rows of real text whose labels are sampled from the teacher's next-token distribution."""
    from advisor.data import make_batches

    batches = make_batches(text_rows(), tokenizer, task="causal-lm", num_samples=samples, batch_size=8,
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
    """Mean squared cosine of the principal angles between G's top-k right singular vectors and
    the columns of ``v`` [in, k] (any basis: orthonormalised here); k / in for unrelated directions."""
    k = v.shape[1]
    basis, _ = torch.linalg.qr(v.double())
    _, _, vh = torch.linalg.svd(gradient.double(), full_matrices=False)
    return float((vh[:k] @ basis).square().sum() / k)


def top_k_energy_share(gradient: torch.Tensor, k: int) -> float:
    """Share of ||G||_F^2 in G's top k singular values (1 for an exactly rank-k G)."""
    sv = torch.linalg.svdvals(gradient.double())
    return float(sv[:k].square().sum() / sv.square().sum())


def loss_visible_applies(loss: str, plants: dict[str, int]) -> bool:
    """The loss-visible rank is defined for the distillation loss and one planted layer, and its
    2^k subsets are tried only up to MAX_LOSS_VISIBLE_K directions."""
    return loss == "distill" and len(plants) == 1 and max(plants.values()) <= MAX_LOSS_VISIBLE_K


def run(plants: dict[str, int], kind: str, scale: float, samples: int, max_length: int, seed: int,
        loss: str = "sampled", loss_visible: bool = False) -> dict:
    """One planted experiment on the embedded SmolLM2 (see the module docstring); ``loss_visible``
    (distill, one planted layer) adds the KL share of the best j planted directions."""
    from advisor.data import make_batches
    from advisor.loading import load_model
    from advisor.probe_pass import gradients, probe

    if loss_visible and not loss_visible_applies(loss, plants):
        raise ValueError(f"loss_visible needs the distill loss and one planted layer with k <= {MAX_LOSS_VISIBLE_K}")
    base, tokenizer = load_model(None)
    settings = dict(tokenizer=tokenizer, batch_size=8, max_length=max_length, seed=seed)
    covariances = input_covariances(base, list(plants), text_rows(), tokenizer, samples, max_length, seed)
    terms, planted_v = planted_terms(base, plants, kind, scale, seed, covariances)
    teacher = teacher_with(base, terms)
    kl_by_subset = {}
    if loss_visible:
        (name, _), = plants.items()
        batches = make_batches(text_rows(), task="causal-lm", num_samples=samples, **settings)
        kl_by_subset[name] = kl_by_direction_subset(base, teacher, name, terms[name], batches)
    if loss == "distill":
        rows, loss_fn = text_rows(), distillation_loss(teacher)
    else:
        rows, loss_fn = teacher_labelled_rows(teacher, tokenizer, samples, max_length, seed), None
        del teacher
    result = probe(base, rows, method="exact", num_samples=samples, progress=True, loss_fn=loss_fn, **settings)
    planted_gradients = gradients(base, rows, target_modules=list(plants), num_samples=samples, loss_fn=loss_fn,
                                  **settings)
    by_signal = sorted(result.layers, key=lambda n: -result.layers[n].signal_effective_rank)
    by_norm = sorted(result.layers, key=lambda n: -result.layers[n].frobenius_norm)
    by_gain = sorted(result.layers, key=lambda n: -result.layers[n].natural_gain)
    layers = {}
    for name, k in plants.items():
        stats, gradient = result.layers[name], planted_gradients[name]
        layers[name] = {
            "k": k, "signal_rank": stats.signal_rank, "signal_effective_rank": round(stats.signal_effective_rank, 3),
            "noise_fraction": round(stats.noise_fraction, 4),
            "top_k_energy_share": round(top_k_energy_share(gradient, k), 4),
            "place_by_signal_erank": by_signal.index(name) + 1, "place_by_norm": by_norm.index(name) + 1,
            "place_by_gain": by_gain.index(name) + 1,
            "overlap_with_planted": round(subspace_overlap_with(gradient, planted_v[name]), 4),
            "overlap_with_seen": round(subspace_overlap_with(gradient, covariances[name] @ planted_v[name]), 4),
            "chance_overlap": round(k / stats.shape[1], 4),
        }
        if name in kl_by_subset:  # KL of the base, a check on kl_per_token, and the shares
            shares = loss_visible_shares(kl_by_subset[name])
            layers[name]["loss_visible_base_kl"] = round(kl_by_subset[name][()], 5)
            layers[name]["loss_share_by_directions"] = [round(share, 4) for share in shares]
            layers[name]["loss_visible_rank"] = loss_visible_rank(shares)
    record = {"loss": loss, "kind": kind, "scale": scale, "samples": result.num_rows, "max_length": max_length,
              "seed": seed, "layers_probed": len(result.layers), "planted": layers,
              "median_noise_fraction": round(statistics.median(s.noise_fraction for s in result.layers.values()), 4),
              "top_norm": [[n, round(result.layers[n].frobenius_norm, 6), result.layers[n].signal_rank]
                           for n in by_norm[:10]],
              "top_gain": [[n, round(result.layers[n].natural_gain, 4)] for n in by_gain[:10]]}
    if loss == "distill":
        record["kl_per_token"] = round(loss_fn.kl_per_token(), 5)
    record.update(advised_places(result, layers))
    return record


def advised_places(result, planted: dict[str, dict]) -> dict:
    """Does the advice find the plant? The probe's advice under the uncalibrated rule and under the
    shipped causal-LM calibration (applied explicitly, at ADVICE_TRAIN_SIZE rows: it extrapolates
    from the 16-64-row probes used here); per planted layer (added to ``planted``'s dicts) its need,
    rank and place among all layers by need (1 = largest; tied layers share the best place); per
    rule the median need and the calibration's name and joblib sha256."""
    from advisor.calibrated import fitted_kinds, load_calibration, shipped_calibration
    from advisor.recommend import advice_from_probe

    path = shipped_calibration("causal-lm")
    calibration = load_calibration(path) if path is not None else None
    kinds = fitted_kinds(calibration.metadata) if calibration is not None else []
    if kinds is not None and "causal-lm" not in kinds:  # None: a calibration that covers every kind
        raise ValueError(f"models/ ships no causal-LM calibration (found: {path})")
    summary = {}
    for rule, chosen in (("uncalibrated", None), ("calibrated", calibration)):
        advice = advice_from_probe(result, train_size=ADVICE_TRAIN_SIZE, calibration=chosen)
        needs = {name: layer.need for name, layer in advice.layers.items()}
        for name, layer in planted.items():
            layer[f"advised_{rule}"] = {"need": needs[name], "rank": advice.layers[name].rank,
                                        "place_by_need": 1 + sum(need > needs[name] for need in needs.values())}
        summary[f"advice_{rule}"] = {"median_need": round(statistics.median(needs.values()), 3)}
    summary["advice_calibrated"].update(name=calibration.name, sha256=calibration.metadata["sha256"])
    return summary


def latest_records() -> list[dict]:
    """The stored runs, the latest of each command only, in first-run order; a command and the same
    with ``--loss-visible`` count as one (the latter adds fields and reproduces the others), so the
    later of the two is shown. The file keeps every record."""
    by_command: dict[str, dict] = {}
    for record in read_results(RESULTS):
        by_command[record["command"].replace(" --loss-visible", "")] = record
    return list(by_command.values())


def markdown_table() -> str:
    """The latest run of each command: one row per planted layer (the table of calibration/README.md)."""
    lines = ["| loss | plant | scale | rows x tokens | KL / token | layer | k | signal rank | top-k energy share | overlap with "
             "A V / with V (chance) | place by norm / by natural gain / by signal eff. rank (of 210) "
             "| median noise share | loss-visible rank (KL share of the best 1..k directions) "
             "| advised rank / place by need (of 210): uncalibrated; calibrated |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    records = latest_records()
    for record in records:
        for name, layer in record["planted"].items():
            lines.append(
                f"| {record.get('loss', 'sampled')} | {record['kind']} | {record['scale']:g} "
                f"| {record['samples']} x {record['max_length']} | {number(record.get('kl_per_token'), 3)} | {name.removeprefix('model.')} | {layer['k']} "
                f"| {layer['signal_rank']} | {number(layer.get('top_k_energy_share'), 2)} "
                f"| {number(layer.get('overlap_with_seen'), 2)} / {layer['overlap_with_planted']:.4f} "
                f"({layer['chance_overlap']:.4f}) | {layer.get('place_by_norm', '-')} / {layer.get('place_by_gain', '-')} "
                f"/ {layer['place_by_signal_erank']} "
                f"| {record['median_noise_fraction']:.2f} | {_loss_visible_cell(layer)} | {_advised_cell(layer)} |"
            )
    for key, what in (("top_norm", "the largest ||G||_F"), ("top_gain", "the largest natural gain (and the "
                                                                    "first's over the second's)")):
        lines.append(f"\nThe three layers with {what} in each run that recorded them:\n")
        for record in records:
            if key in record:
                planted = ", ".join(f"{n.removeprefix('model.')}:{layer['k']}" for n, layer in record["planted"].items())
                ratio = f" ({record[key][0][1] / record[key][1][1]:.2f}x)" if key == "top_gain" else ""
                lines.append(f"- {record['kind']} {planted}, {record['samples']} rows: "
                             + ", ".join(entry[0].removeprefix("model.") for entry in record[key][:3]) + ratio)
    return "\n".join(lines)


def _advised_cell(layer: dict) -> str:
    if "advised_uncalibrated" not in layer:
        return "-"
    return "; ".join(f"{layer[key]['rank']} / {layer[key]['place_by_need']}"
                     for key in ("advised_uncalibrated", "advised_calibrated"))


def _loss_visible_cell(layer: dict) -> str:
    if "loss_visible_rank" not in layer:
        return "-"
    return f"{layer['loss_visible_rank']} ({', '.join(f'{share:.2f}' for share in layer['loss_share_by_directions'])})"


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("calibration.planted", __doc__, [
        "python -m calibration.planted --loss distill --kind input --scale 0.1 --samples 16 --max-length 64 \\",
        "    --plant model.layers.5.self_attn.q_proj:2",
        "python -m calibration.planted --loss distill --kind input --scale 0.1 --samples 64 --max-length 64 \\",
        "    --loss-visible --plant model.layers.15.mlp.up_proj:4",
        "python -m calibration.planted --table",
    ])
    parser.add_argument("--loss", choices=("sampled", "distill"), default="sampled",
                        help="sampled: teacher-sampled labels (the first attempt); distill: KL to the teacher")
    parser.add_argument("--kind", choices=("input", "input-equal", "random", "top"), default="top")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--plant", nargs="+", default=list(DEFAULT_PLANTS), metavar="NAME:K")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-visible", action="store_true",
                        help="(distill, one plant) also measure how much of the KL the best j planted directions remove")
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
    if args.loss_visible and not loss_visible_applies(args.loss, plants):
        parser.error(f"--loss-visible needs --loss distill and exactly one --plant with K <= {MAX_LOSS_VISIBLE_K}")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    record = run(plants, args.kind, args.scale, args.samples, args.max_length, args.seed, args.loss, args.loss_visible)
    record["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    loss_option = ["--loss", args.loss] if args.loss != "sampled" else []  # the first attempt's commands had none
    record["command"] = "python -m calibration.planted " + shlex.join(
        [*loss_option, "--kind", args.kind, "--scale", str(args.scale), "--samples", str(args.samples),
         "--max-length", str(args.max_length), "--seed", str(args.seed), *(["--loss-visible"] if args.loss_visible else []),
         "--plant", *args.plant])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
