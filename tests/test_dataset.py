"""LLaVA-format loading: structural checks, lazy images, right padding, image-safe truncation."""

import json

import pytest
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


# -------------------------------------------------------------------------------------------------
# several images per record


def two_image_record(images=("circles.png", "square.png"), turns=("<image>\nWhat is this?", "<image>\nAnd this?")):
    return {"id": "two", "image": list(images),
            "conversations": [{"from": "human", "value": turns[0]}, {"from": "gpt", "value": "Two circles."},
                              {"from": "human", "value": turns[1]}, {"from": "gpt", "value": "A green square."}]}


def test_one_path_and_a_list_of_one_path_give_identical_samples_and_batches(tokenizer, examples_dir, tmp_path):
    from vistune.data.feature_cache import FeatureCache

    as_string = [record(5, "Which colour?"), {**record(9), "id": "s"}]
    as_list = [{**r, "image": [r["image"]]} for r in as_string]
    for cache in (None, FeatureCache(tmp_path, "f" * 64)):
        if cache is not None:  # one of the two images cached, the other not
            key = cache.key((examples_dir / "images" / "square.png").read_bytes())
            cache.store(key, torch.arange(8.0).reshape(2, 4))
        a, b = (LlavaDataset(recs, examples_dir / "images", Renderer(tokenizer, "chat_template", N), PROC,
                             feature_cache=cache) for recs in (as_string, as_list))
        assert a.lengths == b.lengths and [a.has_image(i) for i in range(2)] == [b.has_image(i) for i in range(2)]
        for i in range(2):
            x, y = a[i], b[i]
            assert (x.id, x.image_spans, x.image_key) == (y.id, y.image_spans, y.image_key)
            for name in ("input_ids", "labels", "pixel_values", "features"):
                u, v = getattr(x, name), getattr(y, name)
                assert (u is None and v is None) or torch.equal(u, v), name
        for pack in (None, 512):
            ba, bb = collate([a[0], a[1]], tokenizer.pad_token_id, pack), collate([b[0], b[1]], tokenizer.pad_token_id,
                                                                                 pack)
            assert ba.keys() == bb.keys()
            for k in ba:
                if isinstance(ba[k], torch.Tensor):
                    assert torch.equal(ba[k], bb[k]), k
                elif k == "image_features":
                    assert [f is None for f in ba[k]] == [f is None for f in bb[k]]
                else:
                    assert ba[k] == bb[k], k


@pytest.mark.parametrize("image, turns, reason, detail", [
    (["circles.png", "square.png"], ("<image>\nQ", "And?"), "image_count_mismatch",
     "1 <image> placeholders but 2 images"),
    (["circles.png"], ("<image>\nQ", "<image>\nAnd?"), "image_count_mismatch", "2 <image> placeholders but 1 images"),
    ("circles.png", ("<image>\nQ", "<image>\nAnd?"), "multiple_images", "a list of 2 paths"),
    (["circles.png", 3], ("<image>\nQ", "<image>\nAnd?"), "invalid_record", "'image'[1] is 3"),
    (["circles.png", ""], ("<image>\nQ", "<image>\nAnd?"), "invalid_record", "'image'[1]"),
    ({"a": 1}, ("<image>\nQ", "And?"), "invalid_record", "'image' is a dict"),
    ([], ("<image>\nQ", "And?"), "placeholder_without_image", "1 <image>"),
    (["circles.png", "square.png"], ("Q", "And?"), "no_image_placeholder", "2 image(s)"),
    (["circles.png"], ("Q", "<image>\nAnd?"), "image_not_in_first_turn", "turn 2"),
])
def test_image_lists_that_do_not_match_the_placeholders_are_refused_by_name(image, turns, reason, detail):
    from vistune.data.dataset import BadRecord, record_messages

    rec = two_image_record(turns=turns)
    rec["image"] = image
    with pytest.raises(BadRecord) as e:
        record_messages(rec)
    assert e.value.reason == reason and detail in e.value.detail


@pytest.mark.parametrize("image, turns", [
    ([], ("Q", "And?")),  # an empty list: no image
    (["circles.png", "square.png"], ("Q", "<image>\n<image>\nCompare them.")),  # both in a later turn
    (["circles.png", "square.png"], ("<image>\nQ", "<image>\nAnd?")),
])
def test_valid_image_lists(image, turns):
    from vistune.data.dataset import record_images, record_messages

    rec = two_image_record(image, turns)
    record_messages(rec)
    assert record_images(rec) == image


