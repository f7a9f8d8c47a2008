"""Spectral measures against closed forms and planted matrices."""

import math

import pytest
import torch

from advisor import spectrum


def test_measures_on_flat_spectra_equal_the_rank():
    for k in (1, 3, 10):
        sv = torch.cat([torch.full((k,), 2.5), torch.zeros(5)]).double()
        assert spectrum.effective_rank(sv) == pytest.approx(k)
        assert spectrum.stable_rank(sv) == pytest.approx(k)
        assert spectrum.participation_ratio(sv) == pytest.approx(k)
        assert spectrum.energy_rank(sv, 0.99) == k


def test_effective_rank_matches_its_definition():
    sv = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    p = sv / sv.sum()
    assert spectrum.effective_rank(sv) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    assert spectrum.stable_rank(sv) == pytest.approx((16 + 4 + 1 + 1) / 16)
    # energies 16, 4, 1, 1 of 22: 72.7 %, 90.9 %, 95.5 %, 100 %
    assert [spectrum.energy_rank(sv, t) for t in (0.7, 0.9, 0.95, 0.99)] == [1, 2, 3, 4]


def test_zero_matrix_has_rank_zero():
    sv = torch.zeros(4, dtype=torch.float64)
    assert spectrum.effective_rank(sv) == 0 and spectrum.stable_rank(sv) == 0
    assert spectrum.energy_rank(sv, 0.9) == 0 and spectrum.participation_ratio(sv) == 0


@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
def test_gram_singular_values_match_svd_and_find_a_planted_rank(shape):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(shape[0], 5, generator=generator) @ torch.randn(5, shape[1], generator=generator)
    sv, vectors = spectrum.singular_values_and_vectors(matrix, k=5)
    torch.testing.assert_close(sv, torch.linalg.svdvals(matrix.double()), atol=1e-6 * float(sv[0]), rtol=0)
    assert int((sv > 1e-6 * sv[0]).sum()) == 5
    assert vectors.shape == (min(shape), 5)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(5, dtype=torch.float64), atol=1e-8, rtol=0)


def test_subspace_overlap_and_signal_spectrum():
    basis, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))
    assert spectrum.subspace_overlap(basis[:, :4], basis[:, :4]) == pytest.approx(1.0)
    assert spectrum.subspace_overlap(basis[:, :4], basis[:, 4:8]) == pytest.approx(0.0, abs=1e-12)
    sv = torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(spectrum.signal_spectrum(sv, 2.0), torch.tensor([21.0, 5.0], dtype=torch.float64).sqrt())



def test_map_over_cores_gives_the_sequential_results_in_order_and_restores_the_threads():
    from advisor.spectrum import map_over_cores, singular_values_and_vectors

    torch.manual_seed(0)
    matrices = [torch.randn(40 + i, 30) for i in range(9)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def values(m):
            return singular_values_and_vectors(m, 0)[0]

        parallel = map_over_cores(values, matrices, on_cpu=True)
        assert torch.get_num_threads() == 2
        for got, matrix in zip(parallel, matrices, strict=True):
            torch.testing.assert_close(got, torch.linalg.svdvals(matrix.double()))
        assert [v.tolist() for v in map_over_cores(values, matrices, on_cpu=False)] == [v.tolist() for v in parallel]
    finally:
        torch.set_num_threads(threads)
