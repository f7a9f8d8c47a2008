"""File-system helpers shared by the stages: outputs appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a fresh staging directory that replaces ``target`` only if the block succeeds.

    On any error the staging directory is removed and ``target`` is left as it was, so a
    failed run never leaves half-written output behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomically(path: str | os.PathLike, chunks: Iterable[str]) -> bool:
    """Write the text ``chunks`` (UTF-8) to ``path`` through a temporary file renamed into place,
    so a reader never sees half a file. Returns False, having written nothing, when the folder
    cannot be written (a read-only cache: the caller goes on without it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(chunks)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        return False
    return True
