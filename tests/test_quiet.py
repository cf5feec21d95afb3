"""Commands and `vistune.load` keep libraries' progress bars and chatter off the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

import vistune
from vistune.train.tiny import save_tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:Cannot enable progress bars")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("quiet") / "ck")


def _loud():
    hf_logging.enable_progress_bar()
    hf_logging.set_verbosity_warning()


def test_the_progress_bar_would_show_without_silencing(tiny_ckpt, capfd):
    from transformers import AutoModelForCausalLM

    _loud()
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(tiny_ckpt / "llm")
    assert "Loading weights" in capfd.readouterr().err  # the control: what the two tests below must not see


def test_vistune_load_shows_no_progress_bar(tiny_ckpt, capfd):
    _loud()
    capfd.readouterr()
    vistune.load(tiny_ckpt)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert not hf_logging.is_progress_bar_enabled()


def test_a_command_shows_no_progress_bar(tiny_ckpt, capfd):
    from vistune.cli import main

    _loud()
    capfd.readouterr()
    assert main(["chat", "--model", str(tiny_ckpt), "--prompt", "hi", "--max-new-tokens", "2",
                 "--temperature", "0"]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err


@pytest.mark.slow
def test_a_fresh_process_prints_only_the_answer(tiny_ckpt):
    """The command line in a new process, without the test suite's quieting environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = SRC
    done = subprocess.run([sys.executable, "-m", "vistune", "chat", "--model", str(tiny_ckpt), "--prompt", "hi",
                           "--max-new-tokens", "2", "--temperature", "0"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr, done.stderr
