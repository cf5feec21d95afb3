"""Two CPU processes under torchrun (gloo) give the same losses and weights as one process with the same global
batch, with DDP and with FSDP2; an FSDP2 run resumes from its sharded state bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import vistune
from vistune.train.loop import train
from vistune.train.tiny import run_to_yaml, save_tiny_checkpoint, tiny_run_config, write_tiny_data

pytestmark = pytest.mark.slow


def _torchrun(config, *extra, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vistune", "train", "--config", str(config), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    ckpt = save_tiny_checkpoint(root / "init")
    data = write_tiny_data(root / "data", n=24)
    common = dict(stage=2, global_batch_size=8, micro_batch_size=2, max_steps=4, save_every=2)
    final = train(tiny_run_config(ckpt, data, root / "one", **common), progress=False)
    return root, ckpt, data, common, final


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(single, strategy):
    root, ckpt, data, common, one_final = single
    out = root / strategy
    config = run_to_yaml(tiny_run_config(ckpt, data, out, strategy=strategy, **common), root / f"{strategy}.yaml")
    proc = _torchrun(config)
    assert proc.stdout.count(str(out / "final")) == 1  # rank 0 alone reports
    assert _losses(out) == pytest.approx(_losses(root / "one"), rel=1e-5)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["samples"] == 8 for r in records)
    a, b = vistune.load(one_final).state_dict(), vistune.load(out / "final").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # two processes write one set of RNG states each into every checkpoint
    assert sorted(p.name for p in (out / "checkpoints" / "step-000004").glob("rng-rank*.json")) == [
        "rng-rank0.json", "rng-rank1.json"]

    if strategy == "fsdp":  # resume the sharded run from step 2: identical to the uninterrupted run
        reference = root / "fsdp-final-ref"
        shutil.copytree(out / "final", reference)
        shutil.rmtree(out / "checkpoints" / "step-000004")
        shutil.rmtree(out / "final")
        _torchrun(config, "--resume")
        a, b = vistune.load(reference).state_dict(), vistune.load(out / "final").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
