"""The probe's gradients against autograd, its sketch against exact, and model hygiene."""


import copy

import pytest
import torch
from conftest import VOCAB, autograd_weight_gradients, tiny_bert, tiny_gpt2, tiny_llama, token_rows
from torch import nn

from advisor import spectrum
from advisor.layers import find_target_layers
from advisor.probe_pass import ProbeResult, _ExactAccumulator, _SketchAccumulator, gradients, probe


@pytest.mark.parametrize(
    "build, task",
    [(tiny_llama, "causal-lm"), (tiny_gpt2, "causal-lm"), (tiny_bert, "seq-cls")],
    ids=["llama", "gpt2-conv1d", "bert-seq-cls"],
)
def test_exact_singular_values_equal_autograd(build, task):
    model = build()
    rows = token_rows(8, 16, with_class_labels=task == "seq-cls")
    result = probe(model, rows, task=task, num_samples=8, batch_size=4, method="exact", progress=False)
    expected = autograd_weight_gradients(model, rows, task)
    assert set(result.layers) == set(expected)
    for name, gradient in expected.items():
        stats = result.layers[name]
        assert stats.shape == tuple(gradient.shape)
        reference = torch.linalg.svdvals(gradient.double())
        measured = torch.tensor(stats.singular_values, dtype=torch.float64)
        assert measured.shape == reference.shape
        torch.testing.assert_close(measured / measured[0], reference / reference[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(measured, reference, rtol=1e-4, atol=1e-6 * float(reference[0]))
        assert stats.effective_rank == pytest.approx(spectrum.effective_rank(reference), rel=1e-4)


def test_gradients_equal_autograd_weight_gradients():
    model = tiny_llama()
    rows = token_rows(8, 16)
    measured = gradients(model, rows, num_samples=8, batch_size=4)
    expected = autograd_weight_gradients(model, rows, "causal-lm")
    assert measured.keys() == expected.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(measured[name], gradient, rtol=1e-4, atol=1e-6 * float(gradient.abs().max()))


def test_default_targets_are_block_linears_only():
    names = set(find_target_layers(tiny_llama()))
    assert "lm_head" not in names and all(".layers." in name for name in names)
    assert len(names) == 2 * 7
    bert_names = set(find_target_layers(tiny_bert()))
    assert not any("classifier" in n or "pooler" in n for n in bert_names)
    assert len(bert_names) == 2 * 6
    assert len(find_target_layers(tiny_gpt2())) == 2 * 4


def test_layer_types_and_aggregates():
    result = probe(tiny_gpt2(), token_rows(8, 16), num_samples=8, batch_size=4, progress=False)
    types = {stats.layer_type for stats in result.layers.values()}
    assert types == {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}
    assert set(result.by_type()) == types
    assert set(result.by_depth()) == {0, 1}
    assert result.by_type()["c_attn"]["layers"] == 2


def test_target_modules_follow_peft_matching():
    model = tiny_llama()
    assert set(find_target_layers(model, ["q_proj", "v_proj"])) == {
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    }
    assert set(find_target_layers(model, r".*\.1\.mlp\..*")) == {
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"
    }
    with pytest.raises(ValueError, match="match no linear layer"):
        find_target_layers(model, ["query"])
    with pytest.raises(ValueError, match="no linear layers"):
        find_target_layers(nn.Sequential(nn.ReLU()))


def test_result_is_deterministic_and_round_trips_json(tmp_path):
    model = tiny_llama()
    rows = token_rows(12, 16)
    first = probe(model, rows, num_samples=8, batch_size=2, seed=3, progress=False)
    second = probe(model, rows, num_samples=8, batch_size=2, seed=3, progress=False)
    assert [s.singular_values for s in first.layers.values()] == [s.singular_values for s in second.layers.values()]
    path = tmp_path / "probe.json"
    first.save(path)
    loaded = ProbeResult.load(path)
    assert loaded.layers == first.layers
    assert loaded.by_type() == first.by_type()


# ----------------------------------------------------------------------------- sketch
def planted_stream(out_dim, in_dim, rank, tokens, seed=0):
    """delta [T, out] and x [T, in] with sum_t delta_t x_t^T of rank exactly ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(out_dim, rank, generator=generator)
    delta = torch.randn(tokens, rank, generator=generator) @ left.T
    x = torch.randn(tokens, in_dim, generator=generator)
    return delta, x


@pytest.mark.parametrize("rank", [1, 5, 12])
def test_sketch_finds_planted_rank(rank):
    delta, x = planted_stream(300, 200, rank, tokens=400)
    sketch = _SketchAccumulator((300, 200), torch.device("cpu"), sketch_size=32, seed=0)
    exact = _ExactAccumulator((300, 200), torch.device("cpu"))
    for half, (d, xx) in enumerate(zip(delta.chunk(2), x.chunk(2))):
        sketch.add(half, d, xx)
        exact.add(half, d, xx)
    sketched = sketch.spectrum(1.0, 1.0, 8)
    reference = exact.spectrum(1.0, 1.0, 8)
    sv = sketched.singular_values
    assert int((sv > 1e-5 * sv[0]).sum()) == rank
    torch.testing.assert_close(sv[:rank], reference.singular_values[:rank], rtol=1e-5, atol=0)
    assert sketched.error / sketched.energy**0.5 < 1e-5


@pytest.mark.parametrize("decay", [1.0, 1.5, 2.0])
def test_sketch_agrees_with_exact_on_a_decaying_spectrum(decay):
    """Stated tolerance, with sketch size s on spectra sigma_i ~ i^-decay over a flat floor:
    every sketched singular value within 1.5 % of sigma_1 of the exact one, the effective rank
    over the top s/4 within 3 % and over the top s/2 within 7 % of exact's over the same top."""
    generator = torch.Generator().manual_seed(1)
    out_dim, in_dim, s = 400, 300, 64
    u, _ = torch.linalg.qr(torch.randn(out_dim, in_dim, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(in_dim, in_dim, generator=generator))
    sigma = torch.arange(1, in_dim + 1, dtype=torch.float32) ** -decay + 1e-3
    matrix = (u * sigma) @ v.T
    # streamed as tokens: sum_t e_t (row_t of matrix)^T, i.e. delta_t = e_t, x_t = row t
    delta, x = torch.eye(out_dim), matrix
    sketch = _SketchAccumulator((out_dim, in_dim), torch.device("cpu"), sketch_size=s, seed=0)
    sketch.add(0, delta[:200], x[:200])
    sketch.add(1, delta[200:], x[200:])
    sv = sketch.spectrum(1.0, 1.0, 8).singular_values
    exact = torch.linalg.svdvals(matrix.double())
    assert sv.numel() == s
    torch.testing.assert_close(sv, exact[:s], rtol=0, atol=0.015 * float(exact[0]))
    for top, tolerance in ((s // 4, 0.03), (s // 2, 0.07)):
        assert spectrum.effective_rank(sv[:top]) == pytest.approx(spectrum.effective_rank(exact[:top]), rel=tolerance)


def test_sketch_probe_agrees_with_exact_probe():
    model = tiny_llama()
    rows = token_rows(16, 24)
    kwargs = dict(num_samples=16, batch_size=4, progress=False)
    exact = probe(model, rows, method="exact", **kwargs)
    sketched = probe(model, rows, method="sketch", sketch_size=64, **kwargs)
    assert sketched.method == "sketch"
    for name, stats in exact.layers.items():
        other = sketched.layers[name]
        k = min(8, len(other.singular_values))
        torch.testing.assert_close(
            torch.tensor(other.singular_values[:k]), torch.tensor(stats.singular_values[:k]), rtol=0.02, atol=0
        )
        assert other.sketch_error < 0.05


def test_auto_is_exact_within_the_budget_and_refuses_a_budget_nothing_fits():
    model = tiny_llama()
    rows = token_rows(8, 16)
    assert probe(model, rows, num_samples=8, progress=False).method == "exact"
    with pytest.raises(ValueError, match="memory budget is 0 MiB"):  # (the switch to a sketch: test_memory_plan_...)
        probe(model, rows, num_samples=8, memory_budget=1000, progress=False)


# ----------------------------------------------------------------------------- hygiene
def model_state(model: nn.Module):
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def assert_same_state(before, after):
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][key]), key
    for key in ("flags", "grad_ids", "modes", "hooks"):
        assert before[key] == after[key], key
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)


def prepared_model():
    """A model in a mixed state: training mode, one frozen layer, an existing .grad."""
    model = tiny_llama()
    model.train()
    model.model.layers[0].mlp.eval()
    model.model.layers[1].self_attn.q_proj.weight.requires_grad_(False)
    model.lm_head.weight.grad = torch.full_like(model.lm_head.weight, 0.5)
    return model


def test_model_is_untouched_after_a_probe():
    model = prepared_model()
    before = model_state(model)
    probe(model, token_rows(8, 16), num_samples=8, batch_size=4, progress=False)
    assert_same_state(before, model_state(model))


def test_model_is_untouched_after_an_error_mid_probe():
    model = prepared_model()
    before = model_state(model)
    rows = [{"input_ids": torch.tensor(row["input_ids"])} for row in token_rows(8, 16)]
    rows[5]["input_ids"][3] = 10_000  # beyond the vocabulary: a DataLoader keeps its order,
    loader = torch.utils.data.DataLoader(rows, batch_size=4)  # so this fails in batch 2
    with pytest.raises(IndexError):
        probe(model, loader, num_samples=8, progress=False)
    assert_same_state(before, model_state(model))


def test_dropout_is_off_during_the_probe():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model = GPT2LMHeadModel(config).train()
    rows = token_rows(8, 16)
    first = probe(model, rows, num_samples=8, batch_size=4, progress=False)
    second = probe(model, rows, num_samples=8, batch_size=4, progress=False)
    assert [s.singular_values for s in first.layers.values()] == [s.singular_values for s in second.layers.values()]
    assert model.training


def sampled_label_rows(teacher, rows, seed=0):
    """``rows`` with next-token labels sampled from ``teacher``'s distribution at each position."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([row["input_ids"] for row in rows])
    with torch.no_grad():
        probs = torch.softmax(teacher(input_ids=ids).logits.float(), -1)
    sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(ids.shape)
    return [{"input_ids": row["input_ids"], "labels": [-100] + sampled[i, :-1].tolist()} for i, row in enumerate(rows)]


def test_noise_split_finds_no_signal_when_the_expected_gradient_is_zero():
    # labels sampled from the model itself: the expected gradient is exactly zero (score-function
    # identity), so what the probe sees is sampling noise; a fixed token map (label = 7 x + 3
    # mod V of the current token) is a teacher the model does not know: real signal
    model = tiny_llama(seed=0)
    rows = token_rows(64, 32, seed=3)
    settings = dict(num_samples=64, batch_size=8, method="exact", progress=False)
    own = probe(model, sampled_label_rows(model, rows), **settings)
    mapped = [{"input_ids": r["input_ids"], "labels": [-100] + [(7 * t + 3) % VOCAB for t in r["input_ids"][:-1]]}
              for r in rows]
    other = probe(model, mapped, **settings)
    own_noise = sorted(s.noise_fraction for s in own.layers.values())
    other_noise = sorted(s.noise_fraction for s in other.layers.values())
    assert own_noise[len(own_noise) // 2] > 0.8
    assert other_noise[len(other_noise) // 2] < 0.5


def test_memory_plan_sketches_to_fit_the_budget():
    from advisor.probe_pass import _ExactAccumulator, _SketchAccumulator, plan_memory

    shapes = {"a": (1536, 576), "b": (576, 576)}
    exact = sum(_ExactAccumulator.nbytes(s, 0) for s in shapes.values())
    assert plan_memory(shapes, "auto", 128, exact) == ("exact", 128, exact)
    sketch_128 = sum(_SketchAccumulator.nbytes(s, 128) for s in shapes.values())
    sketch_64 = sum(_SketchAccumulator.nbytes(s, 64) for s in shapes.values())
    assert plan_memory(shapes, "auto", 128, exact - 1) == ("sketch", 128, sketch_128)
    assert plan_memory(shapes, "auto", 128, sketch_128 - 1) == ("sketch", 64, sketch_64)
    with pytest.raises(ValueError, match="accumulators need at least"):
        plan_memory(shapes, "auto", 128, sketch_64 - 1)
    model = tiny_llama()
    result = probe(model, token_rows(8, 16), num_samples=8, batch_size=4, memory_budget=1, method="sketch",
                   sketch_size=4, progress=False)
    assert result.method == "sketch" and result.sketch_size == 4 and result.accumulator_bytes > 1



def test_natural_gain_from_independent_per_token_sums():
    """natural_gain = D (1 - noise share) ||G||^2 / (mean ||x||^2 mean ||delta||^2) over the real
    tokens: rows of different lengths (so the probe pads), recomputed row by row without padding."""
    import torch.nn.functional as F

    model = tiny_llama()
    generator = torch.Generator().manual_seed(3)
    rows = [{"input_ids": torch.randint(3, VOCAB, (length,), generator=generator).tolist()}
            for length in (16, 9, 12, 5, 16, 7, 11, 14)]
    result = probe(model, rows, num_samples=8, batch_size=4, method="exact", progress=False)
    reference = copy.deepcopy(model).eval()
    layers = find_target_layers(reference)
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach()[0]
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in layers.items()]
    sums = {name: [0.0, 0.0, 0] for name in layers}
    gradient = {name: 0 for name in layers}
    loss_tokens = 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        logits = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").backward()
        loss_tokens += ids.shape[1] - 1
        for name in layers:
            x, delta = inputs[name].double(), outputs[name].grad[0].double()
            sums[name][0] += float(x.square().sum())
            sums[name][1] += float(delta.square().sum())
            sums[name][2] += x.shape[0]
            gradient[name] = gradient[name] + delta.T @ x
    for handle in handles:
        handle.remove()
    for name, (x2, d2, tokens) in sums.items():
        stats = result.layers[name]
        g = gradient[name] / loss_tokens
        expected = g.numel() * float(g.square().sum()) * (1 - stats.noise_fraction) / ((x2 / tokens) * (d2 / tokens))
        assert stats.natural_gain == pytest.approx(expected, rel=1e-4), name


def test_the_probe_counts_the_whole_datasets_loss_tokens_not_only_its_sample():
    rows = token_rows(40, 12)  # pre-tokenized rows without padding: 11 next-token targets each
    result = probe(tiny_llama(), rows, num_samples=8, batch_size=4, method="exact", progress=False)
    assert result.num_rows == 8 and result.loss_tokens == 8 * 11
    assert result.dataset_tokens == {"rows": 40, "tokens": 40 * 12, "loss_tokens": 40 * 11, "counted_rows": None}
    assert ProbeResult.from_dict(result.to_dict()).dataset_tokens == result.dataset_tokens


def test_a_layer_type_without_signal_is_counted_not_averaged_in_as_zero():
    from dataclasses import replace

    from advisor.report import signal_text

    result = probe(tiny_llama(), token_rows(8, 16), num_samples=8, batch_size=4, method="exact", progress=False)
    q_proj = [name for name in result.layers if name.endswith("q_proj")]
    layers = dict(result.layers)
    layers[q_proj[0]] = replace(layers[q_proj[0]], signal_rank=0, signal_effective_rank=0.0)
    layers[q_proj[1]] = replace(layers[q_proj[1]], signal_rank=3, signal_effective_rank=2.5)
    summary = replace(result, layers=layers).by_type()["q_proj"]
    assert summary["signal_effective_rank"] == 2.5 and summary["no_signal"] == 1
    assert signal_text(summary) == "2.5 (1 none)"
    assert signal_text({"signal_effective_rank": None, "no_signal": 2}) == "none"


def test_base_loss_is_the_frozen_models_own_mean_loss_on_the_probed_rows():
    model = tiny_llama()
    rows = token_rows(8, 16)
    result = probe(model, rows, num_samples=8, batch_size=4, method="exact", progress=False)
    ids = torch.tensor([row["input_ids"] for row in rows])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss  # transformers' own shifted mean over 8 x 15 targets
    assert result.base_loss == pytest.approx(float(expected), rel=1e-5)
    assert ProbeResult.from_dict(result.to_dict()).base_loss == result.base_loss


def partly_shared_rows(random_tokens: int, num_rows: int = 512) -> list[dict]:
    """Rows of one 16-token sequence with ``random_tokens`` positions replaced at random: the more
    are random, the more of each row's gradient is noise that only more rows average away."""
    import random

    base, rng = token_rows(1, 16)[0]["input_ids"], random.Random(0)
    rows = []
    for _ in range(num_rows):
        ids = list(base)
        for position in rng.sample(range(16), random_tokens):
            ids[position] = rng.randrange(3, 50)
        rows.append({"input_ids": ids})
    return rows


def test_the_cheap_noise_share_is_the_spectrum_s_noise_fraction():
    """From Frobenius norms of the same half sums, the noise share the spectra report."""
    from advisor.probe_config import ProbeConfig
    from advisor.probe_pass import _accumulate, _setup, noise_share

    rows = partly_shared_rows(10)
    result = probe(tiny_llama(), rows, num_samples=32, batch_size=4, method="exact", progress=False)
    model = tiny_llama()
    task, targets, shapes, batches, _ = _setup(model, rows, None, ProbeConfig(num_samples=32, batch_size=4))
    accumulators, loss_tokens, _, _ = _accumulate(model, targets, batches, task,
                                                  lambda name, device: _ExactAccumulator(shapes[name], device), False)
    for name, stats in result.layers.items():
        assert noise_share(accumulators[name], loss_tokens) == pytest.approx(stats.noise_fraction, rel=1e-4)


def test_a_growing_probe_doubles_until_the_noise_share_converges_and_keeps_its_first_rows_statistics(tmp_path):
    """Ten of sixteen tokens random: the median noise share falls about as 1/rows and reaches 20 %
    at 256 rows; the statistics of the first 16 rows are those of a fixed probe of 16 rows."""
    import statistics

    rows = partly_shared_rows(10)
    grown = probe(tiny_llama(), rows, num_samples=16, batch_size=4, max_samples=512, method="exact", progress=False)
    assert grown.growth["stopped"] == "converged" and [r for r, _ in grown.growth["checks"]] == [16, 32, 64, 128, 256]
    shares = [share for _, share in grown.growth["checks"]]
    assert all(later < earlier for earlier, later in zip(shares, shares[1:])) and shares[-1] <= spectrum.NOISE_TARGET
    assert grown.num_rows == 256 and statistics.median(s.noise_fraction for s in grown.layers.values()) <= 0.2
    fixed = probe(tiny_llama(), rows, num_samples=16, batch_size=4, method="exact", progress=False)
    for name, stats in fixed.layers.items():  # the same first rows in the same batches and halves
        kept = grown.protocol_layers[name]
        torch.testing.assert_close(torch.tensor(kept.singular_values), torch.tensor(stats.singular_values), rtol=1e-4,
                                   atol=1e-6 * stats.singular_values[0])
        assert kept.noise_fraction == pytest.approx(stats.noise_fraction, rel=1e-4) and kept.tokens == stats.tokens
    assert grown.calibration_layers is grown.protocol_layers and fixed.calibration_layers is fixed.layers
    assert grown.growth["first_check_seconds"] > 0  # the first rows' spectra, timed apart from the final ones
    grown.save(tmp_path / "probe.json")
    assert ProbeResult.load(tmp_path / "probe.json") == grown
    # a cap stops it first: rows, or seconds (checked after every batch); noise that does not average away stops it too
    capped = probe(tiny_llama(), rows, num_samples=16, batch_size=4, max_samples=32, method="exact", progress=False)
    assert capped.growth["stopped"] == "row cap" and capped.num_rows == 32 and capped.rows_drawn == 32
    timed = probe(tiny_llama(), rows, num_samples=16, batch_size=4, max_samples=512, max_seconds=1e-9, method="exact",
                  progress=False)  # never stopped before its first 16 rows, which the calibration reads
    assert [r for r, _ in timed.growth["checks"]] == [16, 20] and timed.growth["stopped"] == "time cap"
    assert timed.num_rows == 20 and timed.rows_drawn is None
    noise = probe(tiny_llama(), token_rows(512, 16), num_samples=16, batch_size=4, max_samples=512, method="exact",
                  progress=False)  # every token random: nothing shared for more rows to find
    assert noise.growth["stopped"] == "stopped falling" and noise.num_rows <= 64
    assert probe(tiny_llama(), rows, num_samples=16, batch_size=4, method="exact", progress=False).growth is None


def test_growth_settings_are_checked():
    from advisor.probe_config import ProbeConfig

    with pytest.raises(ValueError, match="max_samples must be an integer >= num_samples"):
        ProbeConfig(num_samples=64, max_samples=32)
    with pytest.raises(ValueError, match="max_seconds must be a positive number"):
        ProbeConfig(max_samples=128, max_seconds=0)


def test_the_sketch_s_cheap_noise_share_follows_the_exact_one():
    """From the range sketch Y = G Omega (16 columns here): each layer's noise share within 0.15 of the
    exact half sums', their median within 10 %."""
    import statistics

    from advisor.probe_config import ProbeConfig
    from advisor.probe_pass import _accumulate, _setup, noise_share

    model = tiny_llama()
    task, targets, shapes, batches, _ = _setup(model, partly_shared_rows(10), None, ProbeConfig(num_samples=64, batch_size=4))
    exact, tokens, _, _ = _accumulate(model, targets, batches, task, lambda n, d: _ExactAccumulator(shapes[n], d), False)
    sketch, _, _, _ = _accumulate(model, targets, batches, task, lambda n, d: _SketchAccumulator(shapes[n], d, 16, 0), False)
    shares = {name: (noise_share(exact[name], tokens), noise_share(sketch[name], tokens)) for name in exact}
    assert all(abs(a - b) <= 0.15 for a, b in shares.values())
    medians = [statistics.median(pair[k] for pair in shares.values()) for k in (0, 1)]
    assert medians[1] == pytest.approx(medians[0], rel=0.1)


def test_a_growing_probe_is_refused_under_torch_distributed_before_the_model_is_touched(monkeypatch):
    """It decides when to stop from its own sums, which a process group splits: refused at once,
    no hook left behind; advise() then probes num_samples rows without growing."""
    from advisor import probe_pass, recommend

    model = tiny_llama()
    before = model_state(model)
    monkeypatch.setattr(probe_pass, "_process_group", lambda: (0, 2))
    with pytest.raises(ValueError, match="a growing probe .* runs in one process"):
        probe(model, token_rows(16, 16), num_samples=8, max_samples=16, progress=False)
    assert_same_state(before, model_state(model))
    monkeypatch.setattr(probe_pass, "_process_group", lambda: (0, 1))
    monkeypatch.setattr(recommend, "_distributed", lambda: True)
    advice = recommend.advise(model, token_rows(16, 16), calibration=None, batch_size=4, progress=False,
                              return_advice=True)
    assert advice.probe.growth is None and advice.probe.config["max_samples"] is None
