"""Stage 3 of the data path: the gradient probe.

For every target layer L (y = W x) the probe accumulates the full-weight gradient of the mean
token loss over the probe's rows,

    G_L = (1 / N) * sum_t delta_t x_t^T,   delta_t = d loss_sum / d y_t,   shape [out, in],

from a forward hook (x, the layer input) and a hook on the layer output's gradient (delta).
No weight gradient is ever asked of autograd, so frozen and quantized weights work, and no
weight is updated. Rows are split into two halves by batch (even / odd batches); the two half
gradients G_A and G_B give a sampling-noise estimate: their scaled difference has the same noise
as G but no signal, so directions of G above its largest singular value are signal.

The model is restored exactly (parameters, buffers, requires_grad flags, .grad, train/eval
mode of every module, hooks, the layout of bitsandbytes 4-bit weights) when the probe
returns, raises or is interrupted. 4-bit layers are probed through their differentiable
kernels, guarded against two bitsandbytes CPU bugs (:mod:`advisor.quantized`).

The per-layer statistics of the two half sums (spectra, noise edge, convergence) are stage 4,
:mod:`advisor.spectrum`; this module holds the pass itself: hooks, accumulators, reduction.

Distributed: when ``torch.distributed`` is initialised (``torchrun``), every process draws the
same batches, probes every world-th one (batch i goes to rank i mod world) and the
accumulators, which are sums, are all-reduced; every process then holds the result one
process probing all batches would get (up to summation order).
"""

from __future__ import annotations

import inspect
import math
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advisor import quantized, spectrum
from advisor.data import ProbeBatch, count_tokens, is_batch_iterable, load_rows, sample_batches
from advisor.layers import find_target_layers, layer_shape, layer_types
from advisor.loading import TASK_SEQ_CLS, load_model, model_task
from advisor.probe_config import ProbeConfig
from advisor.spectrum import LayerStats

COUNT_TOKENS_MAX_ROWS = 20_000  # the dataset's loss tokens are counted on at most this many rows, then scaled
_TEST_VECTORS = 10  # Gaussian test vectors of the sketch's a-posteriori error estimate


@dataclass
class ProbeResult:
    """What the probe measured: per-layer statistics plus the probe's settings."""

    model: str
    task: str
    method: str
    num_rows: int
    tokens: int
    loss_tokens: int
    batch_size: int
    max_length: int
    seed: int
    seconds: float  # the whole probe, loading excluded
    spectra_seconds: float  # of which: the spectral analysis after the data pass
    quantization: str | None = None  # e.g. "4-bit NF4, compute float32" for a bitsandbytes base
    model_parameters: int | None = None  # weights of the whole model (4-bit ones counted unpacked)
    sketch_size: int | None = None  # the sketch size used (sketch method only)
    accumulator_bytes: int | None = None  # memory of the accumulators, as planned
    # the whole dataset, counted with the tokenizer (advisor.data.count_tokens, cut at max_length): rows, tokens,
    # loss_tokens, counted_rows (a sample's size when scaled up); None for a DataLoader
    dataset_tokens: dict | None = None
    # the names of the model's modules the probe did not target (lm_head, embeddings, convolutions, ...):
    # what a short target_modules entry must not match; None in a probe saved before it was recorded
    untargeted_modules: list[str] | None = None
    # the frozen base model's mean loss per loss token on the probe's rows (nats): how much of the
    # data it has yet to learn; None in a probe saved before it was recorded
    base_loss: float | None = None
    # rows drawn from the dataset (num_rows of them kept a loss token within max_length); None for a
    # DataLoader or a probe saved before it was recorded
    rows_drawn: int | None = None
    # the ProbeConfig the probe ran with (ProbeConfig.to_dict); None in a probe saved before it was recorded
    config: dict | None = None
    layers: dict[str, LayerStats] = field(default_factory=dict)
    # a growing probe (ProbeConfig.max_samples): {"checks": [[rows, median noise share], ...], "stopped": why}
    growth: dict | None = None
    # a growing probe that went past its first num_samples rows: the layers' statistics on those rows
    # (how the calibration's cells were probed: what its models read); None otherwise
    protocol_layers: dict[str, LayerStats] | None = None

    def by_type(self) -> dict[str, dict]:
        """Layer-type aggregates (``q_proj``, ``mlp.down_proj``, ...), in first-seen order."""
        return _aggregate(self.layers.values(), key=lambda s: s.layer_type)

    def natural_gain_shares(self) -> dict[str, float] | None:
        """Each layer type's share of the layers' summed ``natural_gain``, in first-seen order;
        None when a layer has none (a probe saved before it existed) or the sum is 0."""
        gains: dict[str, float] = {}
        for stats in self.layers.values():
            if stats.natural_gain is None:
                return None
            gains[stats.layer_type] = gains.get(stats.layer_type, 0.0) + stats.natural_gain
        total = sum(gains.values())
        return {layer_type: gain / total for layer_type, gain in gains.items()} if total > 0 else None

    def by_depth(self) -> dict[int, dict]:
        """Per-block aggregates keyed by block index (layers outside blocks are left out)."""
        return _aggregate((s for s in self.layers.values() if s.depth is not None), key=lambda s: s.depth)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        def stats(layers: dict) -> dict[str, LayerStats]:
            return {name: LayerStats(**{**s, "shape": tuple(s["shape"])}) for name, s in layers.items()}

        protocol = data.get("protocol_layers")
        return cls(**{**data, "layers": stats(data["layers"]), "protocol_layers": protocol and stats(protocol)})

    @property
    def calibration_layers(self) -> dict[str, LayerStats]:
        """The statistics a calibration reads: those of the first ``num_samples`` rows of a probe
        that grew past them (how the calibration's cells were probed), else :attr:`layers`."""
        return self.protocol_layers or self.layers

    def save(self, path: str | Path) -> None:
        import json

        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))


