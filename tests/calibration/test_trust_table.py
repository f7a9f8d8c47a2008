"""README.md's trust table is the one generated from models/."""

from pathlib import Path

from calibration.trust_table import trust_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

def test_readme_quotes_the_generated_trust_table():
    table = trust_table(ROOT / "models")
    assert table.count("\n") >= 2, "models/ holds no calibration description"
    assert table in README.read_text(encoding="utf-8"), (
        "README.md's trust table is stale: paste the output of `python -m calibration.trust_table`")