def test_each_image_of_a_record_lands_at_its_own_placeholder(tokenizer, examples_dir):
    from vistune.data.image import load_image

    folder = examples_dir / "images"
    recs = [two_image_record(), two_image_record(("square.png", "circles.png"))]
    ds = LlavaDataset(recs * 10, folder, Renderer(tokenizer, "chat_template", N), PROC)  # random placement
    circles, square = (PROC(load_image(folder / n)) for n in ("circles.png", "square.png"))
    assert ds.num_images(0) == 2 and ds.lengths[0] == sum(len(m.content) for m in ds.messages[0]) // 4 + 2 * N
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, Sample) and s.has_image and s.pixel_values is None and len(s.images) == 2
        first, second = (circles, square) if i % 2 == 0 else (square, circles)
        assert torch.equal(s.images[0].pixels, first) and torch.equal(s.images[1].pixels, second)
        (a0, a1), (b0, b1) = s.image_spans
        assert a1 - a0 == b1 - b0 == N and (s.input_ids == IMAGE_TOKEN_ID).sum() == 2 * N
        # the layout is the author's: image 1 leads the first question, image 2 the follow-up after the first answer
        text = tokenizer.decode(s.input_ids[a1:b0].tolist())
        assert text.startswith("\nWhat is this?") and "Two circles." in text and text.rstrip().endswith("user")


def test_collate_lists_every_image_in_position_order(tokenizer, examples_dir):
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    recs = [record(3), two_image_record(), text_only, two_image_record(("square.png", "circles.png")), record(12)]
    recs = [{**r, "id": str(k)} for k, r in enumerate(recs)]
    ds = LlavaDataset(recs, examples_dir / "images", Renderer(tokenizer, "chat_template", N), PROC)
    items = [ds[i] for i in range(len(ds))]
    for k, s in enumerate(items):  # every image made distinct (10 x sample + index), so any reordering shows
        for j, im in enumerate(s.images):
            im.pixels = torch.full_like(im.pixels, 10 * k + j)
    for pack in (None, 64, 4096):
        batch = collate(items, tokenizer.pad_token_id, pack)
        got = [int(p[0, 0, 0]) for p in batch["pixel_values"]]
        # the sample each image position belongs to, reading the rows left to right
        samples = iter(int(i) for i in batch["ids"])
        by_position = []
        for r in range(batch["input_ids"].shape[0]):
            starts = (batch["position_ids"][r] == 0).nonzero().squeeze(1).tolist() if pack else [0]
            real = int(batch["attention_mask"][r].sum()) if not pack else None
            row = [next(samples) for st in starts if real is not None or batch["attention_mask"][r, st]]
            for p in (batch["input_ids"][r] == IMAGE_TOKEN_ID).nonzero().squeeze(1).tolist()[::N]:
                by_position.append(row[sum(st <= p for st in starts) - 1])
        assert [v // 10 for v in got] == by_position  # image k of the batch is the k-th image span
        assert [v % 10 for v in got if v // 10 in (1, 3)] == [0, 1, 0, 1]  # a sample's images in its order
        assert len(got) == 6


def test_the_plain_template_refuses_a_sample_with_two_images_by_name(tokenizer, examples_dir):
    rec = {"id": "p", "image": ["circles.png", "square.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>"}, {"from": "gpt", "value": "Two pictures."}]}
    ds = LlavaDataset([rec], examples_dir / "images", Renderer(tokenizer, "plain", N), PROC)
    s = ds[0]
    assert isinstance(s, Skipped) and s.reason == "invalid_record" and s.id == "p"
    assert "plain template needs exactly one image" in s.detail and "found 2" in s.detail


def test_a_sample_whose_second_image_would_be_cut_is_dropped_naming_it(tokenizer, examples_dir):
    full = make(tokenizer, [two_image_record()], examples_dir / "images")[0]
    second_end = full.image_spans[1][1]
    ds = make(tokenizer, [two_image_record()], examples_dir / "images", max_length=second_end - 1)
    s = ds[0]
    assert isinstance(s, Skipped) and s.reason == "too_long" and "image 1 ends past" in s.detail
    missing = make(tokenizer, [two_image_record(("circles.png", "nowhere.png"))], examples_dir / "images")[0]
    assert isinstance(missing, Skipped) and missing.reason == "missing_image"
    assert missing.detail.startswith("image 1: ") and "nowhere.png" in missing.detail
