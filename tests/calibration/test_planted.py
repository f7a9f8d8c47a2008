"""Planted ground truth: on the real SmolLM2 the probe's gradient finds a planted change's directions;
on a tiny random Llama, the loss-visible rank (how many planted directions the KL needs) is
checked against a KL computed from the logits.

The teacher is SmolLM2 plus a rank-k update dW = U V^T in one layer; the probe's loss is
KL(teacher || base), so every bit of gradient comes from the plant. To first order the planted
layer's gradient is S dW A (A: the layer's input covariance), whose row space is span(A V).
The planted layer is not the one with the largest gradient; by natural gain (the gradient over the
layer's Fisher scale) it is in the top 3 of 210 in all ten recorded plants and first in four, one
of which (q_proj, k = 2) is tested here, with its rank: the probe reads as many directions as the
KL on its rows needs (the loss-visible rank). What does not hold (calibration/README.md): on
three of four rank-4 plants the 16-row probe reads one direction fewer than the KL needs, on one
three fewer.
"""

import math
import statistics

import pytest
import torch
from conftest import tiny_llama, token_rows

from advisor.calibrated import load_calibration, sha256_of, shipped_calibration
from advisor.data import make_batches
from advisor.layers import find_target_layers
from advisor.probe_pass import gradients, probe
from calibration.planted import (
    ADVICE_TRAIN_SIZE,
    advised_places,
    distillation_loss,
    input_covariances,
    kl_by_direction_subset,
    loss_visible_rank,
    loss_visible_shares,
    plant,
    planted_terms,
    subspace_overlap_with,
    teacher_with,
    text_rows,
    top_k_energy_share,
)

LAYER = "model.layers.5.self_attn.q_proj"  # [576, 576]
SETTINGS = {"num_samples": 16, "batch_size": 8, "max_length": 64, "seed": 0}


@pytest.mark.parametrize("kind", ["input", "random"])
def test_the_planted_layers_gradient_points_along_the_plant_as_the_data_sees_it(smollm2, kind):
    model, tokenizer = smollm2
    rows = text_rows()
    covariance = input_covariances(model, [LAYER], rows, tokenizer, SETTINGS["num_samples"], SETTINGS["max_length"], 0)
    teacher, planted_v = plant(model, {LAYER: 2}, kind, 0.1, 0, covariance)
    gradient = gradients(model, rows, tokenizer=tokenizer, target_modules=[LAYER], loss_fn=distillation_loss(teacher),
                         **SETTINGS)[LAYER]
    chance = 2 / 576
    seen = covariance[LAYER] @ planted_v[LAYER]
    assert subspace_overlap_with(gradient, seen) > 50 * chance
    assert top_k_energy_share(gradient, 2) > 0.8
    if kind == "random":  # inputs barely excite random V: the gradient finds A V, not V
        assert subspace_overlap_with(gradient, planted_v[LAYER]) < 3 * chance


def test_the_planted_layer_leads_by_natural_gain_and_reads_its_loss_visible_rank(smollm2):
    model, tokenizer = smollm2
    rows = text_rows()
    covariance = input_covariances(model, [LAYER], rows, tokenizer, SETTINGS["num_samples"], SETTINGS["max_length"], 0)
    teacher, _ = plant(model, {LAYER: 2}, "input", 0.1, 0, covariance)
    result = probe(model, rows, tokenizer=tokenizer, method="exact", progress=False, loss_fn=distillation_loss(teacher),
                   **SETTINGS)
    gains = sorted(result.layers.values(), key=lambda stats: -stats.natural_gain)
    norms = sorted(result.layers.values(), key=lambda stats: -stats.frobenius_norm)
    assert len(gains) == 210 and gains[0].name == LAYER and gains[0].natural_gain > 1.3 * gains[1].natural_gain
    assert norms[0].name != LAYER  # the plain gradient norm does not find it
    # its rank: the probe reads as many directions as the KL on these rows needs (2 of 2 here;
    # calibration/README.md: on three of four rank-4 plants the 16-row probe reads one fewer)
    terms, _ = planted_terms(model, {LAYER: 2}, "input", 0.1, 0, covariance)
    batches = make_batches(rows, tokenizer, task="causal-lm", num_samples=SETTINGS["num_samples"], batch_size=8,
                           max_length=SETTINGS["max_length"], seed=0)
    shares = loss_visible_shares(kl_by_direction_subset(model, teacher, LAYER, terms[LAYER], batches))
    assert loss_visible_rank(shares) == 2 == result.layers[LAYER].signal_rank


