"""The embedded default dataset: instruction -> code pairs from the Python standard library.

Every documented top-level function and method of a top-level class in the standard library
of the running CPython becomes one row::

    {"instruction": "Write the Python function `Class.name` of the standard library module
                     `pkg.mod`.\\n\\n<its docstring>",
     "output": "<its source, dedented, with the docstring's lines cut out>",
     "module": "pkg.mod", "name": "Class.name"}

Nothing is downloaded: the rows are parsed with :mod:`ast` from the installed sources, in
sorted order, so the same Python version always gives the same rows. They are built once
(a few seconds) and cached as JSONL under :func:`cache_dir`.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import sysconfig
import textwrap
import tokenize
import warnings
from pathlib import Path

from advisor.files import write_atomically

EMBEDDED_DATASET_NAME = "stdlib-code"
ROWS_VERSION = 1  # part of the cache file's name: bump it whenever the rules below change

MIN_DOCSTRING_CHARS = 20
MAX_SOURCE_LINES = 60
SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "__pycache__"}
)


def cache_dir() -> Path:
    """Where the advisor caches what it builds: ``$LORA_ADVISOR_CACHE`` or ``~/.cache/lora-rank-advisor``."""
    configured = os.environ.get("LORA_ADVISOR_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lora-rank-advisor"


def stdlib_code_rows() -> list[dict]:
    """The embedded dataset as a list of row dicts (built on first use, then read from the cache)."""
    path = cache_dir() / f"stdlib_code-{platform.python_version()}-v{ROWS_VERSION}.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        if rows:
            return rows
    except (OSError, ValueError):
        pass  # not built yet, or unreadable: rebuild
    rows = build_stdlib_code_rows()
    # a read-only home still gets the rows, just without a cache
    write_atomically(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return rows


def build_stdlib_code_rows() -> list[dict]:
    """Parse every eligible ``.py`` file of this interpreter's standard library, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and d.isidentifier())
        parts = Path(directory).relative_to(root).parts
        for filename in sorted(filenames):
            stem = filename[:-3]
            if not filename.endswith(".py") or not stem.isidentifier():
                continue
            module = ".".join(parts if stem == "__init__" else (*parts, stem))
            rows.extend(_module_rows(Path(directory) / filename, module))
    return rows


def _module_rows(path: Path, module: str) -> list[dict]:
    try:
        with tokenize.open(path) as f:  # honours the file's coding cookie
            source = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning on old escape sequences
            tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    functions = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            functions += [
                (f"{node.name}.{item.name}", item)
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
    rows = []
    for name, node in functions:
        row = _function_row(node, lines, module, name)
        if row is not None:
            rows.append(row)
    return rows


def _function_row(node, lines: list[str], module: str, name: str) -> dict | None:
    """One row, or None when the function is undocumented, too long, or its docstring cannot be cut cleanly."""
    docstring = ast.get_docstring(node)  # cleaned like inspect.cleandoc
    if not docstring or len(docstring) < MIN_DOCSTRING_CHARS or len(node.body) < 2:
        return None
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    if node.end_lineno - first + 1 > MAX_SOURCE_LINES:
        return None
    doc = node.body[0]
    # the docstring must own its lines: nothing before it on its first line, nothing after it on its last
    # (ast column offsets count UTF-8 bytes)
    if lines[doc.lineno - 1].encode("utf-8")[: doc.col_offset].strip():
        return None
    rest = lines[doc.end_lineno - 1].encode("utf-8")[doc.end_col_offset :].decode("utf-8").strip()
    if rest and not rest.startswith("#"):
        return None
    kept = lines[first - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    output = textwrap.dedent("\n".join(kept) + "\n")
    try:
        parsed = ast.parse(output).body[0]
    except SyntaxError:  # e.g. a multi-line string at column 0 defeats dedent
        return None
    if ast.get_docstring(parsed) is not None:  # a second string statement became the docstring
        return None
    instruction = f"Write the Python function `{name}` of the standard library module `{module}`.\n\n{docstring}"
    return {"instruction": instruction, "output": output, "module": module, "name": name}
