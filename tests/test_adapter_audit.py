"""The adapter audit on adapters with planted structure: every metric and every alert."""

import copy
import json
import math

import pytest
import torch
from conftest import tiny_llama
from peft import LoraConfig, PeftModel, get_peft_model

from advisor.adapter_audit import audit
from advisor.cli import main

R = 8
LAYERS = {  # the planted layers; see planted() for the singular values of A and B
    "healthy": "model.layers.0.self_attn.q_proj",
    "low_rank": "model.layers.0.self_attn.v_proj",
    "ill_conditioned": "model.layers.1.self_attn.q_proj",
    "dominating": "model.layers.1.self_attn.v_proj",
}


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def plant(module, a_values, b_values, seed):
    """A = diag(a) V^T, B = U diag(b): known spectra of A, B and B A = U diag(a b) V^T."""
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    v = orthonormal(a.shape[1], R, seed)
    u = orthonormal(b.shape[0], R, seed + 1)
    a.data = (torch.diag(torch.tensor(a_values, dtype=torch.float64)) @ v.T).float()
    b.data = (u @ torch.diag(torch.tensor(b_values, dtype=torch.float64))).float()


@pytest.fixture(scope="module")
def planted():
    base = tiny_llama()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=R, lora_alpha=2 * R, target_modules=["q_proj", "v_proj"]))
    modules = {key: model.get_submodule("base_model.model." + name) for key, name in LAYERS.items()}
    plant(modules["healthy"], [1.0] * R, [1e-3] * R, 0)  # B A: 8 equal directions, tiny update
    plant(modules["low_rank"], [1.0] * R, [1e-3] + [1e-9] * (R - 1), 2)  # one direction
    kappas = [5000 ** (-i / (R - 1)) for i in range(R)]  # singular values of A from 1 to 1/5000
    plant(modules["ill_conditioned"], kappas, [1e-3 / k for k in kappas], 4)  # B A still 8 equal directions
    w = base.get_submodule(LAYERS["dominating"]).weight.detach().double()
    target = 0.6 * float(torch.linalg.matrix_norm(w, ord=2)) / 2.0  # scaling alpha / r = 2
    plant(modules["dominating"], [1.0] * R, [target] + [target / 2] * (R - 1), 6)
    return base, model, target


def by_name(result):
    return {layer.name: layer for layer in result.layers}


def test_metrics_equal_the_planted_structure(planted):
    base, model, target = planted
    layers = by_name(audit(model))
    healthy, low, ill, dom = (layers[LAYERS[k]] for k in ("healthy", "low_rank", "ill_conditioned", "dominating"))
    assert healthy.nominal_rank == R and healthy.scaling == 2.0 and healthy.alpha == 2 * R
    assert healthy.effective_rank == pytest.approx(R, rel=1e-6) and healthy.utilization == pytest.approx(1.0, rel=1e-6)
    assert healthy.kappa_A == pytest.approx(1.0, rel=1e-5) and healthy.kappa_B == pytest.approx(1.0, rel=1e-5)
    assert healthy.effective_rank_A == pytest.approx(R, rel=1e-5) and healthy.effective_rank_B == pytest.approx(R, rel=1e-5)
    assert low.effective_rank == pytest.approx(1.0, abs=1e-3) and low.suggested_rank == 1
    assert low.effective_rank_B == pytest.approx(1.0, abs=1e-3) and low.kappa_B == pytest.approx(1e6, rel=1e-2)
    values = torch.tensor([5000 ** (-i / (R - 1)) for i in range(R)], dtype=torch.float64)
    p = values / values.sum()
    assert ill.effective_rank_A == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-4)
    assert ill.kappa_A == pytest.approx(5000, rel=1e-3) and ill.effective_rank == pytest.approx(R, rel=1e-4)
    w = base.get_submodule(LAYERS["dominating"]).weight.detach().double()
    assert dom.sigma_max == pytest.approx(2.0 * target, rel=1e-5)
    assert dom.dominance == pytest.approx(0.6, rel=1e-5)
    frobenius = 2.0 * target * math.sqrt(1 + (R - 1) / 4)
    assert dom.frobenius == pytest.approx(frobenius, rel=1e-5)
    assert dom.update_ratio == pytest.approx(frobenius / float(w.norm()), rel=1e-5)


