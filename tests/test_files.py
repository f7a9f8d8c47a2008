"""Outputs appear whole or not at all."""

import pytest

from advisor.files import atomic_directory, write_atomically


def test_an_atomic_write_replaces_the_file_whole_or_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "cache" / "rows.jsonl"
    assert write_atomically(path, ["a\n", "b\n"]) and path.read_text() == "a\nb\n"

    def broken():
        yield "c\n"
        raise RuntimeError("the rows could not be built")

    with pytest.raises(RuntimeError):
        write_atomically(path, broken())
    assert path.read_text() == "a\nb\n" and [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert write_atomically(blocked / "rows.jsonl", ["x"]) is False  # its folder cannot exist: no cache, no error


def test_an_atomic_directory_appears_only_when_its_block_succeeds(tmp_path):
    target = tmp_path / "advice"
    with atomic_directory(target) as staging:
        (staging / "advice.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["advice.json"]
    with pytest.raises(ValueError), atomic_directory(target) as staging:
        (staging / "half.json").write_text("{")
        raise ValueError("bad input")
    assert [p.name for p in target.iterdir()] == ["advice.json"] and [p.name for p in tmp_path.iterdir()] == ["advice"]
