"""Spectral statistics of a gradient matrix: how many directions it really uses.

All functions take singular values ``sv`` as a 1-D tensor sorted in descending order and
return plain Python numbers. The measures (see ../shared/DESIGN.md):

- entropy effective rank exp(-sum p ln p), p = sigma / sum sigma (Roy & Vetterli 2007);
- stable rank sum sigma^2 / sigma_1^2;
- energy rank k_tau = min k with sum_{i<=k} sigma_i^2 >= tau * sum sigma^2;
- participation ratio (sum sigma^2)^2 / sum sigma^4.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

ENERGY_LEVELS = (0.90, 0.95, 0.99)


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
