"""README.md is a user manual, short; the project's
text speaks of dates and commits, not of the sessions that produced them."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 260
SESSION = re.compile(r"\bsessions? \d+", re.IGNORECASE)



def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}); move detail to calibration/"


def test_no_tracked_text_mentions_a_session_number():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        found += [f"{name}:{number}: {line.strip()[:120]}"
                  for number, line in enumerate(text.splitlines(), 1) if SESSION.search(line)]
    assert not found, "say a date or a commit instead of a session:\n" + "\n".join(found)
