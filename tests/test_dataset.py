"""LLaVA-format loading: structural checks, lazy images, right padding, image-safe truncation."""

import json

import torch

from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID, Renderer
from vistune.data.dataset import LlavaDataset, Sample, Skipped, collate
from vistune.data.image import ImageProcessor, ImageProcessorConfig

N = 4
PROC = ImageProcessor(ImageProcessorConfig(32, 32, (0.5,) * 3, (0.5,) * 3))


def make(tokenizer, records, folder, max_length=2048):
    return LlavaDataset(records, folder, Renderer(tokenizer, "chat_template", N), PROC, max_length=max_length)


def test_loads_json_list_and_jsonl_identically(tokenizer, examples_dir, tmp_path):
    records = json.loads((examples_dir / "llava_sample.json").read_text())
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    a = make(tokenizer, examples_dir / "llava_sample.json", examples_dir / "images")
    b = make(tokenizer, jsonl, examples_dir / "images")
    assert len(a) == len(b) == len(records)
    for i in range(len(a)):
        assert torch.equal(a[i].input_ids, b[i].input_ids)


def test_text_only_records_have_no_image(tokenizer, examples_dir):
    ds = make(tokenizer, examples_dir / "llava_sample.json", examples_dir / "images")
    text_only = [i for i in range(len(ds)) if not ds.has_image(i)]
    assert text_only
    s = ds[text_only[0]]
    assert s.pixel_values is None and IMAGE_TOKEN_ID not in s.input_ids.tolist()
    assert ds[0].pixel_values.shape == (3, 32, 32)


def test_invalid_records_are_dropped_and_counted(tokenizer, examples_dir):
    ds = make(tokenizer, examples_dir / "llava_with_errors.jsonl", examples_dir / "images")
    assert ds.skipped == {"no_image_placeholder": 1, "multiple_images": 1, "empty_turn": 1, "first_not_human": 1,
                          "roles_not_alternating": 1}
    # image problems surface lazily, as Skipped items with a reason
    reasons = {ds[i].reason for i in range(len(ds)) if isinstance(ds[i], Skipped)}
    assert reasons == {"missing_image", "unreadable_image"}


def test_collate_right_pads_and_counts_skipped(tokenizer, examples_dir):
    ds = make(tokenizer, examples_dir / "llava_with_errors.jsonl", examples_dir / "images")
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items, tokenizer.pad_token_id)
    samples = [s for s in items if isinstance(s, Sample)]
    B, T = batch["input_ids"].shape
    assert B == len(samples) and T == max(len(s.input_ids) for s in samples)
    for b, s in enumerate(samples):
        n = len(s.input_ids)
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][b, n:] == tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == sum(s.pixel_values is not None for s in samples)
    assert batch["skipped"]["missing_image"] == 1 and batch["skipped"]["unreadable_image"] == 1


def record(answer_words, question="What is this?"):
    return {"id": "r", "image": "square.png",
            "conversations": [{"from": "human", "value": "<image>\n" + question},
                              {"from": "gpt", "value": " ".join(["word"] * answer_words)}]}


def test_over_long_sample_is_cut_after_the_image(tokenizer, examples_dir):
    ds = make(tokenizer, [record(200)], examples_dir / "images", max_length=80)
    s = ds[0]
    assert isinstance(s, Sample) and len(s.input_ids) == 80
    assert (s.input_ids == IMAGE_TOKEN_ID).sum() == N


def test_sample_whose_image_would_be_cut_is_dropped_not_cut(tokenizer, examples_dir):
    full = make(tokenizer, [record(5)], examples_dir / "images")[0]
    image_end = int((full.input_ids == IMAGE_TOKEN_ID).nonzero().max()) + 1
    ds = make(tokenizer, [record(5)], examples_dir / "images", max_length=image_end - 2)
    s = ds[0]
    assert isinstance(s, Skipped) and s.reason == "too_long"


def test_random_placement_is_seeded(tokenizer, examples_dir):
    recs = [record(3)] * 30
    a = make(tokenizer, recs, examples_dir / "images")
    b = make(tokenizer, recs, examples_dir / "images")
    first = [int((a[i].input_ids == IMAGE_TOKEN_ID).nonzero().min()) for i in range(30)]
    assert first == [int((b[i].input_ids == IMAGE_TOKEN_ID).nonzero().min()) for i in range(30)]
    assert len(set(first)) == 2
