"""Stage 4 of the data path: spectral statistics of a gradient matrix, how many directions it uses.

All functions take singular values ``sv`` as a 1-D tensor sorted in descending order and
return plain Python numbers. The measures:

- entropy effective rank exp(-sum p ln p), p = sigma / sum sigma (Roy & Vetterli 2007);
- stable rank sum sigma^2 / sigma_1^2;
- energy rank k_tau = min k with sum_{i<=k} sigma_i^2 >= tau * sum sigma^2;
- participation ratio (sum sigma^2)^2 / sum sigma^4.

:class:`LayerStats` gathers them for one probed layer, with the sampling-noise diagnostics
that the split into two half-samples allows (:func:`layer_stats`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from advisor.layers import block_depth

NOISE_TARGET = 0.2  # converged when sampling noise carries at most this share of ||G||_F^2
OVERLAP_RANK_CAP = 32  # split-half overlap compares at most this many top directions
NOISE_VALUES_KEPT = 32


def singular_values_and_vectors(
    matrix: torch.Tensor, k: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """All singular values (descending, float64) and the top-``k`` singular vectors.

    ``matrix`` is [m, n]; the vectors are those of the smaller side (right singular vectors,
    [n, k], when n <= m; left ones, [m, k], otherwise), which is all a comparison of two
    matrices of the same shape needs; ``k=0`` skips them (about 2x faster). Computed from the
    eigen-decomposition of the smaller Gram matrix: 2-3x faster than an SVD on CPU; in float64
    accurate to ~1e-8 sigma_1, in float32 (another 2x faster) to ~3e-4 sigma_1.
    """
    a = matrix.to(dtype)
    gram = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
    with one_thread_on_cpu(gram):
        if k == 0:
            eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
            return eigenvalues.clamp_min(0).sqrt().double(), gram.new_zeros(gram.shape[0], 0)
        eigenvalues, vectors = torch.linalg.eigh(gram)
    return eigenvalues.flip(0).clamp_min(0).sqrt().double(), vectors.flip(1)[:, :k]


def map_over_cores(function, items: list, *, on_cpu: bool, desc: str = "", progress: bool = False) -> list:
    """``[function(item) for item in items]``; on the CPU, ``torch.get_num_threads()`` calls at a time,
    each on one thread (the eigen-solvers release the GIL, and one thread each avoids the spin-wait
    that :func:`one_thread_on_cpu` describes), so a probe's spectra use every core; on a GPU one at a
    time. Results in the order of ``items``; with ``progress``, a bar where stderr is a terminal."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    workers = torch.get_num_threads() if on_cpu else 1
    if workers <= 1:
        return [function(item) for item in tqdm(items, desc=desc, unit="layer", disable=None if progress else True)]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(tqdm(pool.map(function, items), total=len(items), desc=desc, unit="layer",
                             disable=None if progress else True))
    finally:
        torch.set_num_threads(workers)


