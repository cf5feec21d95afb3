"""Symbolic context loading and the symbolic teacher's records, checked against the boxes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from itertools import groupby
from pathlib import Path

import pytest

from vistune.cli import main
from vistune.data.annotations import (
    ImageContext,
    Instance,
    format_context,
    load_coco,
    load_context_jsonl,
    make_record,
)
from vistune.data.synth import SHORT_ANSWER_INSTRUCTION, render_world
from vistune.datagen.symbolic import generate_symbolic

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart", "cross", "diamond"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "black", "white"]
PLURALS = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}


# ----------------------------------------------------------------------------- context


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_load_coco_normalises_and_counts_bad_annotations(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
              {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50}]
    caps = _write(tmp_path / "c.json", {"images": images, "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog  on grass."},
        {"id": 2, "image_id": 1, "caption": "  "},
        {"id": 3, "image_id": 99, "caption": "orphan"},
        {"id": 4, "image_id": 2, "caption": "A cat."}]})
    inst = _write(tmp_path / "i.json", {"images": images, "categories": [{"id": 1, "name": "dog"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 50]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 10, -5, 50]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": ["x", 10, 5, 5]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [180, 10, 50, 50]},
        {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 6, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [199.6, 0, 1.0, 10]}]})  # 0.6 px overrun: clipped
    ctxs, skips = load_coco(caps, inst)
    assert [c.image for c in ctxs] == ["a.jpg", "b.jpg"]
    a = ctxs[0]
    assert a.captions == ["A dog on grass."] and (a.width, a.height) == (200, 100)
    assert len(a.instances) == 2
    assert a.instances[0].category == "dog"
    assert a.instances[0].bbox == pytest.approx((0.1, 0.1, 0.6, 0.6))
    assert a.instances[1].bbox[2] == pytest.approx(1.0)
    assert skips == Counter({"caption_malformed": 1, "caption_missing_image": 1, "bbox_nonpositive_size": 1,
                             "bbox_malformed": 2, "bbox_outside_image": 1, "bbox_missing_image": 1,
                             "unknown_category": 1})


def test_load_context_jsonl_skips_bad_boxes(tmp_path):
    p = tmp_path / "ctx.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"image": "x.png", "captions": ["A red star."], "instances": [
            {"category": "red star", "bbox": [0.1, 0.1, 0.4, 0.5]},
            {"category": "blue circle", "bbox": [0.5, 0.5, 0.4, 0.9]},
            {"category": "blue circle", "bbox": [0.5, 0.5, 1.2, 0.9]}]},
        {"captions": ["no image"]},
    ]) + "\n")
    ctxs, skips = load_context_jsonl(p)
    assert len(ctxs) == 1 and [i.category for i in ctxs[0].instances] == ["red star"]
    assert skips == Counter({"bbox_malformed": 2, "record_malformed": 1})


def test_format_context_and_record():
    ctx = ImageContext("p.jpg", ["Two people.", "A car."], [Instance("person", (0.6812, 0.242, 0.774, 0.6944))])
    assert format_context(ctx) == "Two people.\nA car.\nperson: [0.681, 0.242, 0.774, 0.694]"
    rec = make_record("p-conversation-0", "p.jpg", [{"from": "human", "value": "<image>\nHi"},
                                                    {"from": "gpt", "value": "Hello"}], "conversation", "symbolic")
    assert rec == {"id": "p-conversation-0", "image": "p.jpg",
                   "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
                   "metadata": {"type": "conversation", "teacher": "symbolic"}}
    assert "image" not in make_record("t", None, [], "conversation", "symbolic")
    with pytest.raises(ValueError):
        make_record("x", None, [{"from": "bot", "value": "x"}], "conversation", "symbolic")


# ----------------------------------------------------------------------------- teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    render_world(out, 80, seed=5, min_objects=1, max_objects=4, progress=False)
    data = out / "instr.json"
    code = main(["generate", "--teacher", "symbolic", "--captions", str(out / "captions.json"),
                 "--instances", str(out / "instances.json"), "--out", str(data), "--seed", "1"])
    assert code == 0
    return out, json.loads(data.read_text())


def _objects(world_dir: Path) -> dict[str, list[dict]]:
    inst = json.loads((world_dir / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    files = {im["id"]: im for im in inst["images"]}
    out: dict[str, list[dict]] = {im["file_name"]: [] for im in inst["images"]}
    for a in inst["annotations"]:
        im = files[a["image_id"]]
        x, y, w, h = a["bbox"]
        colour, shape = cats[a["category_id"]].split()
        out[im["file_name"]].append({"colour": colour, "shape": shape,
                                     "cx": (x + w / 2) / im["width"], "cy": (y + h / 2) / im["height"]})
    return out


def test_records_are_well_formed(world):
    _, records = world
    assert Counter(r["metadata"]["type"] for r in records) == {"conversation": 80, "detail": 80, "complex": 80}
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        conv = r["conversations"]
        assert r["metadata"]["teacher"] == "symbolic"
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) % 2 == 0
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
        assert all(t["value"].strip() for t in conv)
        if r["metadata"]["type"] == "conversation":
            assert 2 <= len(conv) // 2 <= 5
        else:
            assert len(conv) == 2
    details = [r["conversations"][1]["value"] for r in records if r["metadata"]["type"] == "detail"]
    assert all(len(d.split()) >= 15 for d in details)
    assert len({r["conversations"][0]["value"] for r in records if r["metadata"]["type"] == "detail"}) >= 4


def _check_short(question: str, answer: str, objs: list[dict]) -> str:
    """Recompute a one-word answer from the boxes; returns the family it checked."""
    words = re.findall(r"[a-z]+", question.lower())
    col = [w for w in words if w in COLOURS]
    shp = [w for w in words if w in SHAPES]
    pl = [PLURALS[w] for w in words if w in PLURALS]
    if answer.isdigit():
        n = sum((not col or o["colour"] == col[0]) and (not pl or o["shape"] == pl[0]) for o in objs)
        assert answer == str(n), (question, objs)
        return "count"
    if answer in COLOURS:
        (o,) = [o for o in objs if o["shape"] == shp[0]]
        assert answer == o["colour"]
        return "colour"
    if answer in SHAPES:
        (o,) = [o for o in objs if o["colour"] == col[0]]
        assert answer == o["shape"]
        return "shape"
    if answer in ("yes", "no"):
        there = any(o["shape"] == shp[0] and (not col or o["colour"] == col[0]) for o in objs)
        assert answer == ("yes" if there else "no"), question
        return "existence"
    refs = re.findall(r"the (?:(%s) )?(%s)\b" % ("|".join(COLOURS), "|".join(SHAPES)), question)
    found = []
    for c, s in refs:
        hits = [o for o in objs if o["shape"] == s and (not c or o["colour"] == c)]
        assert len(hits) == 1, (question, refs)
        found.append(hits[0])
    if len(found) == 1:
        o = found[0]
        if answer in ("left", "right"):
            assert abs(o["cx"] - 0.5) >= 0.1 and answer == ("left" if o["cx"] < 0.5 else "right")
        else:
            assert abs(o["cy"] - 0.5) >= 0.1 and answer == ("top" if o["cy"] < 0.5 else "bottom")
        return "absolute_position"
    a, b = (found[1], found[0]) if question.startswith("Relative to") else (found[0], found[1])
    if answer in ("left", "right"):
        assert abs(a["cx"] - b["cx"]) >= 0.15 and answer == ("left" if a["cx"] < b["cx"] else "right")
    else:
        assert abs(a["cy"] - b["cy"]) >= 0.15 and answer == ("above" if a["cy"] < b["cy"] else "below"), question
    return "relative_position"


def test_short_answers_match_the_annotations(world):
    world_dir, records = world
    objs = _objects(world_dir)
    families, n_turns, n_short, yes_no = Counter(), 0, 0, Counter()
    bench_questions = {json.loads(l)["question"] for l in (world_dir / "bench.jsonl").read_text().splitlines()}
    for r in records:
        if r["metadata"]["type"] != "conversation":
            continue
        conv = r["conversations"]
        for h, g in zip(conv[::2], conv[1::2]):
            n_turns += 1
            q = h["value"].removeprefix("<image>\n")
            if not q.endswith("\n" + SHORT_ANSWER_INSTRUCTION):
                assert len(g["value"].split()) >= 3  # full-sentence answer
                continue
            n_short += 1
            ans = g["value"]
            assert re.fullmatch(r"[a-z]+|[0-9]+", ans), ans
            fam = _check_short(q[: -len(SHORT_ANSWER_INSTRUCTION) - 1], ans, objs[r["image"]])
            families[fam] += 1
            if fam == "existence":
                yes_no[ans] += 1
    assert 0.35 <= n_short / n_turns <= 0.65
    assert set(families) == {"count", "colour", "shape", "existence", "absolute_position", "relative_position"}
    assert yes_no["yes"] and 0.3 <= yes_no["yes"] / sum(yes_no.values()) <= 0.7
    # phrasing pools overlap with the bench's but are not the same
    short_qs = {t["value"].removeprefix("<image>\n") for r in records for t in r["conversations"][::2]}
    assert short_qs - bench_questions


def test_short_records_ask_one_balanced_question_per_family(world):
    world_dir, _ = world
    objs = _objects(world_dir)
    contexts, _ = load_coco(world_dir / "captions.json", world_dir / "instances.json")
    records = generate_symbolic(contexts, types=["short"], seed=1)
    answers: dict[str, Counter] = {}
    for image, group in groupby(records, key=lambda r: r["image"]):
        families = []
        for r in group:
            (h, g) = r["conversations"]
            assert r["metadata"]["type"] == "short" and h["value"].startswith("<image>\n")
            q = h["value"].removeprefix("<image>\n").removesuffix("\n" + SHORT_ANSWER_INSTRUCTION)
            families.append(_check_short(q, g["value"], objs[image]))
            answers.setdefault(families[-1], Counter())[g["value"]] += 1
        assert len(families) == len(set(families))  # at most one question per family and image
    assert set(answers) == {"count", "colour", "shape", "existence", "absolute_position", "relative_position"}
    assert len(records) > 4 * len(contexts)
    yes = answers["existence"]["yes"] / sum(answers["existence"].values())
    assert 0.4 <= yes <= 0.6
    assert answers["count"]["0"] < 0.5 * sum(answers["count"].values())  # not "absent" by default


def test_full_sentence_counts_and_colours_match(world):
    world_dir, records = world
    objs = _objects(world_dir)
    checked = 0
    for r in records:
        if r["metadata"]["type"] != "conversation":
            continue
        conv = r["conversations"]
        for h, g in zip(conv[::2], conv[1::2]):
            m = re.fullmatch(r"The (\w+) is (\w+)\.", g["value"])
            if m and m.group(1) in SHAPES and m.group(2) in COLOURS:
                (o,) = [o for o in objs[r["image"]] if o["shape"] == m.group(1)]
                assert o["colour"] == m.group(2)
                checked += 1
            m = re.fullmatch(r"There are no (\w+) in the image\.", g["value"])
            if m and m.group(1) in PLURALS:
                assert not [o for o in objs[r["image"]] if o["shape"] == PLURALS[m.group(1)]]
                checked += 1
    assert checked >= 5


def test_detail_descriptions_say_leftmost_only_among_several_objects(world):
    """A lone object on the right is not described as "on the far left"; the leftmost of several is the one
    with the smallest centre x."""
    world_dir, records = world
    objs = _objects(world_dir)
    lone = several = 0
    for r in records:
        if r["metadata"]["type"] != "detail":
            continue
        text = r["conversations"][1]["value"]
        leftish = re.search(r"(Starting from the left|On the far left|The leftmost one is)", text)
        if len(objs[r["image"]]) == 1:
            assert not leftish, text
            lone += 1
        else:
            assert leftish, text
            first = min(objs[r["image"]], key=lambda o: (o["cx"], o["cy"]))
            assert re.search(rf"{first['colour']} {first['shape']}", text[leftish.end():].split(".")[0]), text
            several += 1
    assert lone and several


def test_complex_records_answer_what_the_boxes_say(world):
    """Each complex record is the reasoning space's question for its scene and seed, answered steps first, and
    its answer is what an independent evaluation of the rendered world's boxes gives (`test_reasoning.check`)."""
    import random

    from test_reasoning import check

    from vistune.datagen.reasoning import make_reasoning
    from vistune.datagen.scene import Scene

    world_dir, records = world
    contexts, _ = load_coco(world_dir / "captions.json", world_dir / "instances.json")
    complex_records = {r["image"]: r for r in records if r["metadata"]["type"] == "complex"}
    ops = Counter()
    for ctx in contexts:
        r = make_reasoning(Scene(ctx, SHAPES, COLOURS), random.Random(f"1:complex:{Path(ctx.image).stem}"))
        if r is None:
            assert ctx.image not in complex_records
            continue
        q, a = (t["value"] for t in complex_records[ctx.image]["conversations"])
        assert (q, a) == ("<image>\n" + r.question, f"{r.steps} {r.conclusion}")
        check(r, ctx)
        ops[r.op] += 1
    assert sum(ops.values()) >= 75 and len(ops) >= 10, ops


