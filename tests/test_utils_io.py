"""The shared file helpers: atomic directory commits and torn JSONL tails."""

from __future__ import annotations

import pytest

from vistune.utils.io import atomic_dir, commit_dir, repair_jsonl_tail


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"  # the old one stays whole
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old directory left


def test_commit_dir_first_writer_wins_without_replace(tmp_path):
    final = tmp_path / "cache"
    final.mkdir()
    (final / "x").write_text("first")
    tmp = tmp_path / ".cache.tmp"
    tmp.mkdir()
    (tmp / "x").write_text("second")
    assert commit_dir(tmp, final, replace=False) == final
    assert (final / "x").read_text() == "first" and not tmp.exists()


def test_repair_jsonl_tail(tmp_path) -> None:
    good = b'{"id": "a"}\n{"id": "b"}\n'
    p = tmp_path / "o.jsonl"
    assert repair_jsonl_tail(p) == 0  # absent
    for torn in (b'{"id": "c", "conv', b'{"id": "c", "conv\n', b"[1, 2\n"):
        p.write_bytes(good + torn)
        assert repair_jsonl_tail(p) == len(torn)
        assert p.read_bytes() == good
    p.write_bytes(good)
    assert repair_jsonl_tail(p) == 0 and p.read_bytes() == good
    p.write_bytes(b'{"id": "only", "x"')
    assert repair_jsonl_tail(p) == 18 and p.read_bytes() == b""
    big = b"".join(b'{"id": "%d", "pad": "%s"}\n' % (i, b"x" * 900) for i in range(200))
    p.write_bytes(big + b"x" * 70000)  # a torn tail longer than one read block
    repair_jsonl_tail(p)
    assert p.read_bytes() == big