@contextmanager
def one_thread_on_cpu(tensor: torch.Tensor):
    """Run CPU eigen-solvers on one thread: measured here, a 576 x 576 ``eigh`` took 0.13 s on
    one thread but 32 s on two while another process kept the 2 cores busy (the solver's
    threads spin-wait for each other); on an idle machine one thread costs little."""
    if tensor.device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def product_singular_values(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of B A for B [out, r] and A [r, in], without forming it.

    With B = Q_B R_B and A^T = Q_A R_A, B A = Q_B (R_B R_A^T) Q_A^T, so they are those of the
    r x r matrix R_B R_A^T.
    """
    _, r_b = torch.linalg.qr(b.double())
    _, r_a = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(r_b @ r_a.T)


def effective_rank(sv: torch.Tensor) -> float:
    """Entropy effective rank exp(H(p)), p = sigma / sum sigma; 0 for a zero matrix."""
    total = float(sv.sum())
    if total <= 0:
        return 0.0
    p = sv[sv > 0].to(torch.float64) / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(sv: torch.Tensor) -> float:
    """sum sigma^2 / sigma_1^2; 0 for a zero matrix."""
    if sv.numel() == 0 or float(sv[0]) <= 0:
        return 0.0
    sv = sv.to(torch.float64)
    return float((sv**2).sum() / sv[0] ** 2)


def energy_rank(sv: torch.Tensor, tau: float) -> int:
    """Smallest k whose top-k singular values carry a share ``tau`` of sum sigma^2."""
    energy = sv.to(torch.float64) ** 2
    total = float(energy.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    threshold = torch.tensor(tau - 1e-12, dtype=torch.float64, device=cumulative.device)
    return min(int(torch.searchsorted(cumulative, threshold)) + 1, sv.numel())


def participation_ratio(sv: torch.Tensor) -> float:
    """(sum sigma^2)^2 / sum sigma^4; 0 for a zero matrix."""
    energy = sv.to(torch.float64) ** 2
    denominator = float((energy**2).sum())
    return float(energy.sum()) ** 2 / denominator if denominator > 0 else 0.0


def signal_spectrum(sv: torch.Tensor, noise_edge: float) -> torch.Tensor:
    """Singular values standing above a noise edge, shrunk by it: sqrt(sigma^2 - edge^2).

    ``noise_edge`` is the largest singular value of a pure-noise matrix with the same noise
    level (the probe's split-half difference); directions below it cannot be told from noise.
    """
    sv = sv.to(torch.float64)
    above = sv[sv > noise_edge]
    return (above**2 - noise_edge**2).clamp_min(0).sqrt()


def subspace_overlap(v1: torch.Tensor, v2: torch.Tensor) -> float:
    """Mean squared cosine between two subspaces: ||V1^T V2||_F^2 / k, in [0, 1].

    ``v1`` and ``v2`` are [n, k] with orthonormal columns; 1 means the same subspace, k/n is
    what two random k-dimensional subspaces of R^n give.
    """
    k = min(v1.shape[1], v2.shape[1])
    if k == 0:
        return 0.0
    return float((v1[:, :k].T @ v2[:, :k]).pow(2).sum() / k)


# --------------------------------------------------------------------------- one probed layer
@dataclass
class LayerStats:
    """Spectrum of one layer's probe gradient G (shape [out, in]) and its noise diagnostics."""

    name: str
    layer_type: str
    depth: int | None
    shape: tuple[int, int]
    tokens: int  # non-padding tokens that went through the layer
    singular_values: list[float]  # of G, descending: all (exact) or the sketch's top ones
    effective_rank: float
    stable_rank: float
    energy_rank_90: int
    energy_rank_95: int
    energy_rank_99: int
    participation_ratio: float
    frobenius_norm: float
    noise_singular_values: list[float]  # top ones of the split-half noise estimate
    noise_fraction: float  # share of ||G||_F^2 that is sampling noise, in [0, 1]
    signal_rank: int  # singular values of G above the largest noise singular value
    signal_effective_rank: float  # entropy rank of the signal directions, noise edge removed
    effective_rank_half: float  # mean effective rank of the two half-sample gradients
    rank_growth: float  # effective_rank / effective_rank_half: ~1 once the sample suffices
    subspace_overlap: float  # split-half agreement of the top directions, in [0, 1]
    converged: bool  # noise_fraction <= NOISE_TARGET
    samples_needed: int | None  # rows for noise_fraction <= NOISE_TARGET (None: noise only)
    sketch_error: float | None = None  # relative Frobenius error of the sketch (sketch mode)
    # quantized base probed with compare_full_precision: ||G_q - G||^2 / ||G_q||^2, the share of
    # this gradient that the full-precision model's gradient G does not have
    quantization_share: float | None = None
    # D (1 - noise share) ||G||_F^2 / (mean ||x||^2 mean ||delta||^2) over non-padding tokens (D = out x in):
    # what a natural-gradient step on this layer alone could gain, with the layer's Fisher
    # approximated as isotropic with the K-FAC trace; compare it across the layers of one probe
    natural_gain: float | None = None


def layer_stats(name, layer_type, accumulator, shape, loss_tokens, tokens, num_rows) -> LayerStats:
    """The statistics of one layer from its probe accumulator: ``accumulator.spectrum(a, b, k,
    precise=True)`` gives the spectrum of a G_A + b G_B (its top-``k`` singular vectors too) from the
    two half sums of delta x^T, and ``accumulator.energies`` the (sum ||x||^2, sum ||delta||^2,
    tokens) of the layer's Fisher scale; ``loss_tokens``: the loss tokens of the two halves,
    ``tokens`` the non-padding tokens seen, ``num_rows`` the rows probed."""
    n_a, n_b = loss_tokens
    n = n_a + n_b
    k = min(OVERLAP_RANK_CAP, *shape)
    full = accumulator.spectrum(1 / n, 1 / n, 0)
    # the diagnostics below tolerate float32's ~3e-4 sigma_1 error and cost half as much
    half_a = accumulator.spectrum(1 / n_a, 0.0, k, precise=False)
    half_b = accumulator.spectrum(0.0, 1 / n_b, k, precise=False)
    # (G_A/n_A - G_B/n_B) * sqrt(n_A n_B)/n has the noise of G/n and no signal
    noise_scale = math.sqrt(n_a * n_b) / n
    noise = accumulator.spectrum(noise_scale / n_a, -noise_scale / n_b, 0, precise=False)

    sv = full.singular_values
    noise_edge = float(noise.singular_values[0]) if noise.singular_values.numel() else 0.0
    noise_fraction = min(1.0, noise.energy / full.energy) if full.energy > 0 else 1.0
    overlap_rank = max(1, min(energy_rank(sv, 0.9), k))
    erank = effective_rank(sv)
    input_energy, grad_energy, kept = (float(e) for e in accumulator.energies)
    fisher_scale = input_energy * grad_energy / kept**2 if kept else 0.0  # mean ||x||^2 x mean ||delta||^2
    natural_gain = shape[0] * shape[1] * full.energy * (1 - noise_fraction) / fisher_scale if fisher_scale > 0 else 0.0
    erank_half = (effective_rank(half_a.singular_values) + effective_rank(half_b.singular_values)) / 2
    return LayerStats(
        name=name,
        layer_type=layer_type,
        depth=block_depth(name),
        shape=tuple(shape),
        tokens=tokens,
        singular_values=_rounded(sv),
        effective_rank=erank,
        stable_rank=stable_rank(sv),
        energy_rank_90=energy_rank(sv, 0.90),
        energy_rank_95=energy_rank(sv, 0.95),
        energy_rank_99=energy_rank(sv, 0.99),
        participation_ratio=participation_ratio(sv),
        frobenius_norm=math.sqrt(full.energy),
        noise_singular_values=_rounded(noise.singular_values[:NOISE_VALUES_KEPT]),
        noise_fraction=noise_fraction,
        signal_rank=int((sv > noise_edge).sum()),
        signal_effective_rank=effective_rank(signal_spectrum(sv, noise_edge)),
        effective_rank_half=erank_half,
        rank_growth=erank / erank_half if erank_half > 0 else float("nan"),
        subspace_overlap=subspace_overlap(half_a.vectors[:, :overlap_rank], half_b.vectors[:, :overlap_rank]),
        converged=noise_fraction <= NOISE_TARGET,
        samples_needed=_samples_needed(noise_fraction, num_rows),
        sketch_error=None if full.error is None else full.error / math.sqrt(full.energy) if full.energy > 0 else None,
        natural_gain=natural_gain,
    )


def _samples_needed(noise_fraction: float, num_rows: int) -> int | None:
    """Rows at which noise would carry NOISE_TARGET of the energy, noise/signal falling as 1/rows."""
    if noise_fraction >= 0.99:
        return None
    ratio = noise_fraction / (1 - noise_fraction)
    target_ratio = NOISE_TARGET / (1 - NOISE_TARGET)
    return max(num_rows, math.ceil(num_rows * ratio / target_ratio))


def _rounded(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.7g}") for v in values.tolist()]
