"""A wheel carries the shipped calibrations, and an install from it finds them."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # a copy, so the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md", "advisor", "models"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True)
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not available to build a wheel")
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("lora_rank_advisor-*.whl")
    return path


def test_the_wheel_holds_every_shipped_calibration_byte_for_byte(wheel):
    shipped = sorted(p for p in (ROOT / "models").iterdir() if p.suffix in (".json", ".joblib"))
    assert shipped, "models/ ships no calibration"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in shipped:
            inside = f"advisor/calibrations/{path.name}"
            assert inside in names, f"{inside} is missing from {wheel.name}"
            assert archive.read(inside) == path.read_bytes()
        assert not any(name.startswith(("calibration/", "tests/", "bench/")) for name in names)


def test_an_install_from_the_wheel_finds_the_calibration_the_checkout_uses(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import json, advisor.calibrated as c; p = c.shipped_calibration('causal-lm'); "
            "print(json.dumps([str(c.MODELS_DIR), str(p), c.load_calibration(p).metadata['sha256']]))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    models_dir, path, sha = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(models_dir).is_relative_to(site), models_dir
    expected = json.loads((ROOT / "models" / Path(path).name).read_text())["sha256"]
    assert sha == expected == hashlib.sha256(Path(path).with_suffix(".joblib").read_bytes()).hexdigest()
