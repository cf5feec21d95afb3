"""A run killed with SIGKILL (after a step, or while a checkpoint is being written) resumes to the same final
weights, bit for bit, as an uninterrupted run: stage 1, stage 2 and LoRA, on CPU in fp32."""

from __future__ import annotations

import os
import signal
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

    config, kind, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    hooks = TrainHooks(after_step=(lambda step, model: step == at and kill()) if kind == "step" else None,
                       before_commit=(lambda step, tmp: step == at and kill()) if kind == "commit" else None)
    train(load_run_config(config), progress=False, hooks=hooks)
""")


def _run(script, config, kind="none", at=0):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, str(script), str(config), kind, str(at)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("stage,lora,kind,at", [(1, False, "step", 3), (2, False, "commit", 4), (2, True, "step", 5)])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, stage, lora, kind, at):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ckpt = save_tiny_checkpoint(tmp_path / "init")
    data = write_tiny_data(tmp_path / "data", n=16)
    extra = dict(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1) if lora else {}
    common = dict(stage=stage, max_steps=6, save_every=2, **extra)
    full_cfg = run_to_yaml(tiny_run_config(ckpt, data, tmp_path / "full", **common), tmp_path / "full.yaml")
    kill_cfg = run_to_yaml(tiny_run_config(ckpt, data, tmp_path / "killed", **common), tmp_path / "killed.yaml")

    assert _run(script, full_cfg).returncode == 0
    killed = _run(script, kill_cfg, kind, at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = tmp_path / "killed" / "checkpoints"
    assert not (tmp_path / "killed" / "final").exists()
    if kind == "commit":  # killed with the new checkpoint complete but not yet renamed into place
        assert (ckpts / f".step-{at:06d}.tmp").is_dir() and not (ckpts / f"step-{at:06d}").exists()
    resumed = _run(script, kill_cfg)  # resumes automatically from the newest complete checkpoint
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not any(p.name.startswith(".") for p in ckpts.iterdir())
    a = vistune.load(tmp_path / "full" / "final").state_dict()
    b = vistune.load(tmp_path / "killed" / "final").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    steps = [line.split(",")[0] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and len(set(steps)) == 6  # no step logged twice after the resume
