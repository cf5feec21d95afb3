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


def test_check_and_show_records_with_several_images(examples_dir, tmp_path, capsys):
    def rec(rid, image, second="<image>\nAnd this one?"):
        return {"id": rid, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Two circles."},
            {"from": "human", "value": second}, {"from": "gpt", "value": "A green square."}]}

    records = [rec("good", ["circles.png", "square.png"]),
               rec("one-missing", ["circles.png", "nowhere.png"]),
               rec("both-bad", ["nowhere.png", "broken.png"]),
               rec("count", ["circles.png", "square.png", "circles.png"]),
               rec("single-path", "circles.png"),
               rec("not-a-path", ["circles.png", None])]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    code = main(["data", "check", "--data", str(path), "--images", str(examples_dir / "images"), "--llm",
                 "smollm2-135m-instruct", "--json"])
    assert code == 1
    bad = {b["id"]: b for b in json.loads(capsys.readouterr().out)["bad_records"]}
    assert set(bad) == {"one-missing", "both-bad", "count", "single-path", "not-a-path"}
    assert bad["one-missing"]["reason"] == "missing_image" and bad["one-missing"]["detail"].startswith("image 1: ")
    assert "nowhere.png" in bad["one-missing"]["detail"]
    assert bad["both-bad"]["detail"].startswith("image 0: ") and "; image 1: " in bad["both-bad"]["detail"]
    assert bad["count"]["reason"] == "image_count_mismatch" and "2 <image> placeholders but 3 images" in bad[
        "count"]["detail"]
    assert bad["single-path"]["reason"] == "multiple_images" and "list of 2 paths" in bad["single-path"]["detail"]
    assert bad["not-a-path"]["reason"] == "invalid_record" and "'image'[1] is None" in bad["not-a-path"]["detail"]

    assert main(["data", "show", "--data", str(path), "--index", "0", "--num-image-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "images: 0: circles.png at " in out and ", 1: square.png at " in out and out.count("<image x3>") == 2
    assert main(["data", "show", "--data", str(path), "--index", "0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["images"] == ["circles.png", "square.png"] and len(shown["image_spans"]) == 2
    assert main(["data", "check", "--data", str(path), "--images", str(examples_dir / "images"), "--llm",
                 "smollm2-135m-instruct", "--template", "plain", "--json"]) == 1
    plain = {b["id"]: b for b in json.loads(capsys.readouterr().out)["bad_records"]}
    assert plain["good"]["reason"] == "invalid_record" and "the plain template" in plain["good"]["detail"]
