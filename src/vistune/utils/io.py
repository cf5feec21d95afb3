"""Files that are never half-written: write to a temporary sibling, then rename; and append-only
JSONL files whose torn last line (a kill mid-write) is cut off before they are appended to again."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json_or_jsonl(path: str | os.PathLike) -> list[Any]:
    """A JSON list, or JSONL with one object per line (blank lines ignored)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list")
        return data
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON line: {e}") from e
    return records


# ----------------------------------------------------------------------------- directories


def fsync_tree(directory: str | os.PathLike) -> None:
    """fsync every file under `directory`."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_dir(tmp: str | os.PathLike, final: str | os.PathLike, replace: bool = True) -> Path:
    """fsync the finished temporary directory `tmp` and rename it to `final` (a sibling).

    An existing `final` is replaced (moved aside, the new one renamed in, the old one removed), so a
    kill leaves the old or the new directory complete (at worst the old one under a hidden `.NAME.old-*`
    name). With `replace=False` an existing `final` wins and `tmp` is removed (first writer wins)."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if final.exists():
        if not replace:
            shutil.rmtree(tmp)
            return final
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)
    return final


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a new temporary directory beside `path`; on success `commit_dir` it to `path`; on an
    error remove it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; give it the permissions mkdir would
    try:
        yield tmp
        commit_dir(tmp, path, replace=replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- append-only JSONL


def json_object_or_none(line: bytes | str) -> dict | None:
    """The JSON object on one line, or None when the line is not one."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _last_line_start(f: IO[bytes], end: int) -> int:
    """Offset just after the last b"\\n" before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return pos - step + idx + 1
        pos -= step
    return 0


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line off an append-only JSONL file: one without its trailing newline, or one that is
    not a JSON object. Returns the number of bytes removed (0 when the file is whole or absent)."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        end = size if f.read(1) == b"\n" else _last_line_start(f, size)
        if end == size:  # the last line is complete; check that it parses
            start = _last_line_start(f, size - 1)
            f.seek(start)
            if json_object_or_none(f.read(size - start)) is None:
                end = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end
