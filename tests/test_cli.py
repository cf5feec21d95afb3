"""The command line as a newcomer meets it: one-line errors with a way forward, shared flags, visible defaults,
data checks that say what they did not check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vistune.cli import build_parser, main
from vistune.cli.common import run_name
from vistune.model.checkpoint import save_checkpoint
from vistune.model.tiny import tiny_vlm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A run directory laid out as `vistune train` writes it, with a tiny CLIP model in `final/`."""
    run = tmp_path_factory.mktemp("runs") / "my-run"
    return save_checkpoint(tiny_vlm("clip"), run / "final")


def test_a_run_directory_instead_of_its_checkpoint_is_one_line_with_the_fix(checkpoint, capsys):
    code = main(["chat", "--model", str(checkpoint.parent), "--prompt", "Hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{checkpoint}" in err and "did you mean" in err


def test_debug_shows_the_traceback(checkpoint):
    from vistune.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "chat", "--model", str(checkpoint.parent), "--prompt", "Hi"])


def test_a_failed_start_leaves_no_run_directory(tmp_path, examples_dir, capsys):
    """The model cannot be built (after the run directory was made): nothing is left behind."""
    out = tmp_path / "new-run"
    code = main(["train", "--config", str(Path(__file__).parents[1] / "configs" / "default_stage1.yaml"),
                 f"output_dir={out}", f"data.path={examples_dir / 'llava_sample.json'}",
                 f"data.image_folder={examples_dir / 'images'}", f"model.llm={tmp_path / 'no-such-llm'}"])
    assert code == 2 and not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["chat"], ["infer"], ["eval", "shapes"], ["serve"]])
def test_answering_commands_share_device_flags_and_greedy_generation(command):
    parser = build_parser()
    required = {"chat": [], "infer": ["--questions", "q", "--images", "i", "--out", "o"],
                "eval": ["--bench", "b", "--images", "i", "--out", "o"], "serve": []}[command[0]]
    args = parser.parse_args([*command, "--model", "m", *required])
    assert (args.device, args.dtype) == ("auto", "auto")
    assert (args.temperature, args.top_p, args.seed) == (0.0, 1.0, None)  # greedy: answers repeat
    assert args.max_new_tokens > 0


def test_a_server_request_without_sampling_values_gets_the_servers_greedy_defaults():
    from vistune.serve.schemas import ServeLimits, parse_chat_request

    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    request = parse_chat_request(body, ServeLimits())
    assert (request.temperature, request.top_p, request.seed, request.max_tokens) == (0.0, 1.0, None, 512)
    request = parse_chat_request(body, ServeLimits(default_temperature=0.7, default_top_p=0.9, default_seed=3))
    assert (request.temperature, request.top_p, request.seed) == (0.7, 0.9, 3)
    assert parse_chat_request({**body, "temperature": 0}, ServeLimits(default_temperature=0.7)).temperature == 0


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0.0)" in out and "(default: 512)" in out


def test_the_model_name_is_the_runs_name(checkpoint):
    assert run_name(str(checkpoint)) == "my-run"
    assert run_name(str(checkpoint.parent / "checkpoints" / "step-000100")) == "my-run-step-000100"
    assert run_name("/somewhere/plain-dir") == "plain-dir"


def test_data_check_says_what_it_did_not_check(examples_dir, capsys):
    code = main(["data", "check", "--data", str(examples_dir / "llava_sample.json"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["bad"] == 0
    assert set(report["skipped_checks"]) == {"images", "rendering"}
    main(["data", "check", "--data", str(examples_dir / "llava_sample.json")])
    out = capsys.readouterr().out
    assert "not checked: images" in out and "not checked: rendering" in out


def test_data_check_with_a_checkpoint_uses_its_tokenizer_and_image_tokens(checkpoint, examples_dir, capsys):
    code = main(["data", "show", "--data", str(examples_dir / "llava_sample.json"), "--model", str(checkpoint),
                 "--json"])
    assert code == 0
    start, end = json.loads(capsys.readouterr().out)["image_span"]
    assert end - start == 16  # the tiny CLIP tower's grid, not the default tower's 49
    code = main(["data", "check", "--data", str(examples_dir / "llava_sample.json"), "--images",
                 str(examples_dir / "images"), "--model", str(checkpoint), "--max-length", "20", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["counts"] == {"too_long": report["records"]}
    assert report["skipped_checks"] == {}


def test_data_check_names_roles_as_the_data_does(examples_dir, capsys):
    main(["data", "check", "--data", str(examples_dir / "llava_with_errors.jsonl"), "--json"])
    bad = {b["id"]: b["detail"] for b in json.loads(capsys.readouterr().out)["bad_records"]}
    assert "'gpt'" in bad["bad-alternation"] and "assistant" not in bad["bad-alternation"]
    assert "'gpt'" in bad["bad-firstgpt"] and "'human'" in bad["bad-firstgpt"]
