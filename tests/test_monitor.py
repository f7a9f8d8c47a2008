"""The training monitor: a real short Trainer run, and planted collapse / saturation / advice checks."""

import json

import pytest
import torch
from conftest import tiny_llama, token_rows
from peft import LoraConfig, get_peft_model

from advisor.monitor import RankMonitorCallback, main


def lora_model(rank=8):
    return get_peft_model(tiny_llama(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]))


def set_rank(model, name, k, scale=1e-2):
    """Make B A of layer ``name`` exactly rank k with equal singular values."""
    module = model.get_submodule("base_model.model." + name)
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    r = a.shape[0]
    generator = torch.Generator().manual_seed(0)
    a.data = torch.linalg.qr(torch.randn(a.shape[1], r, generator=generator))[0].T.contiguous()
    values = torch.tensor([scale] * k + [0.0] * (r - k))
    b.data = torch.linalg.qr(torch.randn(b.shape[0], r, generator=generator))[0] * values


def test_trainer_run_logs_metrics_and_writes_jsonl(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = lora_model()
    rows = token_rows(32, 16)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows])
    monitor = RankMonitorCallback(every=5, jsonl=tmp_path / "monitor.jsonl")
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=20, per_device_train_batch_size=4,
                                  learning_rate=1e-2, logging_steps=5, report_to=[], save_strategy="no",
                                  use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[monitor])
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert len(records[0]["layers"]) == 4  # q_proj and v_proj of 2 blocks
    assert all(0 < m["effective_rank"] <= 8 for r in records for m in r["layers"].values())
    logged = [entry for entry in trainer.state.log_history if "lora/mean_effective_rank" in entry]
    assert len(logged) == 4 and all(0 < entry["lora/mean_utilization"] <= 1 for entry in logged)
    assert main(["plot", str(tmp_path / "monitor.jsonl"), "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 0


def test_rank_collapse_in_warmup_is_alerted_once():
    model = lora_model()
    name = "model.layers.0.self_attn.q_proj"
    monitor = RankMonitorCallback(every=1, warmup_steps=100)
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                  "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
        set_rank(model, layer, 8)
    monitor.observe(model, 10)
    set_rank(model, name, 2)  # 8 -> 2 directions
    monitor.observe(model, 20)
    monitor.observe(model, 30)
    collapses = [a for a in monitor.alerts if a["code"] == "RANK_COLLAPSE"]
    assert [(a["layer"], a["step"]) for a in collapses] == [(name, 20)]
    after_warmup = RankMonitorCallback(every=1, warmup_steps=15)
    set_rank(model, name, 8)
    after_warmup.observe(model, 10)
    set_rank(model, name, 2)
    after_warmup.observe(model, 20)
    assert not [a for a in after_warmup.alerts if a["code"] == "RANK_COLLAPSE"]


def test_saturation_needs_an_unchanging_update_for_the_whole_window():
    model = lora_model()
    monitor = RankMonitorCallback(every=1, saturation_steps=100)
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                  "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
        set_rank(model, layer, 4)
    monitor.observe(model, 0)
    monitor.observe(model, 50)
    assert not [a for a in monitor.alerts if a["code"] == "SATURATED"]
    set_rank(model, "model.layers.1.self_attn.v_proj", 4, scale=2e-2)  # this one keeps moving
    monitor.observe(model, 100)
    saturated = {a["layer"] for a in monitor.alerts if a["code"] == "SATURATED"}
    assert saturated == {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                         "model.layers.1.self_attn.q_proj"}


def test_advice_check_reads_utilisation():
    model = lora_model()
    set_rank(model, "model.layers.0.self_attn.q_proj", 8)
    set_rank(model, "model.layers.1.self_attn.q_proj", 8)
    set_rank(model, "model.layers.0.self_attn.v_proj", 1)
    set_rank(model, "model.layers.1.self_attn.v_proj", 1)
    monitor = RankMonitorCallback(every=1)
    monitor.observe(model, 1)
    check = monitor.advice_check()
    assert check["q_proj"]["verdict"] == "saturated" and check["v_proj"]["verdict"] == "over-provisioned"
    assert check["q_proj"]["mean_utilization"] == pytest.approx(1.0, rel=1e-4)


def test_audit_alerts_reach_the_monitor_once():
    model = lora_model()
    name = "model.layers.1.self_attn.v_proj"
    w = model.get_submodule("base_model.model." + name).get_base_layer().weight.detach().double()
    set_rank(model, name, 8, scale=0.6 * float(torch.linalg.matrix_norm(w, ord=2)) / 2.0)  # dominance 0.6
    monitor = RankMonitorCallback(every=1)
    monitor.observe(model, 1)
    monitor.observe(model, 2)
    dominating = [a for a in monitor.alerts if a["code"] == "DOMINATING"]
    assert [(a["layer"], a["severity"], a["step"]) for a in dominating] == [(name, "critical", 1)]