def test_seeded_and_stable(world):
    world_dir, _ = world
    ctxs, _ = load_coco(world_dir / "captions.json", world_dir / "instances.json")
    a = generate_symbolic(ctxs[:20], seed=3)
    assert a == generate_symbolic(ctxs[:20], seed=3)
    assert a != generate_symbolic(ctxs[:20], seed=4)
    # a record does not depend on which other images are present
    sub = generate_symbolic(ctxs[5:7], seed=3)
    assert sub[0] == next(r for r in a if r["id"] == sub[0]["id"])


def test_plain_coco_labels_without_colours():
    ctxs = [ImageContext("img1.jpg", ["A man and a dog."],
                         [Instance("person", (0.05, 0.1, 0.3, 0.9)), Instance("dog", (0.6, 0.5, 0.95, 0.95))]),
            ImageContext("img2.jpg", ["Two dogs."],
                         [Instance("dog", (0.0, 0.0, 0.3, 0.3)), Instance("dog", (0.6, 0.6, 0.9, 0.9))])]
    recs = generate_symbolic(ctxs, seed=0, short_fraction=1.0, min_turns=5, max_turns=5)
    conv = [r for r in recs if r["metadata"]["type"] == "conversation"]
    assert len(conv) == 2
    for r in conv:
        for h, g in zip(r["conversations"][::2], r["conversations"][1::2]):
            if "How many dogs" in h["value"] and h["value"].endswith(SHORT_ANSWER_INSTRUCTION):
                assert g["value"] == ("1" if r["image"] == "img1.jpg" else "2")
            assert "color" not in h["value"].lower()