def test_every_alert_fires_where_planted_and_nowhere_else(planted):
    _, model, _ = planted
    result = audit(model)
    fired = {(alert.code, alert.layer, alert.severity) for alert in result.alerts}
    assert ("LOW_EFFECTIVE_RANK", LAYERS["low_rank"], "warning") in fired
    assert ("ILL_CONDITIONED", LAYERS["ill_conditioned"], "warning") in fired
    assert ("ILL_CONDITIONED", LAYERS["low_rank"], "warning") in fired  # B's tiny directions
    assert ("DOMINATING", LAYERS["dominating"], "critical") in fired
    assert not any(layer == LAYERS["healthy"] for _, layer, _ in fired)
    too_big = audit(model, thresholds={"scale_high": 0.05})  # the dominating layer's update is far above 5 % of W
    assert ("SCALE_MISMATCH", LAYERS["dominating"]) in {(a.code, a.layer) for a in too_big.alerts}
    warning_only = audit(model, thresholds={"dominating_critical": 0.7})
    assert ("DOMINATING", LAYERS["dominating"], "warning") in {(a.code, a.layer, a.severity) for a in warning_only.alerts}
    untouched = audit(get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"])))  # B = 0
    assert {a.code for a in untouched.alerts} >= {"SCALE_MISMATCH", "LOW_EFFECTIVE_RANK"}
    assert result.summary["max_dominance"] == pytest.approx(0.6, rel=1e-5)
    with pytest.raises(ValueError, match="unknown audit thresholds: kappa"):
        audit(model, thresholds={"kappa": 1})


def test_saved_adapter_audits_like_the_model_and_the_suggestion_loads(planted, tmp_path, capsys):
    base, model, _ = planted
    model.save_pretrained(tmp_path / "adapter")
    from_disk = audit(tmp_path / "adapter", base=base)
    in_memory = audit(model)
    assert [(layer.name, round(layer.effective_rank, 4)) for layer in from_disk.layers] == \
        [(layer.name, round(layer.effective_rank, 4)) for layer in in_memory.layers]
    assert not any("lora" in type(m).__name__.lower() for m in base.modules())  # the caller's base is untouched
    config = in_memory.suggested_config()
    assert config.rank_pattern[r"model\.layers\.0\.self_attn\.v_proj"] == 1
    suggested = get_peft_model(copy.deepcopy(base), config)
    low = suggested.get_submodule("base_model.model." + LAYERS["low_rank"])
    assert low.r["default"] == 1 and low.scaling["default"] == pytest.approx(2.0)  # the scaling is kept
    assert isinstance(PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter"), PeftModel)


def test_cli_audit(planted, tmp_path, tiny_checkpoint, capsys):
    from advisor.loading import load_model

    base, _ = load_model(tiny_checkpoint)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], base_model_name_or_path=str(tiny_checkpoint)))
    model.save_pretrained(tmp_path / "adapter")
    assert main(["audit", str(tmp_path / "adapter"), "--json", "--suggest", str(tmp_path / "smaller")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"layers", "summary", "alerts"}
    assert set(report["layers"][0]) == {"name", "nominal_rank", "alpha", "scaling", "effective_rank", "effective_rank_A",
                                        "effective_rank_B", "utilization", "kappa_A", "kappa_B", "sigma_max", "frobenius",
                                        "dominance", "update_ratio", "suggested_rank"}
    assert report["layers"][0]["name"].startswith("model.layers.")
    assert LoraConfig.from_pretrained(tmp_path / "smaller").target_modules
    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert main(["audit", str(tmp_path)]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err.strip().splitlines()[-1]
