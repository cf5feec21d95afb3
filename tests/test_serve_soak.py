"""A short soak of `vistune serve` (the full one: benchmarks/soak_serve.py): concurrent streaming clients for a
few seconds, some leaving mid-stream; completed answers equal the same request answered alone, the places of
cancelled requests are released and the server's memory stays within a bound after warm-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_soak(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak_serve.py"), "--clients", "12",
                           "--duration", "10", "--warmup", "4", "--leave", "0.3", "--max-tokens", "12",
                           "--rss-bound-mb", "48", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["ok"], report
    assert report["completed"] >= 12 and report["left_mid_stream"] >= 1
    assert report["errors"] == report["mismatches"] == 0
    assert report["slots_released"] and report["answers_after"]
    assert report["rss_growth_mb"] <= 48
