"""The synthetic world: reproducible, valid COCO, and a bench whose answers follow from the boxes."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vistune.cli import main
from vistune.data.synth import SHORT_ANSWER_INSTRUCTION, render_world
from vistune.data.world import HELDOUT_WORDING, TEACHER_WORDING, WORDINGS

BENCH_TYPES = {"colour", "shape", "count", "existence", "absolute_position", "relative_position"}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    render_world(out, 60, seed=7, progress=False)
    return out


def _load(world: Path):
    inst = json.loads((world / "instances.json").read_text())
    caps = json.loads((world / "captions.json").read_text())
    bench = [json.loads(line) for line in (world / "bench.jsonl").read_text().splitlines()]
    return inst, caps, bench


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    render_world(tmp_path / "a", 6, seed=3, progress=False)
    render_world(tmp_path / "b", 6, seed=3, progress=False)
    render_world(tmp_path / "c", 6, seed=4, progress=False)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert set(a) == set(c)
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))
    assert a["instances.json"] != c["instances.json"]


def test_coco_files_are_valid(world):
    inst, caps, _ = _load(world)
    images = {im["id"]: im for im in inst["images"]}
    assert len(images) == 60
    assert {im["id"] for im in caps["images"]} == set(images)
    for im in images.values():
        with Image.open(world / "images" / im["file_name"]) as pic:
            assert pic.size == (im["width"], im["height"]) and pic.mode == "RGB"
    cats = {c["id"]: c for c in inst["categories"]}
    assert len({a["id"] for a in inst["annotations"]}) == len(inst["annotations"])
    for a in inst["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h + 1e-6
        assert a["category_id"] in cats
    used = [cats[a["category_id"]] for a in inst["annotations"]]
    assert len({c["supercategory"] for c in used}) >= 6
    assert len({c["name"].split()[0] for c in used}) >= 6
    per_image = Counter(a["image_id"] for a in caps["annotations"])
    assert set(per_image) == set(images) and min(per_image.values()) >= 5
    assert len({a["id"] for a in caps["annotations"]}) == len(caps["annotations"])
    for im_id in list(images)[:10]:
        texts = [a["caption"] for a in caps["annotations"] if a["image_id"] == im_id]
        assert len(set(texts)) == len(texts)  # different wordings


def _plural_to_shape(shapes):
    return {(s + "es" if s.endswith(("s", "x")) else s + "s"): s for s in shapes}


def _template_regex(template: str) -> re.Pattern:
    out = re.escape(template)
    for slot in ("r2", "r", "c", "k", "n", "pl", "npl", "a"):
        out = out.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>.+?)")
    return re.compile(out + "$")


_WORDING_REGEXES = {name: [(family, form, _template_regex(t)) for (family, form), ts in wording.items() for t in ts]
                    for name, wording in WORDINGS.items()}


def _check_question(q: dict, objs: list[dict], shapes: set[str], colours: set[str], wording: str) -> None:
    """Recompute a bench answer from the boxes, independently of the generator's rules (only the wording's
    templates are shared: they say which slot of the question names what)."""
    text = q["question"]
    assert text.endswith("\n" + SHORT_ANSWER_INSTRUCTION)
    text = text[: -len(SHORT_ANSWER_INSTRUCTION) - 1]
    plurals = _plural_to_shape(shapes)
    thing = f"(?:(?:{'|'.join(colours)}) )?(?:{'|'.join(shapes)})"
    valid = {"c": colours.__contains__, "pl": plurals.__contains__, "n": "shape".__eq__, "npl": "shapes".__eq__,
             "a": lambda v: re.fullmatch(f"an? {thing}", v), "r": lambda v: re.fullmatch(thing, v),
             "r2": lambda v: re.fullmatch(thing, v)}
    found = {(form, tuple(sorted((k, v) for k, v in m.groupdict().items() if k not in ("n", "npl"))))
             for family, form, rx in _WORDING_REGEXES[wording]
             if family == q["type"] and (m := rx.match(text))
             and all(valid.get(k, lambda v: True)(v) for k, v in m.groupdict().items())}
    assert len(found) == 1, (wording, text, found)  # the question reads one way only
    form, slots = next(iter(found))
    slots = dict(slots)

    def resolve(ref: str) -> dict:
        parts = ref.split()
        found = [o for o in objs if o["shape"] == parts[-1] and (len(parts) == 1 or o["colour"] == parts[0])]
        assert len(found) == 1, (text, ref)
        return found[0]

    t, ans = q["type"], q["answer"]
    if t == "colour":
        (o,) = [o for o in objs if o["shape"] == slots["r"]]
        assert ans == o["colour"]
    elif t == "shape":
        (o,) = [o for o in objs if o["colour"] == slots["c"]]
        assert ans == o["shape"]
    elif t == "count":
        col = slots.get("c")
        shp = plurals[slots["pl"]] if "pl" in slots else None
        n = sum((not col or o["colour"] == col) and (not shp or o["shape"] == shp) for o in objs)
        assert ans == str(n)
    elif t == "existence":
        words = slots["a"].split()[1:]  # without the article
        col, shp = (words[0], words[1]) if len(words) == 2 else (None, words[0])
        assert col is None or col in colours
        there = any(o["shape"] == shp and (not col or o["colour"] == col) for o in objs)
        assert ans == ("yes" if there else "no")
    elif t == "absolute_position":
        o = resolve(slots["r"])
        if form == "horizontal":
            assert abs(o["cx"] - 0.5) >= 0.1 and ans == ("left" if o["cx"] < 0.5 else "right")
        else:
            assert abs(o["cy"] - 0.5) >= 0.1 and ans == ("top" if o["cy"] < 0.5 else "bottom")
    elif t == "relative_position":
        a, b = resolve(slots["r"]), resolve(slots["r2"])
        if form == "horizontal":
            assert abs(a["cx"] - b["cx"]) >= 0.15 and ans == ("left" if a["cx"] < b["cx"] else "right")
        else:
            assert abs(a["cy"] - b["cy"]) >= 0.15 and ans == ("above" if a["cy"] < b["cy"] else "below")
    else:
        raise AssertionError(t)


def test_bench_answers_follow_from_instances(world):
    inst, _, bench = _load(world)
    in_distribution = [json.loads(line) for line in (world / "bench_in_distribution.jsonl").read_text().splitlines()]
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    shapes = {c["supercategory"] for c in inst["categories"]}
    colours = {c["name"].split()[0] for c in inst["categories"]}
    by_file = {im["file_name"]: im for im in inst["images"]}
    objs: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        im = next(i for i in inst["images"] if i["id"] == a["image_id"])
        x, y, w, h = a["bbox"]
        colour, shape = cats[a["category_id"]].split()
        objs.setdefault(a["image_id"], []).append(
            {"colour": colour, "shape": shape, "cx": (x + w / 2) / im["width"], "cy": (y + h / 2) / im["height"]})
    assert {q["type"] for q in bench} == BENCH_TYPES
    assert len({q["id"] for q in bench}) == len(bench)
    for wording, questions in (("heldout", bench), ("teacher", in_distribution)):
        for q in questions:
            assert set(q) == {"id", "image", "question", "answer", "type"}
            assert re.fullmatch(r"[a-z]+|[0-9]+", q["answer"]), q
            _check_question(q, objs[by_file[q["image"]]["id"]], shapes, colours, wording)


def test_bench_files_ask_the_same_questions_in_two_wordings(world):
    _, _, bench = _load(world)
    in_distribution = [json.loads(line) for line in (world / "bench_in_distribution.jsonl").read_text().splitlines()]
    assert [(q["id"], q["image"], q["answer"], q["type"]) for q in bench] == \
        [(q["id"], q["image"], q["answer"], q["type"]) for q in in_distribution]
    assert all(a["question"] != b["question"] for a, b in zip(bench, in_distribution))
    # held-out wording: no template is one the teacher uses, for any family
    teacher = {t for ts in TEACHER_WORDING.values() for t in ts}
    assert not teacher & {t for ts in HELDOUT_WORDING.values() for t in ts}
    assert set(HELDOUT_WORDING) == {k for k in TEACHER_WORDING if k[0] in BENCH_TYPES}


def test_bench_answers_are_balanced(tmp_path):
    render_world(tmp_path, 300, seed=1, min_objects=1, max_objects=3, progress=False)
    bench = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    for t in BENCH_TYPES:
        c = Counter(q["answer"] for q in bench if q["type"] == t)
        share = c.most_common(1)[0][1] / sum(c.values())
        assert share <= 1 / len(c) + 0.1, (t, c)
    yn = Counter(q["answer"] for q in bench if q["type"] == "existence")
    assert abs(yn["yes"] - yn["no"]) <= 2
    assert len({q["answer"] for q in bench if q["type"] == "count"}) >= 4  # 0..3


def test_demo_setting_gives_few_large_objects(tmp_path):
    render_world(tmp_path, 40, seed=0, min_objects=1, max_objects=3, progress=False)
    inst = json.loads((tmp_path / "instances.json").read_text())
    per = Counter(a["image_id"] for a in inst["annotations"])
    assert set(per.values()) <= {1, 2, 3} and len(per) == 40
    assert min(max(a["bbox"][2], a["bbox"][3]) for a in inst["annotations"]) >= 224 / 7  # >= one 7x7 cell


def test_image_size_and_object_counts(tmp_path):
    render_world(tmp_path, 5, seed=0, min_objects=4, max_objects=4, image_size=320, progress=False)
    inst = json.loads((tmp_path / "instances.json").read_text())
    assert all(im["width"] == 320 for im in inst["images"])
    assert set(Counter(a["image_id"] for a in inst["annotations"]).values()) == {4}


@pytest.mark.parametrize("argv", [
    ["--images", "0"],
    ["--images", "3", "--min-objects", "4", "--max-objects", "2"],
    ["--images", "3", "--min-object-size", "0.5", "--max-object-size", "0.2"],
])
def test_cli_refuses_impossible_requests(tmp_path, capsys, argv):
    assert main(["synth", "--out", str(tmp_path / "w"), *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_refuses_unknown_option(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path), "--images", "2", "--bogus"])
    assert e.value.code == 2


def test_cli_writes_world(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--images", "3", "--seed", "2", "--max-objects", "2"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "images").glob("*.png"))) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_teacher_never_asks_in_the_held_out_wording(world):
    from vistune.datagen.context import load_coco

    from vistune.datagen.symbolic import TYPES, generate_symbolic

    contexts, _ = load_coco(world / "captions.json", world / "instances.json")
    asked = {m["value"].replace("<image>\n", "") for r in generate_symbolic(contexts, TYPES, seed=0)
             for m in r["conversations"] if m["from"] == "human"}
    _, _, bench = _load(world)
    in_distribution = [json.loads(line) for line in (world / "bench_in_distribution.jsonl").read_text().splitlines()]
    assert not asked & {q["question"] for q in bench}
    assert len(asked & {q["question"] for q in in_distribution}) >= len(bench) // 10  # same templates, same slots
