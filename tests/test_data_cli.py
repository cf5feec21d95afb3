"""`vistune data show` and `vistune data check` on the shipped sample data."""

import json

import pytest

from vistune.cli import main
from vistune.conversation import IMAGE_TOKEN_ID


def test_show_json_marks_supervised_tokens_and_image_span(examples_dir, capsys, tokenizer):
    code = main(["data", "show", "--data", str(examples_dir / "llava_sample.json"), "--index", "0",
                 "--llm", "smollm2-135m-instruct", "--template", "chat_template", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    tokens = out["tokens"]
    start, end = out["image_span"]
    assert end - start == 49  # EfficientNet-Lite0 at 224 px
    assert all(t["id"] == IMAGE_TOKEN_ID and not t["supervised"] for t in tokens[start:end])
    supervised = "".join(t["token"] for t in tokens if t["supervised"])
    record = json.loads((examples_dir / "llava_sample.json").read_text())[0]
    answers = [c["value"] for c in record["conversations"] if c["from"] == "gpt"]
    assert supervised == "".join(a + "<|im_end|>" for a in answers)
    assert set(tokens[0]) == {"token", "id", "supervised"}


def test_show_text_marks_answers(examples_dir, capsys):
    code = main(["data", "show", "--data", str(examples_dir / "llava_sample.json"), "--index", "1",
                 "--template", "vicuna_v1", "--num-image-tokens", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "⟪ The square is green.<|im_end|>⟫" in out and "<image x3>" in out


def test_show_index_out_of_range(examples_dir, capsys):
    assert main(["data", "show", "--data", str(examples_dir / "llava_sample.json"), "--index", "99"]) == 2


def test_check_passes_on_good_data(examples_dir, capsys):
    code = main(["data", "check", "--data", str(examples_dir / "llava_sample.json"),
                 "--images", str(examples_dir / "images"), "--llm", "smollm2-135m-instruct"])
    assert code == 0
    assert "0 bad" in capsys.readouterr().out


def test_check_reports_every_bad_record_kind(examples_dir, capsys):
    code = main(["data", "check", "--data", str(examples_dir / "llava_with_errors.jsonl"),
                 "--images", str(examples_dir / "images"), "--llm", "smollm2-135m-instruct", "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    by_id = {b["id"]: b["reason"] for b in report["bad_records"]}
    assert by_id == {
        "bad-missing": "missing_image",
        "bad-unreadable": "unreadable_image",
        "bad-noplaceholder": "no_image_placeholder",
        "bad-twoimages": "multiple_images",
        "bad-empty": "empty_turn",
        "bad-firstgpt": "first_not_human",
        "bad-alternation": "roles_not_alternating",
        "bad-toolong": "too_long",
    }
    assert report["counts"]["too_long"] == 1 and report["records"] == 10


@pytest.mark.parametrize("record, reason", [
    ({"id": "x", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
     "placeholder_without_image"),
    ({"id": "x", "image": "square.png", "conversations": [{"from": "human", "value": "<image>\nQ"}]},
     "ends_with_human"),
    ({"id": "x", "image": "square.png"}, "invalid_record"),
])
def test_check_more_bad_kinds(examples_dir, tmp_path, capsys, record, reason):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record]))
    assert main(["data", "check", "--data", str(path), "--images", str(examples_dir / "images"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["bad_records"][0]["reason"] == reason


def test_too_long_needs_only_max_length(examples_dir, capsys):
    code = main(["data", "check", "--data", str(examples_dir / "llava_sample.json"), "--llm",
                 "smollm2-135m-instruct", "--max-length", "60", "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report["counts"]) == {"too_long"}
