"""The teacher client when the machine fails: a full disk (ENOSPC) stops the run with a clear error and leaves a
valid output that the same command completes; several SIGKILLs at random moments end with every item once."""

from __future__ import annotations

import errno
import random
import signal
import subprocess
import time

from test_openai_teacher import (  # noqa: F401  (server_factory is a fixture)
    _cli_shim,
    _env,
    assert_complete,
    gen_argv,
    make_contexts,
    read_records,
    run_gen,
    server_factory,
    write_jsonl,
)
from vistune.cli import main
from vistune.datagen import openai_teacher as ot


def disk_that_fills_up(room: int):
    """A `JsonlAppender._write_all` that lets `room` lines into the output file, then writes half a line and
    fails with ENOSPC (the rejects file is not limited)."""
    real = ot.JsonlAppender._write_all
    left = [room]

    def write_all(appender, data: bytes) -> None:
        if "rejects" not in appender.path.name:
            if left[0] <= 0:
                real(appender, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            left[0] -= 1
        real(appender, data)

    return write_all


def test_a_full_disk_stops_cleanly_and_the_run_resumes(tmp_path, server_factory, monkeypatch, capsys):  # noqa: F811
    contexts = make_contexts(12)
    inp = write_jsonl(tmp_path / "in.jsonl", contexts)
    out = tmp_path / "o.jsonl"
    _, url = server_factory()
    monkeypatch.setattr(ot.JsonlAppender, "_write_all", disk_that_fills_up(room=7))
    code = main(gen_argv(url, out, "--concurrency", "3", inp=inp))
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "re-run the same command" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error" in line]) == 1
    assert len(read_records(out)) == 7  # whole lines only: the half-written one was cut off
    monkeypatch.undo()
    assert run_gen(gen_argv(url, out, "--concurrency", "3", inp=inp)) == 0
    assert_complete(out, contexts)


def test_several_random_kills_then_every_item_exactly_once(tmp_path, server_factory):  # noqa: F811
    contexts = make_contexts(60)
    inp = write_jsonl(tmp_path / "in.jsonl", contexts)
    out = tmp_path / "o.jsonl"
    _, url = server_factory(delay=0.03)
    rng = random.Random(19)
    kills = 0
    for _ in range(4):
        before = out.read_bytes().count(b"\n") if out.exists() else 0
        proc = subprocess.Popen(_cli_shim() + gen_argv(url, out, "--concurrency", "4", inp=inp), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = before + rng.randint(5, 25)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= target:
                time.sleep(rng.uniform(0, 0.05))  # somewhere between two records, or inside a write
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    done = subprocess.run(_cli_shim() + gen_argv(url, out, "--concurrency", "4", inp=inp), env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_complete(out, contexts)
