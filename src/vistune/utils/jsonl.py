"""Append-only JSONL files that survive a kill: one `write()` per line, an fsync per line, a torn
last line cut off before resuming, and an advisory lock so two runs never write one file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from vistune.errors import UserError
from vistune.utils.io import json_object_or_none

try:  # POSIX advisory lock; elsewhere runs are simply not protected against each other.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class OutputLockedError(UserError, ValueError):
    """Another process holds the lock on an output file."""


def read_done_ids(path: str | Path, key: str = "id") -> tuple[set[str], int]:
    """Values of `key` in the records already written, and the number of unreadable lines (left in place)."""
    done: set[str] = set()
    bad = 0
    if not Path(path).exists():
        return done, bad
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json_object_or_none(line)
            if obj is None or not isinstance(obj.get(key), str):
                bad += 1
            else:
                done.add(obj[key])
    return done, bad


class JsonlAppender:
    """Append whole lines with one `write()` each; `durable` adds an fsync per line."""

    locked_error: type[Exception] = OutputLockedError
    """Raised when `lock` is asked for and another process holds it."""

    def __init__(self, path: str | Path, durable: bool = True, lock: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if lock and fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise self.locked_error(f"{self.path} is being written by another run") from None

    def write(self, obj: dict) -> None:
        """Append one line. If the write fails (a full disk, say), the partial line is cut off again and an
        OSError says that the file is intact and the run can be resumed."""
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        start = os.fstat(self.fd).st_size
        try:
            self._write_all(data)
            if self.durable:
                os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # the next run's repair_tail removes the partial line
            raise OSError(e.errno, f"cannot write to {self.path} ({e.strerror or e}); the records written before "
                          "are intact: make room and re-run the same command to resume") from e

    def _write_all(self, data: bytes) -> None:
        written = os.write(self.fd, data)
        while written < len(data):  # only on a short write (disk full, signals); rare for files
            written += os.write(self.fd, data[written:])

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordError(UserError, ValueError):
    """A bad input record; the message names the file and the line."""


def iter_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; `RecordError` names a bad line."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{n}: expected a JSON object")
            yield n, obj