def test_the_loss_visible_rank_counts_the_planted_directions_the_kl_needs():
    """On a tiny random Llama: the KL of every subset of a rank-2 plant's directions, the empty set
    checked against a KL computed directly from the two models' logits and the full set against
    plant()'s teacher; a plant whose second direction is zero needs one direction, one that changes
    nothing has no rank, and the base's weight is put back."""
    model, name = tiny_llama(), "model.layers.1.self_attn.o_proj"
    batches = make_batches(token_rows(8, 16), None, task="causal-lm", num_samples=8, batch_size=4, max_length=16)
    before = model.get_submodule(name).weight.detach().clone()
    terms, _ = planted_terms(model, {name: 2}, "random", 20.0, seed=0)
    teacher, _ = plant(model, {name: 2}, "random", 20.0, seed=0)
    kl = kl_by_direction_subset(model, teacher, name, terms[name], batches)
    with torch.no_grad():
        pairs = [(torch.log_softmax(teacher(input_ids=b.input_ids).logits[:, :-1], -1),
                  torch.log_softmax(model(input_ids=b.input_ids).logits[:, :-1], -1)) for b in batches]
    direct = sum(float((t.exp() * (t - s)).sum()) for t, s in pairs) / sum(t.shape[0] * t.shape[1] for t, _ in pairs)
    assert set(kl) == {(), (0,), (1,), (0, 1)} and kl[()] == pytest.approx(direct, rel=1e-3) and kl[()] > 1e-3
    assert kl[(0, 1)] == pytest.approx(0, abs=1e-6 * kl[()])  # all the terms: plant()'s teacher
    shares = loss_visible_shares(kl)
    assert 0 < shares[0] < 1 and shares[1] == pytest.approx(1)
    assert torch.equal(model.get_submodule(name).weight, before)

    one_direction = terms[name].clone()
    one_direction[1] = 0
    shares = loss_visible_shares(kl_by_direction_subset(model, teacher_with(model, {name: one_direction}), name,
                                                        one_direction, batches))
    assert shares == pytest.approx([1.0, 1.0], abs=1e-6) and loss_visible_rank(shares) == 1
    nothing = loss_visible_shares(kl_by_direction_subset(model, model, name, 0 * one_direction, batches))
    assert all(math.isnan(share) for share in nothing) and loss_visible_rank(nothing) is None
    assert loss_visible_rank([0.5, 0.95, 1.0]) == 2 and loss_visible_rank([0.2, 0.5]) == 2


def test_advised_places_rank_the_planted_layer_by_each_rules_need():
    """On a tiny random Llama with a plant: the planted layer's place by advised need, checked against
    the uncalibrated rule's need (the signal effective rank, at least 1) and against the shipped
    calibration's per-layer model called directly (its rank model adds one number to every layer)."""
    model, name = tiny_llama(), "model.layers.1.self_attn.o_proj"
    teacher, _ = plant(model, {name: 2}, "random", 20.0, seed=0)
    result = probe(model, token_rows(16, 16), num_samples=16, batch_size=8, max_length=16, method="exact",
                   progress=False, loss_fn=distillation_loss(teacher))
    planted = {name: {"k": 2}}
    summary = advised_places(result, planted)
    uncalibrated = {n: max(s.signal_effective_rank, 1.0) for n, s in result.layers.items()}
    assert planted[name]["advised_uncalibrated"]["place_by_need"] == 1 + sum(
        v > uncalibrated[name] for v in uncalibrated.values())
    assert planted[name]["advised_uncalibrated"]["rank"] == max(2, 2 ** math.ceil(math.log2(uncalibrated[name])))
    calibration = load_calibration(shipped_calibration("causal-lm"))
    layers = {n: vars(s) for n, s in result.layers.items()}
    relative = calibration.predict_log2_relative_need(layers, ADVICE_TRAIN_SIZE, False)
    assert planted[name]["advised_calibrated"]["place_by_need"] == 1 + sum(
        v > relative[name] + 1e-9 for v in relative.values())
    assert summary["advice_calibrated"]["sha256"] == sha256_of(shipped_calibration("causal-lm").with_suffix(".joblib"))
    assert summary["advice_uncalibrated"]["median_need"] == pytest.approx(statistics.median(uncalibrated.values()),
                                                                         abs=1e-3)


def test_a_distillation_loss_gives_autograds_gradient_and_zero_against_itself():
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    rows = token_rows(8, 16)
    measured = gradients(student, rows, num_samples=8, batch_size=4, loss_fn=distillation_loss(teacher))
    reference = tiny_llama(seed=0)
    ids = torch.tensor([row["input_ids"] for row in rows])
    with torch.no_grad():
        target = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1], -1)
    log_student = torch.log_softmax(reference(input_ids=ids).logits[:, :-1], -1)
    kl = torch.nn.functional.kl_div(log_student, target, log_target=True, reduction="sum") / (ids.shape[0] * 15)
    kl.backward()
    for name, module in find_target_layers(reference).items():
        torch.testing.assert_close(measured[name], module.weight.grad, rtol=1e-4, atol=1e-6 * float(module.weight.grad.abs().max()))
    itself = gradients(student, rows, num_samples=8, batch_size=4, loss_fn=distillation_loss(tiny_llama(seed=0)))
    assert all(float(g.abs().max()) < 1e-7 for g in itself.values())