def test_types_limit_and_skip_counts(tmp_path, capsys, world):
    world_dir, _ = world
    out = tmp_path / "d.json"
    assert main(["generate", "--teacher", "symbolic", "--captions", str(world_dir / "captions.json"),
                 "--instances", str(world_dir / "instances.json"), "--out", str(out), "--types", "detail",
                 "--limit", "7"]) == 0
    recs = json.loads(out.read_text())
    assert len(recs) == 7 and {r["metadata"]["type"] for r in recs} == {"detail"}
    printed = capsys.readouterr().out
    assert "detail=7" in printed and "skipped" in printed
    assert main(["generate", "--teacher", "symbolic", "--captions", str(world_dir / "captions.json"),
                 "--out", str(out), "--types", "bogus"]) == 2


def test_input_jsonl(tmp_path):
    p = tmp_path / "ctx.jsonl"
    p.write_text(json.dumps({"image": "q.png", "captions": ["A red star on a plain gray background."],
                             "instances": [{"category": "red star", "bbox": [0.05, 0.05, 0.35, 0.35]},
                                           {"category": "blue circle", "bbox": [0.6, 0.6, 0.9, 0.9]}]}) + "\n")
    out = tmp_path / "o.json"
    assert main(["generate", "--teacher", "symbolic", "--input", str(p), "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert {r["id"] for r in recs} == {"q-conversation-0", "q-detail-0", "q-complex-0"}
    detail = next(r for r in recs if r["metadata"]["type"] == "detail")["conversations"][1]["value"]
    assert "red star" in detail and "blue circle" in detail and "plain gray background" in detail


def test_output_is_atomic(tmp_path, monkeypatch, world):
    world_dir, _ = world
    out = tmp_path / "data.json"
    out.write_text("previous")
    import vistune.utils.io as io

    def boom(fd):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(io.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        main(["generate", "--teacher", "symbolic", "--captions", str(world_dir / "captions.json"),
              "--instances", str(world_dir / "instances.json"), "--out", str(out), "--limit", "3"])
    assert out.read_text() == "previous"
    assert os.listdir(tmp_path) == ["data.json"]


def test_symbolic_generation_does_not_import_the_openai_client(world, tmp_path):
    """The symbolic teacher works without the optional HTTP client: the OpenAI teacher is imported only for it."""
    world_dir, _ = world
    code = ("import sys; from vistune.cli import main; code = main(sys.argv[1:]); "
            "sys.exit(code if 'vistune.datagen.openai_teacher' not in sys.modules else 99)")
    done = subprocess.run([sys.executable, "-c", code, "generate", "--teacher", "symbolic", "--captions",
                           str(world_dir / "captions.json"), "--out", str(tmp_path / "o.json"), "--limit", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _named(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return {w for w in words if w in COLOURS or w in SHAPES} | {PLURALS[w] for w in words if w in PLURALS}


def test_no_answer_can_be_read_off_earlier_turns(world):
    """Every conversation turn needs the image: its answer is not named earlier, a yes/no or count question
    names nothing named earlier, a thing's region is not asked with its side or half (either order), and a
    pair's relative position is asked once per axis."""
    world_dir, records = world
    objs = _objects(world_dir)
    checked = Counter()
    for r in records:
        if r["metadata"]["type"] != "conversation":
            continue
        conv, named, axes = r["conversations"], set(), []
        placed, located = set(), set()  # things with a side or half stated; things with a region stated
        everything = {w for o in objs[r["image"]] for w in (o["colour"], o["shape"])}
        for h, g in zip(conv[::2], conv[1::2]):
            q, a = h["value"].removeprefix("<image>\n"), g["value"]
            thing = frozenset(_named(q))
            if q.startswith(("Where is", "In which part")):
                assert thing not in placed and thing not in located, conv
                located.add(thing)
                checked["where"] += 1
            elif " or " in q and len(thing & set(SHAPES)) == 1 and re.search(r"\b(left|top)\b", q):
                assert thing not in located, conv  # "left or right?" / "top or bottom?" after "where is"
                placed.add(thing)
            if a in COLOURS or a in SHAPES:
                assert a not in named, conv
                checked["what"] += 1
            elif a in ("yes", "no") or a.isdigit():
                assert not (_named(q) or everything) & named, conv
                checked["yes/no/count"] += 1
            elif a in ("left", "right", "above", "below") and len(_named(q) & set(SHAPES)) >= 2:
                axes.append("x" if a in ("left", "right") else "y")
            named |= _named(f"{q} {a}")
        assert len(axes) == len(set(axes)), conv
    assert checked["what"] >= 20 and checked["yes/no/count"] >= 20 and checked["where"] >= 1


def test_answer_first_puts_the_conclusion_before_the_same_steps():
    from vistune.datagen.symbolic import order_answer

    steps = "There are two red and one blue."
    assert order_answer(steps, "So two red shapes would remain.") == f"{steps} So two red shapes would remain."
    assert order_answer(steps, "So two red shapes would remain.", answer_first=True) == \
        f"Two red shapes would remain. {steps}"
    assert order_answer(steps, "Yes, two is more than one.", answer_first=True) == f"Yes, two is more than one. {steps}"


def test_answer_first_records_ask_the_same_questions_with_the_conclusion_first(tmp_path):
    from vistune.data.annotations import load_coco
    from vistune.data.synth import render_world

    render_world(tmp_path, 12, seed=4, progress=False)
    contexts, _ = load_coco(tmp_path / "captions.json", tmp_path / "instances.json")
    first = generate_symbolic(contexts, types=("complex",), seed=0)
    answer = generate_symbolic(contexts, types=("complex",), seed=0, answer_first=True)
    assert [r["conversations"][0] for r in first] == [r["conversations"][0] for r in answer]
    for r, a in zip(first, answer):
        reasoned, answered = r["conversations"][1]["value"], a["conversations"][1]["value"]
        assert sorted(reasoned.replace("So ", "").lower().split()) == sorted(answered.lower().split())
        assert reasoned != answered and answered[0].isupper()
