"""Stage 2 of the data path: turn the user's data into padded token batches for the probe.

The probe must see the loss where training will put it, so labels follow the conventions of
the usual trainers (HF causal-LM labels: aligned with ``input_ids``, not shifted, -100 where
there is no loss):

=====================  =======================================  ===========================
row format             keys                                     causal-lm loss on
=====================  =======================================  ===========================
``pretokenized``       input_ids [, attention_mask, labels]     ``labels`` as given, else
                                                                every attended token
``chat``               messages: [{role, content}, ...]         assistant turns only
``prompt-completion``  prompt, completion                       completion + eos
``alpaca``             instruction, output [, input]            output + eos
``text-label``         text, label                              every token (seq-cls: label)
``text``               text                                     every token
=====================  =======================================  ===========================

Sources: a ``datasets.Dataset`` / ``DatasetDict``, a local .jsonl/.json/.csv/.parquet/.txt
file, a list of strings or dicts, a DataLoader of token batches, or None / "stdlib-code"
for the embedded dataset (:mod:`advisor.embedded_data`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from advisor.embedded_data import EMBEDDED_DATASET_NAME, stdlib_code_rows

TASKS = ("causal-lm", "seq-cls")
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
IGNORE_INDEX = -100

# detection order: the first format whose keys the first row has wins
FORMAT_KEYS = {
    "pretokenized": ("input_ids",),
    "chat": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text-label": ("text", "label"),
    "text": ("text",),
}
TEXT_FIELDS = {"prompt-completion": ("prompt", "completion"), "alpaca": ("instruction", "input", "output")}
ACCEPTED_SHAPES = "input_ids | messages | prompt+completion | instruction+output[+input] | text[+label]"

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class ProbeBatch:
    """One padded batch. causal-lm ``labels``: [B, T] like ``input_ids``; seq-cls: [B] class ids."""

    input_ids: torch.LongTensor  # [B, T]
    attention_mask: torch.LongTensor  # [B, T], 1 = real token
    labels: torch.LongTensor  # [B, T] with -100 where no loss, or [B]
    num_rows: int


# --------------------------------------------------------------------------- rows
def load_rows(data, *, split: str | None = None) -> list[dict]:
    """Rows (dicts) from any supported source; ``split`` picks a ``DatasetDict`` split (default "train")."""
    if data is None or (isinstance(data, str) and data == EMBEDDED_DATASET_NAME):
        return stdlib_code_rows()
    if isinstance(data, (str, os.PathLike)):
        return _read_file(Path(data))
    if isinstance(data, (list, tuple)):
        return _rows_from_list(data, "the data list")
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if not data:
            raise ValueError("the DatasetDict has no splits")
        if split is None:
            split = "train" if "train" in data else next(iter(data))
        if split not in data:
            raise ValueError(f"split {split!r} is not in the DatasetDict (splits: {', '.join(data)})")
        data = data[split]
    if isinstance(data, datasets.Dataset):
        if len(data) == 0:
            raise ValueError("the dataset is empty")
        return data.to_list()
    raise ValueError(
        f"unsupported data source of type {type(data).__name__}: pass a datasets.Dataset, a file path, "
        "a list of strings or dicts, or a DataLoader of token batches"
    )


def _rows_from_list(items, where: str) -> list[dict]:
    if len(items) == 0:
        raise ValueError(f"{where} is empty")
    kind = str if isinstance(items[0], str) else Mapping
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise ValueError(f"{where}: item {i} is a {type(item).__name__}; items must all be strings or all dicts")
    return [{"text": item} for item in items] if kind is str else [dict(item) for item in items]


def _read_file(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(
            f"data file not found: {path} (hub datasets are not downloaded: pass a local file or a datasets.Dataset)"
        )
    if path.is_dir():
        raise ValueError(f"data path is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise ValueError(
            f"unsupported data file extension {suffix or '(none)'!r} of {path}: use {', '.join(FILE_TYPES)}"
        )
    if suffix == ".parquet":
        import pyarrow.parquet

        try:
            rows = pyarrow.parquet.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a bad file
            raise ValueError(f"cannot read parquet file {path}: {_first_line(error)}") from error
        if not rows:
            raise ValueError(f"data file has no rows: {path}")
        return rows

    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"data file is empty: {path}")
    try:
        if b"\x00" in raw:
            raise UnicodeError
        text = raw.decode("utf-8-sig")
    except UnicodeError:
        raise ValueError(f"data file is not UTF-8 text (binary?): {path}") from None

    if suffix == ".txt":
        return [{"text": line} for line in text.splitlines() if line.strip()]
    if suffix == ".jsonl":
        return _rows_from_list(_json_lines(text, path), str(path))
    if suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            try:  # many ".json" files are JSON lines
                content = _json_lines(text, path)
            except ValueError:
                raise ValueError(f"invalid JSON in {path}: {error}") from None
        if isinstance(content, dict):
            key = next((k for k in ("data", "rows", "train") if isinstance(content.get(k), list)), None)
            if key is None:
                raise ValueError(
                    f"{path}: a JSON object must hold the rows as a list under 'data', 'rows' or 'train' "
                    f"(keys found: {', '.join(map(str, content)) or 'none'})"
                )
            content = content[key]
        if not isinstance(content, list):
            raise ValueError(f"{path}: expected a JSON list of rows, got {type(content).__name__}")
        return _rows_from_list(content, str(path))
    # .csv: every cell is text, except a "label" column of integers (class ids)
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise ValueError(f"cannot read CSV file {path}: {error}") from None
    if not rows:
        raise ValueError(f"data file has no rows: {path}")
    if "label" in rows[0] and all(re.fullmatch(r"-?\d+", row["label"] or "") for row in rows):
        for row in rows:
            row["label"] = int(row["label"])
    return rows


def _json_lines(text: str, path: Path) -> list:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"invalid JSON on line {number} of {path}: {error.msg}") from None
    return items


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --------------------------------------------------------------------------- formats
def detect_format(rows: list[dict]) -> str:
    """The row format (a key of :data:`FORMAT_KEYS`), decided from row 0 and checked on every row."""
    if not rows:
        raise ValueError("no rows")
    first = rows[0]
    if not isinstance(first, Mapping):
        raise ValueError(f"row 0 is a {type(first).__name__}, not a dict")
    fmt = next((f for f, keys in FORMAT_KEYS.items() if all(k in first for k in keys)), None)
    if fmt is None:
        raise ValueError(
            f"row 0 has no usable text field (columns: {', '.join(map(str, first)) or 'none'}); "
            f"accepted shapes: {ACCEPTED_SHAPES}"
        )
    any_content = False
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {i} is a {type(row).__name__}, not a dict")
        missing = [k for k in FORMAT_KEYS[fmt] if k not in row]
        if missing:
            raise ValueError(
                f"row {i} lacks {', '.join(missing)} (columns: {', '.join(map(str, row))}); "
                f"row 0 made the format {fmt!r}"
            )
        any_content = _check_row(row, fmt, i) or any_content
    if not any_content:
        raise ValueError(f"every row is empty: the {fmt!r} fields ({', '.join(FORMAT_KEYS[fmt])}) hold no text")
    return fmt


def _check_row(row: dict, fmt: str, i: int) -> bool:
    """Raise on a field of the wrong type; return whether the row has any content."""
    if fmt == "pretokenized":
        ids = row["input_ids"]
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
            raise ValueError(
                f"row {i}: 'input_ids' must be a flat list of ints (for a list of [batch, tokens] batches, "
                "pass a DataLoader or iter(batches))"
            )
        return len(ids) > 0
    if fmt == "chat":
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"row {i}: 'messages' must be a non-empty list of {{role, content}} dicts")
        for j, message in enumerate(messages):
            if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise ValueError(f"row {i}: message {j} must be a dict with string 'role' and 'content'")
        return any(m["content"] for m in messages)
    fields = TEXT_FIELDS.get(fmt, ("text",))
    for field in fields:
        if row.get(field) is not None and not isinstance(row[field], str):
            raise ValueError(f"row {i}: column {field!r} must be a string, got {type(row[field]).__name__}")
    if fmt == "text-label" and not isinstance(row["label"], (int, str)):
        raise ValueError(f"row {i}: column 'label' must be an int or a string, got {type(row['label']).__name__}")
    return any(row.get(field) for field in fields)


def label_names_of(rows: list[dict]) -> list[str] | None:
    """Class names for seq-cls: sorted unique string labels, "0".."max" for int labels, None without labels."""
    labels = [_class_label(row) for row in rows]
    if not labels or any(label is None for label in labels):
        return None
    if all(isinstance(label, int) for label in labels):
        return [str(k) for k in range(max(labels) + 1)]
    if all(isinstance(label, str) for label in labels):
        return sorted(set(labels))
    raise ValueError("labels mix integers and strings: use one kind")


def _class_label(row: dict):
    label = row["label"] if "label" in row else row.get("labels")
    return label if isinstance(label, (int, str)) else None


def _class_ids(rows: list[dict], label_names: list[str] | None) -> list[int]:
    """One class id per row: ints as they are, strings by ``label_names`` (default: sorted unique labels)."""
    labels = [_class_label(row) for row in rows]
    for i, label in enumerate(labels):
        if label is None:
            raise ValueError(f"row {i} has no class label: task 'seq-cls' needs an int or string 'label' in every row")
    if all(isinstance(label, int) for label in labels):
        return labels
    names = list(label_names) if label_names is not None else label_names_of(rows)
    index = {name: k for k, name in enumerate(names)}
    for i, label in enumerate(labels):
        if label not in index:
            raise ValueError(f"row {i}: label {label!r} is not one of the label names {names}")
    return [index[label] for label in labels]


# --------------------------------------------------------------------------- batches
def make_batches(
    data,
    tokenizer,
    *,
    task: str = "causal-lm",
    num_samples: int = 64,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    split: str | None = None,
    label_names: list[str] | None = None,
) -> list[ProbeBatch]:
    """Sample ``num_samples`` rows (reproducibly from ``seed``) and cut them into padded batches.

    Sequences are cut to ``max_length`` tokens and right-padded; rows left with no loss token
    are dropped. A DataLoader (any iterable of dict batches with ``input_ids`` [B, T]) is read
    in order, batch by batch, until ``num_samples`` rows.
    """
    first, _ = sample_batches(data, tokenizer, task=task, num_samples=num_samples, batch_size=batch_size,
                              max_length=max_length, seed=seed, split=split, label_names=label_names)
    return first


def sample_batches(
    data,
    tokenizer,
    *,
    task: str = "causal-lm",
    num_samples: int = 64,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    split: str | None = None,
    label_names: list[str] | None = None,
    extra_samples: int = 0,
) -> tuple[list[ProbeBatch], list[ProbeBatch]]:
    """(the batches of :func:`make_batches`, the batches of up to ``extra_samples`` more rows drawn
    from the rest after them): a growing probe reads the first, then the others, and its first
    batches are exactly those a probe of ``num_samples`` rows reads. A DataLoader has no extra rows."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("max_length", max_length)):
        _check_positive_int(name, value)
    if is_batch_iterable(data):
        return _loader_batches(data, task, num_samples, max_length), []

    rows = load_rows(data, split=split)
    fmt = detect_format(rows)
    if fmt != "pretokenized" and tokenizer is None:
        raise ValueError(f"a tokenizer is needed to tokenize {fmt!r} rows")
    class_ids = None
    if task == "seq-cls":
        if fmt not in ("text-label", "pretokenized"):
            raise ValueError(
                f"task 'seq-cls' needs a class label per row (text + label), but the rows are {fmt!r} "
                f"(columns: {', '.join(map(str, rows[0]))})"
            )
        class_ids = _class_ids(rows, label_names)

    generator = random.Random(seed)
    picked = generator.sample(range(len(rows)), min(num_samples, len(rows)))
    drawn = set(picked)
    rest = [i for i in range(len(rows)) if i not in drawn] if extra_samples else []
    more = generator.sample(rest, min(extra_samples, len(rest))) if rest else []

    def encoded(indices: list[int]) -> list[tuple]:
        examples = []
        for i in indices:
            ids, mask, labels = _encode(rows[i], i, fmt, tokenizer, task, max_length)
            if task == "seq-cls":
                labels = class_ids[i]
            if ids and (task == "seq-cls" or any(t != IGNORE_INDEX for t in labels[1:])):
                examples.append((ids, mask, labels))
        return examples

    first = encoded(picked)
    if not first:
        raise ValueError(
            f"no sampled row has a token to compute the loss on within max_length={max_length} "
            "(the response starts too late or is empty)"
        )
    pad_id = _pad_id(tokenizer)
    first_batches, extra_batches = ([_collate(examples[k : k + batch_size], pad_id)
                                     for k in range(0, len(examples), batch_size)] for examples in (first, encoded(more)))
    return first_batches, extra_batches