def _aggregate(stats, key) -> dict:
    """Per group: the layer count and mean statistics; ``signal_effective_rank`` is the mean over
    the layers that have signal (None when none has) and ``no_signal`` counts those that have none."""
    groups: dict = {}
    for s in stats:
        groups.setdefault(key(s), []).append(s)
    summary = {}
    for group, members in groups.items():
        def mean(attr: str, members: list = members) -> float:
            return sum(getattr(m, attr) for m in members) / len(members)

        with_signal = [m.signal_effective_rank for m in members if m.signal_rank > 0]
        summary[group] = {
            "layers": len(members),
            "effective_rank": mean("effective_rank"),
            "stable_rank": mean("stable_rank"),
            "energy_rank_90": mean("energy_rank_90"),
            "signal_rank": mean("signal_rank"),
            # an entropy rank is >= 1: layers with no direction above the noise edge are counted, not averaged in
            "signal_effective_rank": sum(with_signal) / len(with_signal) if with_signal else None,
            "no_signal": len(members) - len(with_signal),
            "noise_fraction": mean("noise_fraction"),
            "rank_growth": mean("rank_growth"),
            "subspace_overlap": mean("subspace_overlap"),
            "converged": sum(m.converged for m in members) / len(members),
        }
    return summary


# --------------------------------------------------------------------------- accumulators
@dataclass
class _Spectrum:
    """Spectrum of one combination of the two half gradients."""

    singular_values: torch.Tensor  # descending, float64
    vectors: torch.Tensor  # top singular vectors, [dim, k]
    energy: float  # ||matrix||_F^2 (estimated in sketch mode)
    error: float | None = None  # sketch mode: estimated ||matrix - approximation||_F


