"""The sweep runner: resumable append-only results, stable run ids, and one real tiny training run."""

import json
import shlex

import pytest
import torch
from conftest import tiny_bert

from calibration import sweep
from calibration.sweep import ResultsFile, find_config, run_grid
from calibration.train import RunConfig, adapter_layers, layer_group, make_lora_config

torch.set_num_threads(1)


def config(**changes) -> RunConfig:
    base = dict(
        model="minilm", task="bbc-news", train_size=250, learning_rate=1e-3, steps=200, batch_size=16,
        max_length=64, eval_rows=256, rank=8, alpha=8.0, use_rslora=True, warmup_steps=20, eval_every=100,
    )
    return RunConfig(**{**base, **changes})


def fake_run(calls: list):
    def run(c: RunConfig) -> dict:
        calls.append(c.run_id)
        return {"run_id": c.run_id, "config": c.to_dict(), "eval_loss": 0.5, "padding": "x" * 200}

    return run


def lines(path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- run ids
def test_run_id_is_stable_and_canonical():
    c = config()
    assert c.to_json() == (
        '{"alpha":8.0,"alpha_over_r":null,"attention_rank":null,"batch_size":16,"data_seed":0,"eval_every":100,'
        '"eval_rows":256,"learning_rate":0.001,"max_length":64,"mlp_rank":null,"model":"minilm","protocol":1,'
        '"rank":8,"seed":0,"steps":200,"task":"bbc-news","train_size":250,"use_rslora":true,"warmup_steps":20}'
    )
    # sha1 of the line above; a change here makes every stored run look new: change PROTOCOL on purpose instead
    assert c.run_id == "bb4cd181a688"
    assert config(alpha=8).run_id == c.run_id  # int and float alpha are the same config
    assert RunConfig.from_json(c.to_json()) == c and RunConfig.from_dict(c.to_dict()).run_id == c.run_id
    assert config(seed=1).run_id != c.run_id and config(rank=16).run_id != c.run_id
    assert json.loads(c.to_json())["protocol"] == 1


def test_optional_fields_enter_the_id_only_when_set():
    assert "rank_pattern" not in config().to_json() and "eva_rho" not in config().to_json()
    pattern = config(rank=None, rank_pattern={"x.query": 2, "x.key": 4})
    assert '"rank_pattern":{"x.key":4,"x.query":2}' in pattern.to_json()
    assert RunConfig.from_json(pattern.to_json()) == pattern and pattern.run_id != config().run_id
    eva = config(eva_rho=2)
    assert '"eva_rho":2.0' in eva.to_json() and eva.run_id not in (config().run_id, config(eva_rho=1.5).run_id)


def test_command_reproduces_the_config():
    c = config(attention_rank=4, mlp_rank=0, rank=None, alpha=None, alpha_over_r=2.0, use_rslora=False)
    argv = shlex.split(c.command())
    assert argv[:4] == ["python", "-m", "calibration.sweep", "--config"]
    assert RunConfig.from_json(argv[4]).run_id == c.run_id


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rank": 8, "attention_rank": 4, "mlp_rank": 4}, "give one of"),
        ({"rank_pattern": {"a": 4}}, "give one of"),
        ({"rank": None, "rank_pattern": {"a": 0}}, "nothing to adapt"),
        ({"rank": None, "rank_pattern": {"a": 4}, "eva_rho": 2.0}, "eva_rho needs a uniform rank"),
        ({"rank": None, "attention_rank": 4}, "both attention_rank"),
        ({"rank": None, "attention_rank": 0, "mlp_rank": 0}, "nothing to adapt"),
        ({"alpha_over_r": 2.0}, "exactly one of alpha"),
        ({"rank": 0}, "rank must be"),
        ({"model": "smollm2"}, "runs on"),
        ({"task": "nope"}, "unknown task"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        config(**changes)


def test_scaling_follows_peft():
    assert config(rank=16, alpha=8.0, use_rslora=True).scaling_of("mlp") == pytest.approx(2.0)
    c = config(rank=None, attention_rank=4, mlp_rank=0, alpha=None, alpha_over_r=2.0, use_rslora=False)
    assert c.scaling_of("attention") == 2.0 and c.scaling_of("mlp") == 0.0 and c.alpha_of("attention") == 8.0


# --------------------------------------------------------------------------- results file
def test_resume_skips_done_runs_and_repairs_a_cut_line(tmp_path):
    configs = [config(seed=s) for s in range(4)]
    path = tmp_path / "grid.jsonl"
    run_grid(configs[:2], ResultsFile(path), run=fake_run([]), log=lambda m: None)
    with open(path, "ab") as f:  # a third record killed mid-write
        f.write(json.dumps({"run_id": configs[2].run_id, "eval_loss": 1.0}).encode()[:30])
    assert [r["run_id"] for r in ResultsFile(path).records()] == [c.run_id for c in configs[:2]]

    calls = []
    counts = run_grid(configs, ResultsFile(path), run=fake_run(calls), log=lambda m: None)
    assert calls == [configs[2].run_id, configs[3].run_id]
    assert counts == {"ran": 2, "skipped": 2, "duplicates": 0}
    records = [json.loads(line) for line in lines(path)]  # every line parses: the cut line is gone
    assert [r["run_id"] for r in records] == [c.run_id for c in configs]
    assert path.read_bytes().endswith(b"\n")


def test_a_kill_between_runs_leaves_no_duplicate(tmp_path):
    configs = [config(seed=s) for s in range(5)]
    path = tmp_path / "grid.jsonl"
    calls = []

    def killed_on_third(c):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_run(calls)(c)

    with pytest.raises(KeyboardInterrupt):
        run_grid(configs, ResultsFile(path), run=killed_on_third, log=lambda m: None)
    assert len(lines(path)) == 2
    again = []
    run_grid(configs, ResultsFile(path), run=fake_run(again), log=lambda m: None)
    assert again == [c.run_id for c in configs[2:]]
    ids = [json.loads(line)["run_id"] for line in lines(path)]
    assert ids == [c.run_id for c in configs] and len(set(ids)) == len(ids)
    # a full rerun has nothing left to do
    assert run_grid(configs, ResultsFile(path), run=fake_run(again), log=lambda m: None)["ran"] == 0


def test_append_refuses_a_run_id_already_written(tmp_path):
    results = ResultsFile(tmp_path / "grid.jsonl")
    record = {"run_id": "abc", "eval_loss": 1.0}
    assert results.append(record) and not results.append(record)
    assert len(results.records()) == 1


def test_limit_and_shards(tmp_path):
    configs = [config(seed=s) for s in range(5)]
    calls = []
    results = ResultsFile(tmp_path / "grid.jsonl")
    assert run_grid(configs, results, run=fake_run(calls), limit=1, shard=(1, 2), log=lambda m: None)["ran"] == 1
    run_grid(configs, results, run=fake_run(calls), shard=(1, 2), log=lambda m: None)
    run_grid(configs, results, run=fake_run(calls), shard=(0, 2), log=lambda m: None)
    assert calls == [configs[i].run_id for i in (1, 3, 0, 2, 4)]
    assert results.run_ids() == {c.run_id for c in configs}


def test_a_run_another_process_wrote_meanwhile_is_not_trained_again(tmp_path):
    configs = [config(seed=s) for s in range(3)]
    results = ResultsFile(tmp_path / "grid.jsonl")
    calls = []

    def run_while_another_process_writes(c: RunConfig) -> dict:
        if not calls:  # the other process finishes configs[1] while this one trains configs[0]
            ResultsFile(results.path).append(fake_run([])(configs[1]))
        return fake_run(calls)(c)

    counts = run_grid(configs, results, run=run_while_another_process_writes, log=lambda m: None)
    assert calls == [configs[0].run_id, configs[2].run_id] and counts["skipped"] == 1
    assert len(lines(results.path)) == 3


def test_task_and_size_filters_pick_the_grids_runs(capsys):
    assert sweep.main(["--grid", "encoder-rank", "--task", "health-tweets", "--train-size", "4000", "--dry-run"]) == 0
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(plan) == 14 and all("minilm/health-tweets n=4000 " in line for line in plan)
    with pytest.raises(SystemExit) as error:
        sweep.main(["--grid", "encoder-rank", "--task", "health-tweet", "--dry-run"])
    assert error.value.code == 2 and "--task health-tweet: not in grid encoder-rank" in capsys.readouterr().err
    assert sweep.main(["--grid", "smollm2-capacity", "--task", "brown-lm", "--train-size", "1000", "--rank", "1", "16",
                       "--learning-rate", "0.001", "--dry-run"]) == 0
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(plan) == 6 and all(" lr=0.001 " in line and (" r=1 " in line or " r=16 " in line) for line in plan)
    assert sum(" eva rho=2 " in line for line in plan) == 2  # the cell's EVA baseline spends r = 16's budget
    with pytest.raises(SystemExit) as error:
        sweep.main(["--grid", "smollm2-capacity", "--rank", "2", "--dry-run"])
    assert error.value.code == 2 and "--rank 2: not in grid smollm2-capacity (1, 4, 16, 64, 256)" in capsys.readouterr().err


def test_run_ids_pick_the_grids_runs_in_the_order_given(capsys):
    ids = [c.run_id for c in sweep.grid_smollm2_capacity() if c.task == "brown-lm" and c.train_size == 1000][:3]
    assert sweep.main(["--grid", "smollm2-capacity", "--run-id", ids[2], ids[0], "--dry-run"]) == 0
    plan = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert plan == [ids[2], ids[0]]
    with pytest.raises(SystemExit) as error:  # a run the filters leave out is not one of the grid's runs asked for
        sweep.main(["--grid", "smollm2-capacity", "--task", "shakespeare", "--run-id", ids[0], "--dry-run"])
    assert error.value.code == 2 and f"--run-id {ids[0]}: not among grid smollm2-capacity's runs" in capsys.readouterr().err


def test_runs_another_grid_already_holds_are_skipped_and_read_once(tmp_path):
    from calibration.records import read_records

    configs = [config(seed=s) for s in range(3)]
    calls = []
    other = tmp_path / "other.jsonl"
    run_grid(configs[:1], ResultsFile(other), run=fake_run([]), log=lambda m: None)
    mine = ResultsFile(tmp_path / "grid.jsonl")
    run_grid(configs, mine, run=fake_run(calls), done_elsewhere=frozenset(ResultsFile(other).run_ids()), log=lambda m: None)
    assert calls == [configs[1].run_id, configs[2].run_id]
    run_grid(configs[:1], mine, run=fake_run([]), log=lambda m: None)  # now in both files
    assert [r["run_id"] for r in read_records([other, mine.path])] == [c.run_id for c in (configs[0], configs[1], configs[2])]


def test_recorded_elsewhere_reads_the_other_sweep_files_only(tmp_path, monkeypatch):
    from calibration import records
    from calibration.sweep import recorded_elsewhere

    monkeypatch.setattr(records, "RESULTS_DIR", tmp_path)
    (tmp_path / "grid-a.jsonl").write_text('{"run_id": "a1"}\n{"run_id": "a2"}\n')
    (tmp_path / "grid-b.jsonl").write_text('{"run_id": "b1"}\n')
    (tmp_path / "planted.jsonl").write_text('{"kind": "input"}\n')  # a study: no run_id
    (tmp_path / "grid-lr.jsonl").write_text('{"run_id": "lr1"}\n')  # a learning-rate check
    assert recorded_elsewhere(ResultsFile(tmp_path / "grid-b.jsonl")) == {"a1", "a2"}


def test_a_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "grid.jsonl"
    path.write_text('{"run_id": "a"}\nnot json\n{"run_id": "b"}\n')
    with pytest.raises(ValueError, match="grid.jsonl:2"):
        ResultsFile(path).records()


def test_find_config_for_rerun(tmp_path):
    c = config(seed=3)
    path = tmp_path / "grid.jsonl"
    run_grid([c], ResultsFile(path), run=fake_run([]), log=lambda m: None)
    assert find_config(c.run_id, [path]) == c
    with pytest.raises(ValueError, match="no results file"):
        find_config("000000000000", [path])


def test_grids_are_fixed_and_valid():
    for name, build in sweep.GRIDS.items():
        configs = build()
        assert configs, name
        assert [c.run_id for c in configs] == [c.run_id for c in build()]  # a fixed order
        assert len({c.run_id for c in configs}) == len(configs)


# --------------------------------------------------------------------------- LoRA config and adapter spectrum
def test_per_type_ranks_reach_peft():
    from peft import get_peft_model

    model = tiny_bert()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    c = config(rank=None, attention_rank=2, mlp_rank=6, alpha=None, alpha_over_r=2.0, use_rslora=False)
    peft_model = get_peft_model(model, make_lora_config(c, targets, "seq-cls"))
    layers = {layer["name"]: layer for layer in adapter_layers(peft_model, targets)}
    assert set(layers) == set(targets)
    for name, layer in layers.items():
        expected = 2 if layer_group(name) == "attention" else 6
        assert layer["r"] == expected and layer["scaling"] == pytest.approx(2.0), name
    assert layer_group("bert.encoder.layer.0.attention.output.dense") == "attention"
    assert layer_group("bert.encoder.layer.0.output.dense") == "mlp"

    attention_only = config(rank=None, attention_rank=4, mlp_rank=0, alpha=8.0, use_rslora=True)
    peft_model = get_peft_model(tiny_bert(), make_lora_config(attention_only, targets, "seq-cls"))
    layers = adapter_layers(peft_model, targets)
    assert {layer_group(layer["name"]) for layer in layers} == {"attention"}
    assert all(layer["scaling"] == pytest.approx(4.0) for layer in layers)


def test_rank_pattern_reaches_peft():
    from peft import get_peft_model

    model = tiny_bert()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    pattern = {name: 1 + k % 3 for k, name in enumerate(targets[1:])}  # the first target is left out
    c = config(rank=None, rank_pattern=pattern, alpha=8.0, use_rslora=True)
    layers = {layer["name"]: layer for layer in adapter_layers(get_peft_model(model, make_lora_config(c, targets, "seq-cls")), targets)}
    assert {name: layer["r"] for name, layer in layers.items()} == pattern
    assert all(layer["scaling"] == pytest.approx(8.0 / layer["r"] ** 0.5) for layer in layers.values())
    with pytest.raises(ValueError, match="does not have"):
        make_lora_config(config(rank=None, rank_pattern={"nope": 2}), targets, "seq-cls")


def test_top_blocks_adapts_only_the_last_blocks():
    from peft import get_peft_model

    from advisor.layers import block_depth

    model = tiny_bert()  # two BERT blocks
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    c = config(top_blocks=1)
    assert '"top_blocks":1' in c.to_json() and c.run_id != config().run_id and "top1" in c.summary()
    assert "top_blocks" not in config().to_json()
    layers = adapter_layers(get_peft_model(model, make_lora_config(c, targets, "seq-cls")), targets)
    last = max(block_depth(name) for name in targets)
    assert {layer["name"] for layer in layers} == {name for name in targets if block_depth(name) == last}
    with pytest.raises(ValueError, match="top_blocks"):
        config(top_blocks=0)


def test_adapter_spectrum_matches_a_direct_svd():
    from peft import get_peft_model

    from advisor import spectrum

    model = tiny_bert()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    peft_model = get_peft_model(model, make_lora_config(config(rank=4), targets, "seq-cls"))
    torch.manual_seed(1)
    for module in peft_model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            module.lora_B["default"].weight.data.normal_()
    layer = adapter_layers(peft_model, targets)[0]
    module = peft_model.get_submodule("base_model.model." + layer["name"])
    delta = (module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight).detach()
    sv = torch.linalg.svdvals(delta.double())
    assert layer["sigma_max"] == pytest.approx(float(sv[0]), rel=1e-5)
    assert layer["frobenius"] == pytest.approx(float(sv.norm()), rel=1e-5)
    assert layer["effective_rank_BA"] == pytest.approx(spectrum.effective_rank(sv[:4]), rel=1e-4)


# --------------------------------------------------------------------------- one real run
def _minilm_available() -> bool:
    from calibration import sources
    from calibration.tasks import TASKS

    return sources.is_fetched("minilm") and TASKS["bbc-news"].is_available()


@pytest.mark.skipif(not _minilm_available(), reason="MiniLM or the bbc-news source is not in the cache")
def test_real_three_step_run(tmp_path, monkeypatch):
    from calibration import train

    monkeypatch.setattr(train, "_cache_root", lambda: tmp_path)  # probe / initial-eval caches
    c = RunConfig(
        model="minilm", task="bbc-news", train_size=32, learning_rate=1e-3, steps=3, batch_size=8,
        max_length=64, eval_rows=32, rank=4, alpha=8.0, use_rslora=True, warmup_steps=1,
    )
    record = train.train_run(c)
    for field in (
        "run_id", "model", "task", "train_size", "lora", "learning_rate", "steps", "batch_size", "max_length", "seed",
        "eval_loss", "eval_accuracy", "initial_eval_loss", "train_loss_curve", "train_seconds", "trainable_params",
        "total_params", "adapter_layers", "probe", "versions", "date", "command",
    ):
        assert field in record, field
    assert record["run_id"] == c.run_id and RunConfig.from_dict(record["config"]) == c
    assert json.loads(json.dumps(record)) == record  # plain JSON
    assert 0 < record["eval_loss"] < 10 and 0 <= record["eval_accuracy"] <= 1
    assert record["train_loss_curve"][-1][0] == 3 and record["eval_curve"][-1][0] == 3

    # trainable parameters: r (in + out) per adapted layer plus the 384 x 5 head
    shapes = {name: layer["shape"] for name, layer in record["probe"]["layers"].items()}
    assert len(record["adapter_layers"]) == len(shapes) == record["lora"]["target_modules"] == 36
    expected = sum(layer["r"] * sum(shapes[layer["name"]]) for layer in record["adapter_layers"]) + 384 * 5 + 5
    assert record["trainable_params"] == expected
    for layer in record["adapter_layers"]:
        assert 0 < layer["effective_rank_BA"] <= layer["r"] + 1e-6 and layer["sigma_max"] > 0
    probe_layer = next(iter(record["probe"]["layers"].values()))
    assert "singular_values" not in probe_layer and "effective_rank" in probe_layer
    assert record["probe"]["num_rows"] == 32

    # the same config gives the same result (the probe and initial eval now come from the cache)
    again = train.train_run(c)
    assert again["eval_loss"] == record["eval_loss"] and again["probe"] == record["probe"]
    assert [layer["sigma_max"] for layer in again["adapter_layers"]] == [layer["sigma_max"] for layer in record["adapter_layers"]]


@pytest.mark.skipif(not _minilm_available(), reason="MiniLM or the bbc-news source is not in the cache")
def test_eva_initialises_a_from_the_inputs():
    """EVA sets each A to the top right singular vectors of the layer's inputs (orthonormal rows,
    unlike PEFT's default init) and redistributes at most the uniform rank budget."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from calibration import train
    from calibration.tasks import TASKS

    c = RunConfig(model="minilm", task="bbc-news", train_size=64, learning_rate=1e-3, steps=3, batch_size=16,
                  max_length=64, eval_rows=32, rank=4, alpha=8.0, use_rslora=True, eva_rho=2.0)
    task = TASKS[c.task]
    model, tokenizer = train._load_base(c.model, task, c.seed)
    targets = train._targets(model)
    peft_model = get_peft_model(model, make_lora_config(c, targets, "seq-cls"))
    train._initialise_eva(peft_model, train.training_rows(c), tokenizer, "seq-cls", c, task.label_names())
    ranks = []
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach()
            assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)
            ranks.append(a.shape[0])
    assert sum(ranks) <= 4 * len(targets) and max(ranks) <= 8


def _task_available(name: str) -> bool:
    from calibration.tasks import TASKS

    return TASKS[name].is_available()


@pytest.mark.skipif(not _task_available("bbc-news"), reason="the bbc-news source is not in the cache")
def test_grid_train_sizes_fit_the_splits():
    from calibration.tasks import TASKS

    for task, rows in sweep.TRAIN_SPLIT_ROWS.items():
        assert len(TASKS[task].rows("train")) == rows
    sizes = {}
    for build in sweep.GRIDS.values():
        for c in build():
            sizes[c.task] = max(sizes.get(c.task, 0), c.train_size)
    for task, size in sizes.items():
        if TASKS[task].is_available():
            assert size <= len(TASKS[task].rows("train")), task


def test_the_capacity_grid_uses_the_parametrization_the_scaling_grid_chose():
    from calibration.sweep import grid_smollm2_capacity, grid_smollm2_scaling

    capacity = grid_smollm2_capacity()
    assert {(c.alpha, c.use_rslora, c.top_blocks) for c in capacity} == {(32.0, False, 4)}
    assert {c.learning_rate for c in capacity} == {3e-4, 1e-3, 3e-3, 1e-2} and {c.seed for c in capacity} == {0, 1}
    assert all(c.steps == c.train_size // c.batch_size for c in capacity)  # one epoch: steps follow the data
    shared = {c.run_id for c in capacity} & {c.run_id for c in grid_smollm2_scaling()}
    assert len(shared) == 2 * 2 * 3  # seed 0, r = 1 and 64, three rates, on the two tasks both grids train


def test_the_gemma3_capacity_grid_is_smollm2s_on_the_second_causal_lm():
    from dataclasses import replace

    from calibration.sweep import grid_gemma3_capacity, grid_smollm2_capacity

    gemma3, smollm2 = grid_gemma3_capacity(), grid_smollm2_capacity()
    assert len(gemma3) == len(smollm2) == 2 * 9 * (4 * 2 * 5 + 2)  # sizes x tasks x (rates x seeds x ranks + EVA's seeds)
    assert {c.model for c in gemma3} == {"gemma3"} and not {c.run_id for c in gemma3} & {c.run_id for c in smollm2}
    assert [replace(c, model="smollm2") for c in gemma3] == smollm2  # the same runs, in the same order
    assert sweep.estimated_seconds(gemma3[0]) > 0


def test_the_transfer_grid_is_a_capacity_cell_with_every_block_adapted_kept_out_of_the_labels():
    from dataclasses import replace

    from calibration.records import EXPERIMENT_FILES, STUDY_FILES
    from calibration.sweep import grid_smollm2_capacity, grid_smollm2_transfer

    transfer, capacity = grid_smollm2_transfer(), {c.run_id: c for c in grid_smollm2_capacity()}
    assert len(transfer) == 2 * 4 * 3 * 2 and {c.top_blocks for c in transfer} == {None}
    assert [c.task for c in transfer] == ["shakespeare"] * 24 + ["brown-lm"] * 24
    assert [c.seed for c in transfer[:12]] == [0] * 12  # shakespeare: seed 0 of every run first
    assert [(c.learning_rate, c.seed) for c in transfer[24:32]] == [(1e-3, 0)] * 4 + [(1e-3, 1)] * 4  # brown-lm: 1e-3
    for c in transfer:  # each capacity cell's own run, but for the blocks adapted
        assert replace(c, top_blocks=4).run_id in capacity and c.run_id not in capacity
    assert "smollm2-transfer.jsonl" in STUDY_FILES and "smollm2-transfer.jsonl" not in EXPERIMENT_FILES


def test_the_eva_advised_grid_trains_eva_and_the_uniform_rank_of_the_same_capacity_cell():
    """Per advised cell, EVA at its rank's budget and that uniform rank at 1e-3, both seeds, each the
    capacity cell's own run but for the rank (and EVA); a study file, out of the labels."""
    from dataclasses import replace

    from calibration.records import EXPERIMENT_FILES, STUDY_FILES
    from calibration.sweep import ADVISED_RANKS, grid_eva_advised_budget, grid_gemma3_capacity, grid_smollm2_capacity

    grid = grid_eva_advised_budget()
    capacity = {c.run_id for c in grid_smollm2_capacity() + grid_gemma3_capacity()}
    assert len(grid) == 4 * len(ADVISED_RANKS)
    for c in grid:
        assert c.rank == ADVISED_RANKS[(c.model, c.task, c.train_size)] and c.learning_rate == 1e-3
        assert replace(c, rank=16, eva_rho=2.0).run_id in capacity  # the cell's EVA at r = 16's budget
    assert sum(c.eva_rho is not None for c in grid) == len(grid) // 2
    assert "eva-advised-budget.jsonl" in STUDY_FILES and "eva-advised-budget.jsonl" not in EXPERIMENT_FILES
