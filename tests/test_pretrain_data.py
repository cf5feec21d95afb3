"""Stage-1 caption data and the CC3M-style concept filter."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vistune.cli import main
from vistune.datagen.nounphrases import noun_phrases_many, simple_noun_phrases, singular
from vistune.datagen.pretrain import (
    BRIEF_INSTRUCTIONS,
    build_pretrain_records,
    choose_pairs,
    concept_filter,
    make_pretrain_data,
)

# Each caption's phrase set is given, so the survivors can be worked out by hand:
# counts: cat 3, tree 3, dog 6, rare 2, fish 1.
PHRASES = [{"cat"}, {"cat", "rare"}, {"cat", "tree"}, {"tree"}, {"tree"}, {"rare"}] + [{"dog"}] * 6 + [{"fish"}]
CAPTIONS = [f"caption {i}" for i in range(len(PHRASES))]


def fixed(texts):
    return [PHRASES[CAPTIONS.index(t)] for t in texts]


def test_concept_filter_hand_computed():
    keep, stats = concept_filter(CAPTIONS, min_count=3, max_per_concept=4, seed=0, extractor=fixed)
    # cat and tree survive with all their captions (0-4); dog is capped at 4 of its 6 (6-11);
    # rare (2) and fish (1) fall below 3, so captions 5 and 12 go.
    assert keep[:5] == [0, 1, 2, 3, 4]
    assert len(keep) == 9 and set(keep[5:]) <= set(range(6, 12))
    assert 5 not in keep and 12 not in keep
    assert stats["concepts_total"] == 5 and stats["concepts_kept"] == 3 and stats["concepts_capped"] == 1
    assert stats["captions_kept"] == 9 and stats["captions_in"] == 13


def test_concept_filter_thresholds_are_keywords():
    keep, stats = concept_filter(CAPTIONS, extractor=fixed)  # defaults 3 and 100: nothing capped
    assert keep == list(range(5)) + list(range(6, 12)) and stats["concepts_capped"] == 0
    keep, stats = concept_filter(CAPTIONS, min_count=2, max_per_concept=100, extractor=fixed)
    assert keep == list(range(12)) and stats["concepts_kept"] == 4  # "rare" now survives
    keep, _ = concept_filter(CAPTIONS, min_count=1, max_per_concept=1, extractor=fixed)
    assert len(keep) == len(set(keep)) and 12 in keep  # fish alone now counts
    with pytest.raises(ValueError):
        concept_filter(CAPTIONS, min_count=0, extractor=fixed)


def test_concept_filter_seeded():
    a, _ = concept_filter(CAPTIONS, 3, 2, seed=1, extractor=fixed)
    assert a == concept_filter(CAPTIONS, 3, 2, seed=1, extractor=fixed)[0]
    others = {tuple(concept_filter(CAPTIONS, 3, 2, seed=s, extractor=fixed)[0]) for s in range(10)}
    assert len(others) > 1


def test_builtin_noun_phrases():
    assert simple_noun_phrases("A red star above two blue circles.") == {"red star", "blue circle"}
    assert simple_noun_phrases("A man riding a horse on the beach") == {"man", "horse", "beach"}
    assert simple_noun_phrases("Three ponies and some boxes") == {"pony", "box"}
    assert singular("glasses") == "glasses" and singular("people") == "person" and singular("bus") == "bus"


def test_builtin_filter_end_to_end():
    caps = ["A red star.", "Two red stars on the left.", "The red star is big.", "A red star and a green heart.",
            "A blue circle.", "Blue circles here.", "A green heart."]
    extractor = lambda texts: noun_phrases_many(texts, use_spacy=False)  # noqa: E731
    keep, stats = concept_filter(caps, min_count=3, max_per_concept=100, extractor=extractor)
    # "red star" is in 4 captions, "blue circle" in 2, "green heart" in 2: only red star survives.
    assert keep == [0, 1, 2, 3]
    assert stats["concepts_kept"] == 1


def _coco(tmp_path, n_images=30):
    images = [{"id": i, "file_name": f"{i:03d}.png", "width": 10, "height": 10} for i in range(n_images)]
    anns = [{"id": 10 * i + k, "image_id": i, "caption": f"Caption {k} of image {i}."}
            for i in range(n_images) for k in range(3)]
    p = tmp_path / "captions.json"
    p.write_text(json.dumps({"images": images, "annotations": anns}))
    return p


def test_records_from_coco(tmp_path):
    out = tmp_path / "stage1.json"
    stats = make_pretrain_data(_coco(tmp_path), out, seed=0)
    recs = json.loads(out.read_text())
    assert stats["pairs"] == len(recs) == 30
    assert len({r["id"] for r in recs}) == 30
    for r in recs:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n") and human["value"][8:] in BRIEF_INSTRUCTIONS
        stem = r["image"].split(".")[0]
        assert gpt["value"].endswith(f"of image {int(stem)}.")
    assert len({r["conversations"][0]["value"] for r in recs}) >= 6
    assert len({r["conversations"][1]["value"].split()[1] for r in recs}) == 3  # the caption is chosen at random
    assert len(BRIEF_INSTRUCTIONS) >= 10
    # seeded
    make_pretrain_data(_coco(tmp_path), tmp_path / "again.json", seed=0)
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes()
    make_pretrain_data(_coco(tmp_path), tmp_path / "other.json", seed=1)
    assert (tmp_path / "other.json").read_bytes() != out.read_bytes()


def test_records_from_jsonl(tmp_path):
    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "caption": "one"}, {"image": "a.jpg", "caption": "two"},
        {"image": "b.jpg", "caption": "three"}, {"caption": "no image"}]) + "\n")
    pairs = choose_pairs([("a.jpg", ["one", "two"]), ("b.jpg", ["three"])], seed=0)
    recs = build_pretrain_records(pairs)
    assert [r["id"] for r in recs] == ["a", "b"]
    stats = make_pretrain_data(p, tmp_path / "o.json")
    assert stats["pairs"] == 2 and stats["skipped"] == {"record_malformed": 1}
    out = json.loads((tmp_path / "o.json").read_text())
    assert out[0]["conversations"][1]["value"] in ("one", "two")


def test_cli_concept_filter_reports(tmp_path, capsys):
    caps = tmp_path / "c.jsonl"
    lines = [{"image": f"{i}.png", "caption": c} for i, c in enumerate(
        ["A red star."] * 4 + ["A blue circle."] * 2 + ["A green heart."])]
    caps.write_text("\n".join(json.dumps(r) for r in lines))
    out = tmp_path / "o.json"
    assert main(["pretrain-data", "--captions", str(caps), "--out", str(out), "--filter", "concepts",
                 "--max-per-concept", "3"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 concepts" in printed and "3 of 7 pairs" in printed
    assert Counter(r["conversations"][1]["value"] for r in json.loads(out.read_text())) == {"A red star.": 3}
    assert main(["pretrain-data", "--captions", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
