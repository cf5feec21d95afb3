"""SIGKILL during a two-process FSDP2 run (torchrun, gloo, CPU): after a step on one rank, or on rank 0 while a
checkpoint is being committed. The previous checkpoint stays loadable, and resuming ends with weights bit for
bit equal to an uninterrupted two-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vistune
from vistune.train.tiny import run_to_yaml, save_tiny_checkpoint, tiny_run_config, write_tiny_data

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from vistune.config import load_run_config
    from vistune.train.loop import TrainHooks, train

    config, kind, at, victim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mine = int(os.environ.get("RANK", "0")) == victim
    kill = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    hooks = TrainHooks(
        after_step=(lambda step, model: mine and step == at and kill()) if kind == "step" else None,
        before_commit=(lambda step, tmp: mine and step == at and kill()) if kind == "commit" else None)
    train(load_run_config(config), progress=False, hooks=hooks)
""")


def _torchrun(script, config, kind="none", at=0, victim=0):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(config), kind, str(at), str(victim)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-kill")
    script = root / "run.py"
    script.write_text(SCRIPT)
    ckpt = save_tiny_checkpoint(root / "init")
    data = write_tiny_data(root / "data", n=24)
    common = dict(stage=2, strategy="fsdp", global_batch_size=8, micro_batch_size=2, max_steps=6, save_every=2)
    config = run_to_yaml(tiny_run_config(ckpt, data, root / "full", **common), root / "full.yaml")
    proc = _torchrun(script, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, script, ckpt, data, common, vistune.load(root / "full" / "final").state_dict()


@pytest.mark.parametrize("kind,at,victim", [("step", 3, 1), ("commit", 4, 0)])
def test_fsdp_sigkill_then_resume_is_bit_identical(reference, kind, at, victim):
    root, script, ckpt, data, common, want = reference
    out = root / f"killed-{kind}"
    config = run_to_yaml(tiny_run_config(ckpt, data, out, **common), root / f"{kind}.yaml")
    killed = _torchrun(script, config, kind, at, victim)
    assert killed.returncode != 0 and not (out / "final").exists()
    ckpts = out / "checkpoints"
    complete = sorted(p.name for p in ckpts.iterdir() if not p.name.startswith("."))
    assert complete == ["step-000002"]  # the checkpoint before the kill, and no half-written one in its place
    previous = vistune.load(ckpts / "step-000002")  # loadable as it is
    assert previous.state_dict().keys() == want.keys()
    resumed = _torchrun(script, config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = vistune.load(out / "final").state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]
