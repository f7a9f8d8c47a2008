"""Planted ground truth on the real SmolLM2: the probe's gradient finds a planted change's directions.

The teacher is SmolLM2 plus a rank-k update dW = U V^T in one layer; the probe's loss is
KL(teacher || base), so every bit of gradient comes from the plant. To first order the planted
layer's gradient is S dW A (A: the layer's input covariance), whose row space is span(A V).
The planted layer is not the one with the largest gradient; by natural gain (the gradient over the
layer's Fisher scale) it is in the top 3 of 210 in all ten recorded plants and first in four, one
of which (q_proj, k = 2) is tested here. What does not hold (calibration/README.md): the measured
rank tracks k only loosely.
"""

import pytest

from advisor.probe import gradients, probe
from calibration.planted import (
    distillation_loss, input_covariances, plant, subspace_overlap_with, text_rows, top_k_energy_share,
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


def test_the_planted_layer_has_the_largest_natural_gain_of_all_210(smollm2):
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