@dataclass(frozen=True)
class DatasetTokens:
    """What a whole training set holds, counted with the tokenizer (no forward pass)."""

    rows: int  # rows with at least one loss token
    tokens: int  # every token of those rows
    loss_tokens: int  # the tokens the loss is computed on (completions; every token of text rows; 1 per seq-cls row)
    counted_rows: int | None = None  # rows tokenized when the counts were scaled up from a sample; None: every row


def count_tokens(data, tokenizer, *, task: str = "causal-lm", max_length: int | None = None,
                 split: str | None = None, max_rows: int | None = None, seed: int = 0) -> DatasetTokens:
    """Count the loss tokens of every row of ``data`` (any row source :func:`load_rows` reads),
    tokenized exactly as :func:`make_batches` does; ``max_length`` cuts each row as training
    would (None: no cut). A seq-cls row counts one loss token (its label). A causal-LM row's loss
    tokens are the next-token targets that carry a label (the first token is never a target).
    Tokenizing costs about a millisecond a row; nothing runs through a model. With more than
    ``max_rows`` rows, a uniform sample of ``max_rows`` (from ``seed``) is counted and scaled
    to the whole (``counted_rows`` says so)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    for name, value in (("max_length", max_length), ("max_rows", max_rows)):
        if value is not None:
            _check_positive_int(name, value, " or None")
    rows = load_rows(data, split=split)
    fmt = detect_format(rows)
    if fmt != "pretokenized" and tokenizer is None:
        raise ValueError(f"a tokenizer is needed to tokenize {fmt!r} rows")
    picked = range(len(rows))
    if max_rows is not None and len(rows) > max_rows:
        picked = sorted(random.Random(seed).sample(picked, max_rows))
    cut = max_length or 1 << 62
    kept = tokens = loss_tokens = 0
    for i in picked:
        ids, _, labels = _encode(rows[i], i, fmt, tokenizer, task, cut)
        if not ids:
            continue
        row_loss = 1 if task == "seq-cls" else sum(t != IGNORE_INDEX for t in labels[1:])
        if row_loss:
            kept, tokens, loss_tokens = kept + 1, tokens + len(ids), loss_tokens + row_loss
    if len(picked) == len(rows):
        return DatasetTokens(rows=kept, tokens=tokens, loss_tokens=loss_tokens)
    scale = len(rows) / len(picked)
    return DatasetTokens(rows=round(kept * scale), tokens=round(tokens * scale), loss_tokens=round(loss_tokens * scale),
                         counted_rows=len(picked))


def _check_positive_int(name: str, value, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer{alternative}, got {value!r}")


def _encode(row: dict, i: int, fmt: str, tokenizer, task: str, max_length: int):
    """(input_ids, attention_mask, labels) lists of one row, cut to ``max_length``."""
    if fmt == "pretokenized":
        ids = _as_list(row["input_ids"])
        mask = _as_list(row["attention_mask"]) if row.get("attention_mask") is not None else [1] * len(ids)
        labels = row.get("labels")
        if task == "seq-cls" or labels is None or isinstance(labels, int):  # (a class id is read by _class_ids)
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        labels = _as_list(labels)
        if not len(ids) == len(mask) == len(labels):
            raise ValueError(f"row {i}: input_ids, attention_mask and labels differ in length")
    elif task == "seq-cls":
        ids = tokenizer(row["text"], truncation=True, max_length=max_length)["input_ids"]
        mask, labels = [1] * len(ids), None
    elif fmt in ("text", "text-label"):
        ids = tokenizer(row["text"])["input_ids"]
        mask, labels = [1] * len(ids), list(ids)
    elif fmt == "chat":
        ids, labels = _chat_tokens(row["messages"], tokenizer, i)
        mask = [1] * len(ids)
    else:  # prompt-completion, alpaca
        prompt, completion = _prompt_and_completion(row, fmt)
        text = prompt + completion
        ids, labels = _tokenize_with_loss_spans(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True)
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids, labels = ids + [eos], labels + [eos]
        mask = [1] * len(ids)
    return ids[:max_length], mask[:max_length], labels[:max_length] if labels is not None else None


def _prompt_and_completion(row: dict, fmt: str) -> tuple[str, str]:
    if fmt == "prompt-completion":
        return row["prompt"] or "", row["completion"] or ""
    instruction, extra = row["instruction"] or "", row.get("input") or ""
    if extra:
        prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=extra)
    else:
        prompt = ALPACA_PROMPT.format(instruction=instruction)
    return prompt, row["output"] or ""


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _chat_tokens(messages: list[dict], tokenizer, i: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of conversation ``messages`` (row ``i``), the loss on the assistant
    turns: transformers' own assistant-token mask where the chat template marks them with
    ``{% generation %}`` (every token overlapping a marked span; the loss is where the template
    marks it, e.g. on the last turn only if it marks only that one); otherwise the turns are
    located by rendering each prefix (:func:`_render_chat`: the tokens starting inside a turn)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and _GENERATION_TAG.search(template) and getattr(tokenizer, "is_fast", False):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        ids = _as_list(encoded["input_ids"])
        return ids, [token if keep else IGNORE_INDEX for token, keep in zip(ids, encoded["assistant_masks"])]
    text, spans = _render_chat(messages, tokenizer, i)
    return _tokenize_with_loss_spans(tokenizer, text, spans, add_special_tokens=False)


def _render_chat(messages: list[dict], tokenizer, i: int) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the rows are chat messages but tokenizer {type(tokenizer).__name__} has no chat template: "
            "set tokenizer.chat_template or pass prompt/completion rows"
        )

    def render(part, generation_prompt=False):
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)

    text = render(messages)
    spans = []
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:j], True), render(messages[: j + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"row {i}: the chat template does not render the conversation up to message {j} as a "
                "prefix of the whole, so the assistant turn cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans


def _tokenize_with_loss_spans(tokenizer, text: str, spans, *, add_special_tokens: bool):
    """Token ids of ``text`` and labels that keep the tokens starting inside a span (-100 elsewhere)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: character offsets are needed "
            "to place the loss on the response tokens"
        )
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = [
        token if end > start and any(a <= start < b for a, b in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoding["offset_mapping"])
    ]
    return ids, labels