class _Accumulator:
    """What both accumulators keep besides G: ``energies`` = (sum ||x_t||^2, sum ||delta_t||^2,
    tokens) over the non-padding tokens, float64 (the scale of the layer's K-FAC Fisher)."""

    def __init__(self, device: torch.device):
        self.energies = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, half: int, delta: torch.Tensor, x: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """delta [T, out], x [T, in], both float32; ``keep`` [T] bool: the non-padding tokens (None: all)."""
        self.add_gradient(half, delta, x)
        # per-token norms in float32 (float32's rounding per token), summed over tokens in float64:
        # cheaper than casting every element to float64 to square and sum it
        x_energy, delta_energy = (torch.linalg.vector_norm(t, dim=1).double().square() for t in (x, delta))
        if keep is not None:
            keep = keep.to(x.device)  # a model spread over devices: the mask lives with the embeddings
            x_energy, delta_energy = x_energy[keep], delta_energy[keep]
        self.energies[0] += x_energy.sum()
        self.energies[1] += delta_energy.sum()
        self.energies[2] += x_energy.shape[0]

    def add_gradient(self, half: int, delta: torch.Tensor, x: torch.Tensor) -> None:
        raise NotImplementedError

    def gradient_sums(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def sums(self) -> list[torch.Tensor]:
        """The tensors that are sums over tokens (what a distributed probe all-reduces)."""
        return [*self.gradient_sums(), self.energies]


class _ExactAccumulator(_Accumulator):
    """Two fp32 half sums G_A, G_B of delta x^T, each [out, in]."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        super().__init__(device)
        self.halves = torch.zeros(2, *shape, dtype=torch.float32, device=device)

    @staticmethod
    def nbytes(shape: tuple[int, int], sketch_size: int) -> int:
        return 2 * shape[0] * shape[1] * 4

    def add_gradient(self, half: int, delta: torch.Tensor, x: torch.Tensor) -> None:
        self.halves[half].addmm_(delta.T, x)

    def gradient_sums(self) -> list[torch.Tensor]:
        return [self.halves]

    def energy(self, c_a: float, c_b: float) -> float:
        """||c_a G_A + c_b G_B||_F^2, without a spectrum."""
        return float((c_a * self.halves[0] + c_b * self.halves[1]).square().sum(dtype=torch.float64))

    def spectrum(self, c_a: float, c_b: float, k: int, precise: bool = True) -> _Spectrum:
        """Of c_a G_A + c_b G_B; ``precise=False`` computes in float32 (diagnostics only)."""
        matrix = c_a * self.halves[0] + c_b * self.halves[1]
        dtype = torch.float64 if precise else torch.float32
        sv, vectors = spectrum.singular_values_and_vectors(matrix, k, dtype)
        return _Spectrum(sv, vectors, float((sv**2).sum()))


class _SketchAccumulator(_Accumulator):
    """Two-sided randomized sketches of G_A and G_B (Tropp et al. 2017), never forming G.

    Per half: Y = G Omega [out, s], W = Psi G [l, in], Z = G Phi [out, p] with Gaussian test
    matrices Omega [in, s], Psi [l, out] (l = 2s + 1) and Phi [in, p]. Memory per layer is
    O((out + in) s) instead of O(out * in).
    """

    def __init__(self, shape: tuple[int, int], device: torch.device, sketch_size: int, seed: int):
        super().__init__(device)
        out_dim, in_dim = shape
        self.s = min(sketch_size, out_dim, in_dim)
        self.l = min(2 * self.s + 1, out_dim)
        self.omega = _gaussian((in_dim, self.s), seed, 1, device)
        self.psi = _gaussian((self.l, out_dim), seed, 2, device)
        self.phi = _gaussian((in_dim, _TEST_VECTORS), seed, 3, device)
        self.y = torch.zeros(2, out_dim, self.s, device=device)
        self.w = torch.zeros(2, self.l, in_dim, device=device)
        self.z = torch.zeros(2, out_dim, _TEST_VECTORS, device=device)

    @staticmethod
    def nbytes(shape: tuple[int, int], sketch_size: int) -> int:
        out_dim, in_dim = shape
        s = min(sketch_size, out_dim, in_dim)
        rows = min(2 * s + 1, out_dim)  # of the co-range sketch
        return 4 * (2 * (out_dim * s + rows * in_dim + out_dim * _TEST_VECTORS) + in_dim * (s + _TEST_VECTORS)
                    + rows * out_dim)

    def add_gradient(self, half: int, delta: torch.Tensor, x: torch.Tensor) -> None:
        self.y[half].addmm_(delta.T, x @ self.omega)
        self.w[half].addmm_((delta @ self.psi.T).T, x)
        self.z[half].addmm_(delta.T, x @ self.phi)

    def gradient_sums(self) -> list[torch.Tensor]:
        """The sketches are linear in G, so they are sums over tokens too."""
        return [self.y, self.w, self.z]

    def energy(self, c_a: float, c_b: float) -> float:
        """||c_a G_A + c_b G_B||_F^2 estimated from the range sketch Y = G Omega (E ||G Omega||_F^2 =
        s ||G||_F^2 for Gaussian Omega [in, s]; relative error about sqrt(2 / s)), without a spectrum."""
        return float((c_a * self.y[0] + c_b * self.y[1]).double().square().sum()) / self.s

    def spectrum(self, c_a: float, c_b: float, k: int, precise: bool = True) -> _Spectrum:
        """Of c_a G_A + c_b G_B, from the sketches (always in float64: they are small)."""
        y, w, z = (c_a * t[0] + c_b * t[1] for t in (self.y, self.w, self.z))
        with spectrum.one_thread_on_cpu(y):
            q, _ = torch.linalg.qr(y.double())
            x = torch.linalg.lstsq(self.psi.double() @ q, w.double()).solution  # [s, in]
            _, sv, vh = torch.linalg.svd(x, full_matrices=False)
        z = z.double()
        residual = z - q @ (x @ self.phi.double())
        energy = float(z.pow(2).sum()) / _TEST_VECTORS
        error = math.sqrt(float(residual.pow(2).sum()) / _TEST_VECTORS)
        return _Spectrum(sv, vh[:k].T, energy, error)


# --------------------------------------------------------------------------- a growing probe
GROWTH_STALL = 0.75  # a doubling of the rows that keeps more of the noise-to-signal ratio than this has stalled


def noise_share(accumulator, loss_tokens: list[int]) -> float:
    """The share of a layer's ||G||_F^2 that is sampling noise, as :func:`advisor.spectrum.layer_stats`
    has it, from the Frobenius norms of the two half sums only (no spectrum)."""
    n_a, n_b = loss_tokens
    n = n_a + n_b
    full = accumulator.energy(1 / n, 1 / n)
    scale = math.sqrt(n_a * n_b) / n
    return min(1.0, accumulator.energy(scale / n_a, -scale / n_b) / full) if full > 0 else 1.0


@dataclass
class Growth:
    """When a growing probe (``ProbeConfig.max_samples``) stops.

    It checks after ``first_batches`` batches (its first ``num_samples`` rows) and after each
    doubling of the batches: the median over the layers of the noise share of ||G||_F^2
    (:func:`noise_share`). It stops when that median is at most ``NOISE_TARGET`` ("converged");
    when a doubling kept more than ``GROWTH_STALL`` of the noise-to-signal ratio share / (1 - share),
    which sampling noise alone would halve ("stopped falling": the rest is spread that more rows of
    this data do not average away); after ``max_seconds`` of data pass ("time cap"); or when the
    rows drawn run out ("row cap"). ``first_check(accumulators, loss_tokens, tokens, rows)`` is
    called at the first check when the probe goes on past it (``first_check_seconds``: its time)."""

    first_batches: int
    last_batch: int
    max_seconds: float | None = None
    first_check: object = None
    checks: list = field(default_factory=list)
    stopped: str | None = None
    first_check_seconds: float | None = None
    started: float = field(default_factory=time.perf_counter)

    def __call__(self, done: int, rows: int, accumulators: dict, loss_tokens: list[int], tokens: int) -> bool:
        """After ``done`` batches (``rows`` rows): whether to stop."""
        doublings, rest = divmod(done, self.first_batches)
        at_doubling = rest == 0 and doublings > 0 and doublings & (doublings - 1) == 0
        # the caps never stop it before its first num_samples rows, which the calibration reads
        timed_out = (done > self.first_batches and self.max_seconds is not None
                     and time.perf_counter() - self.started >= self.max_seconds)
        if not (at_doubling or timed_out or done == self.last_batch) or min(loss_tokens) == 0:
            return False
        share = statistics.median(noise_share(a, loss_tokens) for a in accumulators.values())
        self.checks.append([rows, round(share, 4)])
        if share <= spectrum.NOISE_TARGET:
            self.stopped = "converged"
        elif (at_doubling and len(self.checks) >= 2  # a doubling since the last check: the ratio should halve
              and _noise_ratio(share) > GROWTH_STALL * _noise_ratio(self.checks[-2][1])):
            self.stopped = "stopped falling"
        elif done == self.last_batch:
            self.stopped = "row cap"
        elif timed_out:
            self.stopped = "time cap"
        if self.stopped is None and len(self.checks) == 1 and self.first_check is not None:
            first_check_started = time.perf_counter()
            self.first_check(accumulators, loss_tokens, tokens, rows)
            self.first_check_seconds = round(time.perf_counter() - first_check_started, 2)
        return self.stopped is not None

    def to_dict(self) -> dict:
        return {"checks": self.checks, "stopped": self.stopped, "first_check_seconds": self.first_check_seconds}


def _noise_ratio(share: float) -> float:
    share = min(share, 0.999)  # a pure-noise layer: a large ratio that can still be compared
    return share / (1 - share)


def _gaussian(shape, seed: int, role: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 7919 + role * 104729 + shape[0] * 31 + shape[1])
    return torch.randn(shape, generator=generator).to(device)


# --------------------------------------------------------------------------- the probe
def probe(
    model: nn.Module | str | None = None,
    dataset=None,
    config: ProbeConfig | None = None,
    *,
    tokenizer=None,
    progress: bool = True,
    compare_full_precision: bool = False,
    loss_fn=None,
    **options,
) -> ProbeResult:
    """Measure the spectrum of every target layer's loss gradient on a sample of ``dataset``.

    ``model``: an ``nn.Module`` or any source :func:`advisor.loading.load_model` accepts (None:
    the embedded SmolLM2). ``dataset``: any source :func:`advisor.data.make_batches` accepts
    (None: the embedded standard-library code data). ``config``: the probe's settings
    (:class:`advisor.probe_config.ProbeConfig`: rows, batch, length, method, memory, seed,
    targets, task, quantization), with ``options`` replacing its fields
    (:meth:`ProbeConfig.build`: also the transformers-style ``load_in_4bit`` / ``bnb_4bit_*``
    flags or a ``quantization_config``), validated before the model loads. "auto" picks its
    method by :func:`plan_memory`; the plan is printed on stderr when ``progress`` is on.
    A quantization quantizes a checkpoint while loading it, as QLoRA does.
    ``compare_full_precision`` (with a quantized checkpoint and the exact method) also runs the
    same rows through the full-precision checkpoint and sets each layer's
    ``quantization_share``; it costs one more pass and the full-precision model's memory.
    ``loss_fn(logits, batch) -> (summed loss, count)`` replaces the task's own loss (for
    example a distillation loss against a teacher's distribution on ``batch.input_ids``);
    None: the task's loss on the rows' labels.
    """
    config = ProbeConfig.build(config, **options)
    quantization = config.quantization
    if config.max_samples is not None and _process_group()[1] > 1:
        raise ValueError("a growing probe (max_samples) runs in one process: under torch.distributed give "
                         "num_samples alone")
    if compare_full_precision and (quantization is None or isinstance(model, nn.Module)):
        raise ValueError("compare_full_precision needs a checkpoint path and load_in_4bit or load_in_8bit")
    source = model
    if not isinstance(model, nn.Module):
        model, tokenizer = load_model(model, tokenizer=tokenizer, task=config.task, seed=config.seed,
                                      quantization=quantization)
    else:
        model, tokenizer = load_model(model, tokenizer=tokenizer, quantization=quantization)
    started = time.perf_counter()
    if not is_batch_iterable(dataset):
        dataset = load_rows(dataset)  # read once: for the sampled batches and for the whole dataset's count
    grows = config.max_samples is not None and not is_batch_iterable(dataset)
    task, targets, shapes, batches, extra = _setup(model, dataset, tokenizer, config,
                                                   config.max_samples - config.num_samples if grows else 0)
    if grows:  # the first rows' batches as a probe of num_samples rows reads them, then the others
        batches = _at_least_two_batches(batches)
        first_batches = len(batches)
        batches = batches + extra
    dataset_tokens = _count_dataset(dataset, tokenizer, task, config.max_length, config.seed)
    method, sketch_size, accumulator_bytes = plan_memory(shapes, config.method, config.sketch_size,
                                                         config.memory_budget)
    if progress:
        print(f"probe: {len(shapes)} layers, {method}"
              + (f" (sketch size {sketch_size})" if method == "sketch" else "")
              + f", accumulators {accumulator_bytes / 2**20:,.0f} MiB of a {config.memory_budget / 2**20:,.0f} MiB "
              "budget", file=sys.stderr)
    if compare_full_precision and method != "exact":
        raise ValueError("compare_full_precision needs method='exact' (the sketch never forms G)")

    def make_accumulator(name: str, device: torch.device):
        if method == "exact":
            return _ExactAccumulator(shapes[name], device)
        return _SketchAccumulator(shapes[name], device, sketch_size, config.seed)

    types = layer_types(targets)

    def layer_statistics(accumulators, loss_tokens, tokens, num_rows) -> dict[str, LayerStats]:
        names = [name for name in targets if name in accumulators]

        def one_layer(name: str) -> LayerStats:
            return spectrum.layer_stats(name, types[name], accumulators[name], shapes[name], loss_tokens, tokens, num_rows)

        on_cpu = all(accumulators[name].energies.device.type == "cpu" for name in names)
        return dict(zip(names, spectrum.map_over_cores(one_layer, names, on_cpu=on_cpu, desc="spectra",
                                                       progress=progress), strict=True))

    growth, protocol_layers = None, {}
    if grows:
        def first_check(accumulators, loss_tokens, tokens, rows):
            protocol_layers.update(layer_statistics(accumulators, loss_tokens, tokens, rows))

        growth = Growth(first_batches=first_batches, last_batch=len(batches), max_seconds=config.max_seconds,
                        first_check=first_check)
        if progress:
            cap = f", {config.max_seconds:g} s" if config.max_seconds else ""
            print(f"probe: from {config.num_samples} rows, doubling until the median layer's noise share is at most "
                  f"{spectrum.NOISE_TARGET:.0%} or stops falling (at most {config.max_samples} rows{cap})", file=sys.stderr)
    accumulators, loss_tokens, tokens, summed_loss = _accumulate(model, targets, batches, task, make_accumulator,
                                                                 progress, loss_fn, growth)
    num_rows = growth.checks[-1][0] if growth and growth.checks else sum(batch.num_rows for batch in batches)
    if growth and progress:
        print("probe: " + ", ".join(f"{rows} rows {share:.0%} noise" for rows, share in growth.checks)
              + f": {growth.stopped}", file=sys.stderr)
    spectra_started = time.perf_counter()
    layers = layer_statistics(accumulators, loss_tokens, tokens, num_rows)
    if compare_full_precision:
        full, _ = load_model(source, tokenizer=tokenizer, task=task, seed=config.seed)
        full = full.to(next(model.parameters()).device)  # where the quantized model runs
        full_gradients = gradients(full, dataset, replace(config, task=task, quantization=None), tokenizer=tokenizer,
                                   progress=progress, loss_fn=loss_fn)
        for name, stats in layers.items():
            quantized_gradient = accumulators[name].halves.sum(0) / sum(loss_tokens)
            stats.quantization_share = quantized.gradient_share_not_in(quantized_gradient, full_gradients[name])
    return ProbeResult(
        model=_model_name(model),
        task=task,
        method=method,
        num_rows=num_rows,
        tokens=tokens,
        loss_tokens=sum(loss_tokens),
        batch_size=config.batch_size,
        max_length=config.max_length,
        seed=config.seed,
        seconds=time.perf_counter() - started,
        spectra_seconds=time.perf_counter() - spectra_started,
        quantization=quantized.describe(model),
        model_parameters=_parameter_count(model),
        sketch_size=sketch_size if method == "sketch" else None,
        accumulator_bytes=accumulator_bytes,
        dataset_tokens=dataset_tokens,
        untargeted_modules=[name for name, _ in model.named_modules() if name and name not in targets],
        base_loss=summed_loss / sum(loss_tokens),
        rows_drawn=_rows_drawn(dataset, config, growth),
        config=config.to_dict(),
        layers=layers,
        growth=growth.to_dict() if growth else None,
        protocol_layers=protocol_layers or None,
    )


def _rows_drawn(dataset, config: ProbeConfig, growth: Growth | None) -> int | None:
    """Rows drawn from ``dataset`` for the batches the probe read: None for a DataLoader, or a
    growing probe that stopped between its first check and its row cap (which rows of a later
    draw had no loss token is not kept)."""
    if is_batch_iterable(dataset):
        return None
    if growth is None or len(growth.checks) == 1:
        return min(config.num_samples, len(dataset))
    return min(config.max_samples, len(dataset)) if growth.stopped == "row cap" else None


def _count_dataset(dataset, tokenizer, task: str, max_length: int, seed: int) -> dict | None:
    """The whole dataset's rows and loss tokens at the probe's ``max_length`` (the cut the
    calibration's users' rules were scored at), or None for a DataLoader or rows the probe
    never samples that cannot be tokenized."""
    if is_batch_iterable(dataset):
        return None
    try:
        return asdict(count_tokens(dataset, tokenizer, task=task, max_length=max_length,
                                   max_rows=COUNT_TOKENS_MAX_ROWS, seed=seed))
    except ValueError:
        return None


def _setup(model, dataset, tokenizer, config: ProbeConfig, extra_samples: int = 0):
    """(task, target layers by name, their (out, in) shapes, the probe's batches, the batches of up
    to ``extra_samples`` more rows a growing probe may read after them)."""
    task = config.task or model_task(model)
    targets = find_target_layers(model, config.target_modules)
    batches, extra = sample_batches(
        dataset, tokenizer, task=task, num_samples=config.num_samples, batch_size=config.batch_size,
        max_length=config.max_length, seed=config.seed, extra_samples=extra_samples,
    )
    return task, targets, {name: layer_shape(module) for name, module in targets.items()}, batches, extra


def _accumulate(model: nn.Module, targets: dict, batches: list[ProbeBatch], task: str, make_accumulator, progress: bool,
                loss_fn=None, growth: Growth | None = None):
    """The data pass: per target layer, half sums of delta x^T over even and odd batches.

    ``loss_fn(logits, batch) -> (summed loss, count)``; None: :func:`_summed_loss` on the labels.
    ``growth`` (one process only): asked after each batch whether to stop (a growing probe).

    Returns (accumulators by layer name, loss tokens per half [2], tokens seen, the summed loss
    over the loss tokens). The model is
    left exactly as it was (see :func:`_restored_afterwards` and :func:`advisor.quantized.autograd_safe`).
    """
    batches = _at_least_two_batches(batches)
    shapes = {name: layer_shape(module) for name, module in targets.items()}
    accumulators: dict[str, _ExactAccumulator | _SketchAccumulator] = {}
    loss_tokens = [0, 0]
    tokens = 0
    summed_loss = 0.0
    current_half = [0]
    current_keep = [None]  # the batch's non-padding tokens, flattened [B * T]

    def forward_hook(name: str, in_dim: int, out_dim: int):
        def hook(module, args, output):
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return  # e.g. the no-grad first pass of activation checkpointing
            x = args[0].detach()

            def on_output_grad(delta: torch.Tensor) -> None:
                accumulator = accumulators.get(name)
                if accumulator is None:
                    accumulator = accumulators[name] = make_accumulator(name, x.device)
                flat_x = x.reshape(-1, in_dim).float()
                keep = current_keep[0] if current_keep[0].numel() == flat_x.shape[0] else None
                accumulator.add(current_half[0], delta.reshape(-1, out_dim).float(), flat_x, keep)

            output.register_hook(on_output_grad)

        return hook

    embeddings = model.get_input_embeddings()
    embedding_outputs: list[torch.Tensor] = []

    def embedding_hook(module, args, output):
        # with every weight frozen, gradients reach the layers only through this leaf
        output.requires_grad_(True)
        embedding_outputs.append(output)

    accepts_use_cache = "use_cache" in inspect.signature(model.forward).parameters
    with _restored_afterwards(model), quantized.autograd_safe(model):
        quantized.check_dequantization(model)
        handles = [embeddings.register_forward_hook(embedding_hook)]
        for name, module in targets.items():
            out_dim, in_dim = shapes[name]
            handles.append(module.register_forward_hook(forward_hook(name, in_dim, out_dim)))
        rank, world = _process_group()
        rows_before = [0]  # rows in the first i batches
        for batch in batches:
            rows_before.append(rows_before[-1] + batch.num_rows)
        try:
            device = embeddings.weight.device
            bar = tqdm(batches, desc="probe", unit="batch", disable=True if not progress or rank > 0 else None)
            for index, batch in enumerate(bar):  # a bar where stderr is a terminal
                if index % world != rank:
                    continue  # another process of the group probes this batch
                current_half[0] = index % 2
                current_keep[0] = batch.attention_mask.to(device).reshape(-1).bool()
                embedding_outputs.clear()
                kwargs = {"use_cache": False} if accepts_use_cache else {}
                with torch.enable_grad():
                    output = model(
                        input_ids=batch.input_ids.to(device),
                        attention_mask=batch.attention_mask.to(device),
                        **kwargs,
                    )
                    if loss_fn is None:
                        loss, count = _summed_loss(output.logits, batch.labels.to(device), task)
                    else:
                        loss, count = loss_fn(output.logits, batch)
                    if count > 0:
                        torch.autograd.grad(loss, embedding_outputs)
                if count > 0:
                    loss_tokens[current_half[0]] += count
                    tokens += int(batch.attention_mask.sum())
                    summed_loss += float(loss.detach())
                if growth is not None and growth(index + 1, rows_before[index + 1], accumulators, loss_tokens, tokens):
                    break
        finally:
            for handle in handles:
                handle.remove()

    if world > 1:
        tokens, summed_loss = _all_reduce(model, targets, accumulators, make_accumulator, loss_tokens, tokens,
                                          summed_loss)
    if min(loss_tokens) == 0:
        raise ValueError("the probe needs loss tokens in at least two batches; give it more rows")
    return accumulators, loss_tokens, tokens, summed_loss


def _process_group() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(model, targets: dict, accumulators: dict, make_accumulator, loss_tokens: list[int], tokens: int,
                summed_loss: float) -> tuple[int, float]:
    """Sum every accumulator and count over the process group (each process probed every
    world-th batch); afterwards every process holds what one process probing all batches would.
    Returns the summed token count and loss; ``loss_tokens`` is summed in place."""
    import torch.distributed as dist

    for name, module in targets.items():
        if name not in accumulators:  # this process saw no gradient for it (no batch of its share)
            accumulators[name] = make_accumulator(name, next(module.parameters()).device)
        for tensor in accumulators[name].sums():
            dist.all_reduce(tensor)
    device = next(model.parameters()).device if dist.get_backend() != "gloo" else torch.device("cpu")
    counts = torch.tensor([*loss_tokens, tokens, summed_loss], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    loss_tokens[:] = [int(counts[0]), int(counts[1])]
    return int(counts[2]), float(counts[3])


def gradients(
    model: nn.Module,
    dataset=None,
    config: ProbeConfig | None = None,
    *,
    tokenizer=None,
    progress: bool = False,
    loss_fn=None,
    **options,
) -> dict[str, torch.Tensor]:
    """The exact gradient G_L [out, in] (float32) of the mean loss for every target layer.

    The same rows, hooks and guarantees as :func:`probe` (the model is left untouched), for
    studies that need G itself rather than its spectrum; ``config`` and ``options`` as there
    (its method, memory and quantization do not apply: ``model`` is a module, G is exact).
    Memory: one [out, in] float32 tensor per layer, twice during the pass. ``loss_fn`` as in
    :func:`probe`.
    """
    config = ProbeConfig.build(config, **options)
    if tokenizer is None:
        _, tokenizer = load_model(model)
    task, targets, shapes, batches, _ = _setup(model, dataset, tokenizer, config)
    accumulators, loss_tokens, _, _ = _accumulate(
        model, targets, batches, task, lambda name, device: _ExactAccumulator(shapes[name], device), progress, loss_fn
    )
    total = sum(loss_tokens)
    return {name: accumulator.halves.sum(0) / total for name, accumulator in accumulators.items()}


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, int]:
    """Sum of per-token (causal LM) or per-row (classification) losses, and their count."""
    if task == TASK_SEQ_CLS:
        if logits.shape[-1] == 1:  # regression head
            return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum"), labels.numel()
        return F.cross_entropy(logits.float(), labels, reduction="sum"), labels.numel()
    shifted_labels = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted_labels.flatten(), ignore_index=-100, reduction="sum"
    )
    return loss, int((shifted_labels != -100).sum())


def _at_least_two_batches(batches: list[ProbeBatch]) -> list[ProbeBatch]:
    """The split-half noise estimate needs two batches: split a lone batch by rows."""
    if len(batches) >= 2:
        return batches
    (batch,) = batches
    if batch.num_rows < 2:
        raise ValueError("the probe needs at least 2 rows (it compares two halves of the sample)")
    cut = batch.num_rows // 2
    return [
        ProbeBatch(batch.input_ids[part], batch.attention_mask[part], batch.labels[part], len(range(batch.num_rows)[part]))
        for part in (slice(0, cut), slice(cut, None))
    ]


MIN_SKETCH_SIZE = 64  # "auto" never sketches below this: a sketch of size s reports the top s singular values


def plan_memory(shapes: dict, method: str, sketch_size: int, memory_budget: int) -> tuple[str, int, int]:
    """(method, sketch size, accumulator bytes) for the target layers' (out, in) ``shapes``.

    "auto": exact while its accumulators fit ``memory_budget`` bytes, else the largest sketch
    size up to ``sketch_size`` (halving) that fits; an error when even MIN_SKETCH_SIZE does not.
    An explicit method is kept as asked (its bytes are still reported).
    """
    def total(accumulator, size):
        return sum(accumulator.nbytes(shape, size) for shape in shapes.values())

    if method == "exact" or (method == "auto" and total(_ExactAccumulator, sketch_size) <= memory_budget):
        return "exact", sketch_size, total(_ExactAccumulator, sketch_size)
    if method == "sketch":
        return "sketch", sketch_size, total(_SketchAccumulator, sketch_size)
    size = sketch_size
    while size > MIN_SKETCH_SIZE and total(_SketchAccumulator, size) > memory_budget:
        size //= 2
    size = max(size, min(MIN_SKETCH_SIZE, sketch_size))
    needed = total(_SketchAccumulator, size)
    if needed > memory_budget:
        raise ValueError(f"the probe's accumulators need at least {needed / 2**20:,.0f} MiB (sketch size {size}) "
                         f"but the memory budget is {memory_budget / 2**20:,.0f} MiB: raise it or target fewer layers")
    return "sketch", size, needed


def _parameter_count(model: nn.Module) -> int:
    """Weights of ``model``; a bitsandbytes 4-bit weight stores two values per byte."""
    count = 0
    for parameter in model.parameters():
        packed = type(parameter).__name__ == "Params4bit"
        count += parameter.numel() * (2 * parameter.element_size() if packed else 1)
    return count


def _model_name(model: nn.Module) -> str:
    name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "name_or_path", "")
    return str(name) or type(model).__name__


@contextmanager
def _restored_afterwards(model: nn.Module):
    """Freeze every parameter and switch to eval mode; put flags, .grad and modes back after."""
    modes = [(module, module.training) for module in model.modules()]
    parameters = list(model.parameters())
    flags = [p.requires_grad for p in parameters]
    grads = [p.grad for p in parameters]
    try:
        model.eval()
        for p in parameters:
            p.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for p, flag, grad in zip(parameters, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
