"""Two CPU processes on the gloo backend probe like one process probing all the samples."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_llama, token_rows

from advisor.probe_pass import ProbeResult, probe

SETTINGS = dict(num_samples=24, batch_size=4, progress=False)


def probe_in_group(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        model = tiny_llama(seed=0)
        for method in ("exact", "sketch"):
            result = probe(model, token_rows(24, 16), method=method, sketch_size=8, **SETTINGS)
            result.save(os.path.join(out_dir, f"{method}-{rank}.json"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["exact", "sketch"])
def test_two_processes_equal_one(tmp_path_factory, method):
    out = tmp_path_factory.getbasetemp() / "distributed"
    if not (out / f"{method}-1.json").exists():
        out.mkdir(exist_ok=True)
        mp.spawn(probe_in_group, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True)
    single = probe(tiny_llama(seed=0), token_rows(24, 16), method=method, sketch_size=8, **SETTINGS)
    for rank in (0, 1):
        shared = ProbeResult.load(out / f"{method}-{rank}.json")
        assert (shared.loss_tokens, shared.tokens, shared.num_rows) == (single.loss_tokens, single.tokens, single.num_rows)
        for name, stats in single.layers.items():
            other = shared.layers[name]
            torch.testing.assert_close(torch.tensor(other.singular_values), torch.tensor(stats.singular_values),
                                       rtol=1e-4, atol=1e-6 * stats.singular_values[0])
            assert other.noise_fraction == pytest.approx(stats.noise_fraction, rel=1e-4, abs=1e-6)
    # every process ends with the same result (to the last digits of the spectral solvers)
    first, second = (json.loads((out / f"{method}-{rank}.json").read_text())["layers"] for rank in (0, 1))
    for name, stats in first.items():
        for key, value in stats.items():
            if isinstance(value, float):
                assert second[name][key] == pytest.approx(value, rel=1e-9), (name, key)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                assert second[name][key] == pytest.approx(value, rel=1e-9), (name, key)
            else:
                assert second[name][key] == value, (name, key)


def test_a_model_dispatched_by_accelerate_with_offloaded_layers(tmp_path):
    """A model placed by accelerate (``dispatch_model``; block 1 offloaded to disk, its weights on
    the meta device until its hooks load them) gives the same G as the plain model, and keeps
    its placement and hooks."""
    import copy

    from accelerate import dispatch_model

    from advisor.probe_pass import gradients

    model = tiny_llama()
    rows = token_rows(8, 16)
    expected = gradients(model, rows, num_samples=8, batch_size=4)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(copy.deepcopy(model), device_map=device_map, offload_dir=str(tmp_path))
    offloaded = dispatched.model.layers[1].self_attn.q_proj
    assert offloaded.weight.device.type == "meta"
    hook = offloaded._hf_hook
    got = gradients(dispatched, rows, num_samples=8, batch_size=4)
    assert set(got) == set(expected)
    for name, g in expected.items():
        assert torch.allclose(got[name], g, atol=1e-6, rtol=1e-4), name
    assert offloaded.weight.device.type == "meta" and offloaded._hf_hook is hook
    assert probe(dispatched, rows, num_samples=8, batch_size=4, progress=False).layers.keys() == expected.keys()