def _as_list(values) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            return token
    return 0  # padding is masked out, so any id works


def _collate(examples, pad_id: int) -> ProbeBatch:
    length = max(len(ids) for ids, _, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    per_token = isinstance(examples[0][2], list)
    if per_token:
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    else:
        labels = torch.empty(len(examples), dtype=torch.long)
    for b, (ids, mask, row_labels) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = torch.tensor(mask)
        if per_token:
            labels[b, : len(ids)] = torch.tensor(row_labels)
        else:
            labels[b] = row_labels
    return ProbeBatch(input_ids, attention_mask, labels, len(examples))


# --------------------------------------------------------------------------- data loaders
def is_batch_iterable(data) -> bool:
    """True for a DataLoader-like source (an iterable of dict batches), read as given."""
    if data is None or isinstance(data, (str, bytes, os.PathLike, list, tuple, Mapping)):
        return False
    if type(data).__module__.split(".")[0] == "datasets":  # Dataset / DatasetDict iterate over rows
        return False
    return isinstance(data, Iterable)


def _loader_batches(loader, task: str, num_samples: int, max_length: int) -> list[ProbeBatch]:
    """Batches of a DataLoader as given (cut to ``max_length``), until ``num_samples`` rows."""
    batches, taken = [], 0
    for k, batch in enumerate(loader):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError(
                f"batch {k} of the data loader is not a dict with 'input_ids' (got {type(batch).__name__})"
            )
        input_ids = torch.as_tensor(batch["input_ids"]).long()
        if input_ids.dim() != 2:
            raise ValueError(
                f"batch {k} of the data loader: input_ids must be [batch, tokens], got shape {list(input_ids.shape)}"
            )
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask).long()
        labels = batch.get("labels")
        if labels is None:
            if task == "seq-cls":
                raise ValueError(f"batch {k} of the data loader has no 'labels': task 'seq-cls' needs class labels")
            labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels = torch.as_tensor(labels).long()
        expected = input_ids.shape if task == "causal-lm" else input_ids.shape[:1]
        if labels.shape != expected or mask.shape != input_ids.shape:
            raise ValueError(
                f"batch {k} of the data loader: input_ids {list(input_ids.shape)}, attention_mask "
                f"{list(mask.shape)} and labels {list(labels.shape)} do not fit task {task!r}"
            )
        rows = min(len(input_ids), num_samples - taken)
        cut = (slice(rows), slice(max_length))
        labels = labels[cut] if task == "causal-lm" else labels[:rows]
        batches.append(ProbeBatch(input_ids[cut], mask[cut], labels, rows))
        taken += rows
        if taken >= num_samples:
            break
    if not batches:
        raise ValueError("the data loader yielded no batches")
    if task == "causal-lm" and all((b.labels[:, 1:] == IGNORE_INDEX).all() for b in batches):
        raise ValueError(f"no token of the data loader's batches has a loss label within max_length={max_length}")
    return batches
