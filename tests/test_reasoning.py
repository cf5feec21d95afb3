"""The symbolic teacher's reasoning questions (`vistune.datagen.reasoning`).

Every answer is re-derived from the boxes: by an evaluation of what was asked (`Reasoning.spec`) written
here from scratch (its own geometry, margins and background knowledge), and for a subset of questions from
the question's words alone. Also: the size of the space (distinct questions, every operation), refusals of
what is too close to call, held-out benchmark wording never used, and the conversations' reasoning turns.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vistune.data.annotations import ImageContext, Instance
from vistune.data.world import (
    HELDOUT_WORDING,
    SHORT_ANSWER_INSTRUCTION,
    TEACHER_WORDING,
    uses_heldout_wording,
)
from vistune.datagen import reasoning as R
from vistune.datagen.scene import Scene
from vistune.datagen.symbolic import generate_symbolic, make_conversation

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart", "cross", "diamond"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "black", "white"]
PLURAL = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
# The background knowledge, written out again.
CORNERS = {"circle": 0, "square": 4, "triangle": 3, "star": 10, "hexagon": 6, "cross": 12, "diamond": 4}
LINES = {"circle": "infinitely many", "square": "four", "triangle": "three", "star": "five", "hexagon": "six",
         "heart": "one", "cross": "four", "diamond": "two"}
MIX = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("blue", "red"): "purple",
       ("black", "white"): "gray", ("red", "white"): "pink"}


# ----------------------------------------------------------------------------- scenes


def random_context(rng: random.Random, i: int, max_objects: int = 5) -> ImageContext:
    """A scene like the synthetic world's: 1-5 shapes, kinds and colours now and then repeated."""
    labels: list[tuple[str, str]] = []
    instances = []
    for _ in range(rng.randint(1, max_objects)):
        kind = rng.choice(labels)[1] if labels and rng.random() < 0.3 else rng.choice(SHAPES)
        colour = rng.choice(labels)[0] if labels and rng.random() < 0.25 else rng.choice(COLOURS)
        labels.append((colour, kind))
        w, h = rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        instances.append(Instance(f"{colour} {kind}", (x, y, x + w, y + h)))
    return ImageContext(f"{i:06d}.png", [], instances)


def contexts(n: int, seed: int = 0) -> list[ImageContext]:
    rng = random.Random(seed)
    return [random_context(rng, i) for i in range(n)]


def scene(ctx: ImageContext) -> Scene:
    return Scene(ctx, SHAPES, COLOURS)


@dataclass
class Thing:
    """An object as this file sees it, straight from the context's label and box (None: added, no place)."""

    colour: str
    kind: str
    box: tuple | None
    idx: int | None
    cx: float = field(init=False)
    cy: float = field(init=False)
    size: float = field(init=False)  # estimated shape area

    def __post_init__(self):
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            self.cx, self.cy = (x1 + x2) / 2, (y1 + y2) / 2
            self.size = (x2 - x1) * (y2 - y1) * R.FILL.get(self.kind, 1.0)


def things(ctx: ImageContext) -> list[Thing]:
    return [Thing(*i.category.split(), tuple(i.bbox), n) for n, i in enumerate(ctx.instances)]


# ----------------------------------------------------------------------------- an evaluation of what was asked


def half(t: Thing, h: str) -> bool | None:
    d = (t.cx if h in ("left", "right") else t.cy) - 0.5
    return None if abs(d) < 0.10 else (d < 0) == (h in ("left", "top"))


def rel(t: Thing, r: str, a: Thing) -> bool | None:
    if r in ("left", "right", "above", "below"):
        d = t.cx - a.cx if r in ("left", "right") else t.cy - a.cy
        return None if abs(d) < 0.15 else (d < 0) == (r in ("left", "above"))
    if r == "near":
        dx = max(0.0, max(t.box[0], a.box[0]) - min(t.box[2], a.box[2]))
        dy = max(0.0, max(t.box[1], a.box[1]) - min(t.box[3], a.box[3]))
        gap = math.hypot(dx, dy)
        return None if 0.05 < gap < 0.15 else gap <= 0.05
    ratio = t.size / a.size
    return None if 1 / 1.4 < ratio < 1.4 else (ratio > 1) == (r == "larger")


def find(ts: list[Thing], idx: int) -> Thing:
    (t,) = [t for t in ts if t.idx == idx]
    return t


def truth(t: Thing, g: dict, ts: list[Thing]) -> bool | None:
    """Whether `t` belongs to group `g`; asserting nothing, None when too close to call."""
    anchor = find(ts, g["anchor"]) if g.get("anchor") is not None else None
    if t is anchor or (g.get("colour") and t.colour != g["colour"]) or (g.get("kind") and t.kind != g["kind"]):
        return False
    checks = ([half(t, g["half"])] if g.get("half") else []) + ([rel(t, g["rel"], anchor)] if g.get("rel") else [])
    if False in checks:
        return False
    return None if None in checks else True


def group(ts: list[Thing], g: dict) -> list[Thing]:
    out = []
    for t in ts:
        v = truth(t, g, ts)
        assert v is not None, ("membership too close to call", g, t)
        if v:
            out.append(t)
    return out


def yes(flag) -> str:
    return "yes" if flag else "no"


def evaluate(spec: dict, ts: list[Thing]) -> str:
    """The answer to `spec` over `ts`, computed here; asserts every fact it needs is clear."""
    op = spec["op"]
    if op in ("remove", "add", "move"):
        return evaluate(spec["inner"], change(spec, ts))
    if op == "count":
        return str(len(group(ts, spec["group"])))
    if op == "exists":
        return yes(group(ts, spec["group"]))
    if op in ("compare", "difference", "total") or (op == "ratio" and spec["ask"] == "twice"):
        a, b = len(group(ts, spec["a"])), len(group(ts, spec["b"]))
        if op == "difference":
            return str(abs(a - b))
        if op == "total":
            return str(a + b)
        if op == "ratio":
            assert b > 0
            return yes(a == 2 * b)
        cmp = "more" if a > b else ("fewer" if a < b else "same")
        if spec["ask"] in ("more", "fewer", "same"):
            return yes(cmp == spec["ask"])
        if spec["ask"] == "which":
            return {"more": "first", "fewer": "second", "same": "same"}[cmp]
        return cmp
    if op == "quantifier" and spec["q"] == "every_every":
        s, o = group(ts, spec["subject"]), group(ts, spec["other"])
        pairs = [rel(a, spec["rel"], b) for a in s for b in o]
        assert None not in pairs and pairs
        return yes(all(pairs))
    if op in ("quantifier", "ratio"):
        members = group(ts, spec["subject"])
        values = [truth(t, spec["predicate"], ts) for t in members]
        assert None not in values and len(members) >= 2
        k, n = sum(values), len(values)
        return yes({"all": k == n, "any": k > 0, "none": k == 0, "not_all": k < n,
                    "more_than_half": 2 * k > n, "at_least_half": 2 * k >= n}[spec.get("q") or spec["ask"]])
    if op == "extreme":
        members = group(ts, spec["group"])
        anchor = find(ts, spec["group"]["anchor"]) if spec["group"]["anchor"] is not None else None
        by = spec["by"]
        corner = {"top-left": (0, 0), "top-right": (1, 0), "bottom-left": (0, 1), "bottom-right": (1, 1)}.get(
            spec["corner"])
        key = {"left": lambda t: t.cx, "right": lambda t: -t.cx, "top": lambda t: t.cy, "bottom": lambda t: -t.cy,
               "largest": lambda t: -t.size, "smallest": lambda t: t.size,
               "corner": lambda t: math.dist((t.cx, t.cy), corner or (0, 0)),
               "nearest": lambda t: math.dist((t.cx, t.cy), (anchor.cx, anchor.cy)),
               "farthest": lambda t: -math.dist((t.cx, t.cy), (anchor.cx, anchor.cy))}[by]
        first, second = sorted(members, key=key)[:2]
        if by in ("largest", "smallest"):
            big, small = (first, second) if by == "largest" else (second, first)
            assert big.size >= 1.4 * small.size
        else:
            assert key(second) - key(first) >= 0.08
        return str(first.idx)
    if op == "distinct":
        return str(len({getattr(t, spec["of"]) for t in group(ts, spec["group"])}))
    if op == "corners":
        return str(sum(CORNERS[t.kind] for t in group(ts, spec["group"])))
    if op == "roll":
        return str(sorted(t.idx for t in ts if t.kind == "circle"))
    if op == "symmetry":
        a = find(ts, spec["a"])
        return LINES[a.kind] if spec["ask"] == "lines" else yes(LINES[a.kind] == LINES[find(ts, spec["b"]).kind])
    if op == "mix":
        mixed = MIX[tuple(sorted((find(ts, spec["a"]).colour, find(ts, spec["b"]).colour)))]
        return mixed if spec["ask"] == "colour" else yes(any(t.colour == mixed for t in ts))
    if op == "common":
        objs = [find(ts, i) for i in spec["objects"]]
        if "group" in spec:
            assert objs == group(ts, spec["group"])
        shared = []
        if "colour" not in spec["skip"] and len({t.colour for t in objs}) == 1:
            shared.append(objs[0].colour)
        if "kind" not in spec["skip"] and len({t.kind for t in objs}) == 1:
            shared.append(next(p for p, s in PLURAL.items() if s == objs[0].kind))
        if all(t.kind in CORNERS for t in objs) and len({t.kind for t in objs}) > 1 \
                and len({CORNERS[t.kind] for t in objs}) == 1:
            shared.append(f"shapes with {NUMBERS[CORNERS[objs[0].kind]]} corners")
        for h, other in (("left", "right"), ("top", "bottom")):
            sides = [half(t, h) for t in objs]
            if h not in spec["skip"] and None not in sides and len(set(sides)) == 1:
                shared.append(f"in the {h if sides[0] else other} half")
        return "; ".join(shared) or "nothing"
    raise AssertionError(op)


def change(spec: dict, ts: list[Thing]) -> list[Thing]:
    if spec["op"] == "remove":
        (what, value), = spec["target"].items()
        key = {"object": "idx", "colour": "colour", "kind": "kind"}[what]
        out = [t for t in ts if getattr(t, key) != value]
        assert len(out) < len(ts)
        return out
    if spec["op"] == "add":
        return ts + [Thing(spec["colour"], spec["kind"], None, None) for _ in range(spec["n"])]
    t = find(ts, spec["object"])
    x1, y1, x2, y2 = t.box
    dx = {"left": -x1, "right": 1 - x2}.get(spec["to"], 0)
    dy = {"top": -y1, "bottom": 1 - y2}.get(spec["to"], 0)
    moved = Thing(t.colour, t.kind, (x1 + dx, y1 + dy, x2 + dx, y2 + dy), t.idx)
    return [moved if u is t else u for u in ts]


def picks_out(phrase: str, obj: Thing, ts: list[Thing]) -> bool:
    """Whether "the <phrase>" names `obj` and nothing else in `ts`."""
    words = phrase.removeprefix("the ").split()
    colour, kind = (words if len(words) == 2 else (None, words[0]))
    hits = [t for t in ts if t.kind == kind and (colour is None or t.colour == colour)]
    return hits == [obj]


def first_number(text: str) -> int:
    for w in re.findall(r"[a-z]+|\d+", text.lower()):
        if w.isdigit():
            return int(w)
        if w in NUMBERS:
            return NUMBERS.index(w)
        if w == "no":
            return 0
    raise AssertionError(f"no number in {text!r}")


def check(r: R.Reasoning, ctx: ImageContext) -> None:
    """`r`'s answer, its conclusion and its wording, against this file's evaluation of the scene."""
    ts = things(ctx)
    expected = evaluate(r.spec, ts)
    assert "So " not in r.steps, r.steps  # answer-first moves the conclusion's "So" only
    assert r.conclusion.startswith(("So ", "Yes, ", "No, ")), r.conclusion
    assert not uses_heldout_wording(r.question), r.question
    assert r.question == r.question.strip() and "  " not in r.question and r.question[0].isupper()
    inner = r.spec.get("inner", r.spec)
    if inner["op"] == "extreme":
        assert expected == str(inner["answer"])
        target = find(ts, inner["answer"])
        assert picks_out(r.answer, target, ts), (r.answer, r.question)
        if r.spec["op"] != "extreme":
            assert picks_out(r.answer, find(change(r.spec, ts), inner["answer"]), change(r.spec, ts))
        assert f"the {r.answer}" in r.conclusion
        return
    if inner["op"] == "roll":
        circles = [t for t in ts if t.kind == "circle"]
        assert expected == str(inner["answer"])
        assert (r.answer == "none") == (not circles)
        if len(circles) == 1:
            assert picks_out(r.answer, circles[0], ts)
        return
    assert r.answer == expected, (r.question, r.answer, expected, r.spec)
    if r.answer in ("yes", "no"):
        assert r.conclusion.startswith("Yes" if r.answer == "yes" else "No"), (r.question, r.conclusion)
    elif r.answer.isdigit():
        assert first_number(r.conclusion) == int(r.answer), (r.question, r.conclusion)
    elif inner["op"] in ("symmetry", "mix"):
        assert r.answer in r.conclusion


# ----------------------------------------------------------------------------- tests


def test_every_operation_answers_what_the_boxes_say():
    """Over 300 scenes, each operation asked on its own: every answer equals this file's evaluation."""
    ctxs = contexts(300, seed=1)
    asked = Counter()
    for i, ctx in enumerate(ctxs):
        s = scene(ctx)
        for op in R.OPERATIONS:
            r = R.make_reasoning(s, random.Random(f"{op}:{i}"), [op])
            if r is not None:
                assert r.op == op
                check(r, ctx)
                asked[op] += 1
    assert set(asked) == set(R.OPERATIONS)
    assert all(n >= 15 for n in asked.values()), asked
    assert asked["count"] >= 250 and asked["add"] >= 250  # the operations most scenes allow


@st.composite
def scenes(draw) -> ImageContext:
    n = draw(st.integers(1, 6))
    instances = []
    for _ in range(n):
        colour, kind = draw(st.sampled_from(COLOURS[:3])), draw(st.sampled_from(SHAPES[:4] + ["heart"]))
        w, h = draw(st.floats(0.05, 0.5)), draw(st.floats(0.05, 0.5))
        x, y = draw(st.floats(0, 1 - w)), draw(st.floats(0, 1 - h))
        instances.append(Instance(f"{colour} {kind}", (x, y, x + w, y + h)))
    return ImageContext("p.png", [], instances)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=scenes(), op=st.sampled_from(sorted(R.OPERATIONS)), seed=st.integers(0, 10_000))
def test_property_any_scene_any_operation(ctx, op, seed):
    """Crowded and sparse scenes with few colours and kinds (many repeats, many near-ties): an answer, when
    one is given, is what the boxes say, and every fact it needs is clear."""
    r = R.make_reasoning(scene(ctx), random.Random(seed), [op])
    if r is not None:
        check(r, ctx)


def _mix(n: int, seed: int) -> list[R.Reasoning]:
    return [r for i, ctx in enumerate(contexts(n, seed)) if (r := R.make_reasoning(scene(ctx), random.Random(i)))]


def test_the_space_is_large_and_uses_every_kind_of_step():
    """200 scenes, one reasoning question each (as `make_complex` asks): the questions are nearly all
    different (the six fixed families before gave 81 distinct questions over the demo world's 200 scenes),
    and plain operations, hypotheticals and background knowledge all occur."""
    rs = _mix(200, seed=2)
    assert len(rs) == 200
    questions = {r.question for r in rs}
    assert len(questions) >= 170, len(questions)
    ops = Counter(r.op for r in rs)
    assert len(ops) >= 15, ops
    assert ops.most_common(1)[0][1] <= 30, ops  # no operation crowds out the others
    assert sum(ops[o] for o in R.HYPOTHETICAL) >= 20 and sum(ops[o] for o in R.KNOWLEDGE) >= 30
    # each operation is worded in several ways
    openings = {op: {" ".join(r.question.split()[:2]) for r in rs if r.op == op} for op in ops}
    assert sum(len(v) >= 2 for v in openings.values()) >= 12, openings


def _text_recount(q: str, conclusion: str, ts: list[Thing]) -> str | None:
    """Questions whose words alone say what to count: recount from the boxes and compare. Returns the form
    checked, or None when `q` is not one of these forms."""

    def kind_or_all(word: str) -> str | None:
        return None if word == "shapes" else PLURAL[word]

    def base(colour: str | None, word: str) -> list[Thing]:
        return [t for t in ts if (not colour or t.colour == colour) and t.kind == (kind_or_all(word) or t.kind)]

    m = re.fullmatch(r"How many (corners|straight sides) do the (?:(\w+) )?(\w+) have (?:in total|together)\?", q)
    if m and (m.group(3) in PLURAL or m.group(3) == "shapes"):
        assert first_number(conclusion) == sum(CORNERS[t.kind] for t in base(m.group(2), m.group(3)))
        return "corners"
    m = re.fullmatch(r"How many (?:(\w+) )?(\w+) are in the (left|right|top|bottom) half\?", q)
    if m and (m.group(2) in PLURAL or m.group(2) == "shapes"):
        objs = base(m.group(1), m.group(2))
        d = [(t.cx if m.group(3) in ("left", "right") else t.cy) - 0.5 for t in objs]
        assert all(abs(x) >= 0.1 for x in d)
        assert first_number(conclusion) == sum((x < 0) == (m.group(3) in ("left", "top")) for x in d)
        return "count in a half"
    m = re.fullmatch(r"How many (\w+) and (\w+) are there in total\?", q)
    if m and m.group(1) in PLURAL and m.group(2) in PLURAL:
        assert first_number(conclusion) == len(base(None, m.group(1))) + len(base(None, m.group(2)))
        return "total"
    m = re.fullmatch(r"(?:If you removed all the (\w+) shapes,|Suppose every (\w+) shape were taken away\.|"
                     r"If all the (\w+) shapes disappeared,) [Hh]ow many shapes would (?:remain|be left)\?", q)
    if m:
        colour = next(g for g in m.groups() if g)
        assert first_number(conclusion) == sum(t.colour != colour for t in ts)
        return "remove a colour"
    m = re.fullmatch(r"Are all the (\w+) (" + "|".join(COLOURS) + r")\?", q)
    if m and m.group(1) in PLURAL:
        objs = base(None, m.group(1))
        assert conclusion.startswith("Yes" if all(t.colour == m.group(2) for t in objs) else "No")
        return "all of a kind one colour"
    m = re.fullmatch(r"Is there an? (?:(\w+) )?(\w+) in the (left|right|top|bottom) half\?", q)
    if m and (m.group(2) in SHAPES or m.group(2) == "shape"):
        objs = [t for t in ts if (not m.group(1) or t.colour == m.group(1)) and m.group(2) in (t.kind, "shape")]
        there = any(half(t, m.group(3)) for t in objs)
        assert all(half(t, m.group(3)) is not None for t in objs)
        assert conclusion.startswith("Yes" if there else "No")
        return "exists in a half"
    return None


def test_answers_follow_from_the_question_words_alone():
    """For questions whose words say exactly what to count or check, the conclusion matches a recount from
    the boxes that reads only the question (not what the generator recorded about it)."""
    forms = Counter()
    draws = {"count": 3, "exists": 3, "corners": 2, "total": 2, "quantifier": 8, "remove": 12}
    for i, ctx in enumerate(contexts(400, seed=3)):
        s, ts = scene(ctx), things(ctx)
        for op, n in draws.items():
            for k in range(n):
                r = R.make_reasoning(s, random.Random(f"{i}:{op}:{k}"), [op])
                if r is not None:
                    form = _text_recount(r.question, r.conclusion, ts)
                    forms[form] += form is not None
    assert {f for f in forms if f} == {"corners", "count in a half", "total", "remove a colour",
                                       "all of a kind one colour", "exists in a half"}, forms
    assert all(n >= 3 for f, n in forms.items() if f), forms


def test_same_seed_same_question_and_answer():
    ctx = contexts(30, seed=4)
    for i, c in enumerate(ctx):
        a = R.make_reasoning(scene(c), random.Random(i))
        b = R.make_reasoning(scene(c), random.Random(i))
        assert a == b


def _obj(colour, kind, cx, cy, side=0.2):
    return Instance(f"{colour} {kind}", (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def test_too_close_to_call_is_refused():
    s = scene(ImageContext("h.png", [], [_obj("red", "star", 0.45, 0.2), _obj("blue", "circle", 0.8, 0.8),
                                          _obj("blue", "square", 0.7, 0.3)]))
    v = R.View(s)
    star, circle, square = s.objs
    assert R.members(v, R.Group(half="left")) is None  # the star is 0.05 from the midline
    assert R.members(v, R.Group(kind="circle", half="left")) == []  # ... but it is not a circle
    assert R.members(v, R.Group(colour="red", half="right")) is None
    assert R.members(v, R.Group(colour="blue", half="top")) == [square]
    assert R.related(circle, "left", square) is None and R.related(square, "above", circle) is True
    assert R.related(square, "larger", circle) is None  # boxes of one size: about as large
    assert R.related(square, "smaller", circle) is None
    assert R.related(circle, "larger", star) is True  # a circle fills its box, a star a third of it
    # two blue objects: "the blue shape" is no referent, and the square is the one object above the circle
    assert v.refer(square) == "square" and R.members(v, R.Group(colour="blue", rel="above", anchor=circle)) == [square]
    two = scene(ImageContext("t.png", [], [_obj("red", "star", 0.2, 0.2), _obj("red", "star", 0.8, 0.8)]))
    assert R.View(two).referable() == []
    for seed in range(40):  # which of two identical stars is further left has no name to answer with
        r = R.make_reasoning(two, random.Random(seed), ["extreme", "symmetry", "mix", "move"])
        assert r is None


def test_fill_estimates_the_drawn_shapes():
    """`FILL` (shape area / box area) lies within what the world's polygons give when turned by 0-15 degrees."""
    np = pytest.importorskip("numpy")
    from vistune.data.synth import _UNIT, _polygon_area

    for kind, poly in _UNIT.items():
        fills = []
        for deg in range(16):
            a = math.radians(deg)
            p = poly @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
            w, h = p.max(0) - p.min(0)
            fills.append(_polygon_area(p) / (w * h))
        assert min(fills) - 0.01 <= R.FILL[kind] <= max(fills) + 0.01, (kind, min(fills), max(fills))


def _fill(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"a": "a red star", "r": "red star", "r2": "blue circle"}.get(
        m.group(1), "red" if m.group(1) == "c" else "stars"), template)


def test_heldout_wording_is_recognised():
    """The check itself: every held-out template filled in is held-out wording, no teacher template is."""
    assert all(uses_heldout_wording(_fill(t)) for ts in HELDOUT_WORDING.values() for t in ts)
    assert not any(uses_heldout_wording(_fill(t)) for ts in TEACHER_WORDING.values() for t in ts)
    assert uses_heldout_wording("How many shapes in this picture are round?")
    assert uses_heldout_wording("<image>\nGive the number of red circles shown here.\n" + SHORT_ANSWER_INSTRUCTION)


def _templates(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _templates(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _templates(v)]
    return []


def test_no_reasoning_question_uses_heldout_wording():
    """Neither the space's templates nor any question drawn from it (on their own, as complex records and
    as conversation turns) uses the benchmark's held-out wording."""
    tables = [v for k, v in vars(R).items() if k.isupper() and k.endswith(("WORDING", "WORDS", "EDGES"))
              or k in ("REMOVE_ONE", "REMOVE_COLOUR", "REMOVE_KIND")]
    templates = [t for table in tables for t in _templates(table)]
    assert len(templates) >= 150
    assert not [t for t in templates if uses_heldout_wording(_fill(t))]
    ctxs = contexts(200, seed=5)
    records = generate_symbolic(ctxs, types=("conversation", "complex"), seed=0, reasoning_fraction=0.5)
    questions = [t["value"] for r in records for t in r["conversations"][::2]]
    questions += [R.make_reasoning(scene(c), random.Random(f"{op}{i}"), [op]).question
                  for op in R.OPERATIONS for i, c in enumerate(ctxs[:60])
                  if R.make_reasoning(scene(c), random.Random(f"{op}{i}"), [op])]
    assert len(questions) > 1000
    assert not [q for q in questions if uses_heldout_wording(q)]


# a teacher template with its slots filled by one or two words ("red star", "an orange cross")
_TEACHER_PATTERNS = [re.compile(re.sub(r"\\\{\w+\\\}", "(?:an? )?[a-z]+(?: [a-z]+)?", re.escape(t)))
                     for ts in TEACHER_WORDING.values() for t in ts]


def _is_family_question(q: str) -> bool:
    q = q.removeprefix("<image>\n").removesuffix("\n" + SHORT_ANSWER_INSTRUCTION)
    return any(p.fullmatch(q) for p in _TEACHER_PATTERNS)


def test_conversations_end_with_a_reasoning_question_now_and_then():
    ctxs = contexts(300, seed=6)
    records = generate_symbolic(ctxs, types=("conversation",), seed=0)
    with_reasoning = 0
    for r in records:
        conv = r["conversations"]
        kinds = [_is_family_question(t["value"]) for t in conv[::2]]
        assert all(kinds[:-1]), conv  # a reasoning question only as the last turn
        if not kinds[-1]:
            with_reasoning += 1
            answer = conv[-1]["value"]
            assert re.search(r"(^|\. )(So |Yes, |No, )", answer) and len(answer.split()) >= 8, answer
        assert 1 <= len(conv) // 2 <= 5  # fewer than min_turns when nothing askable is left
    assert 0.08 <= with_reasoning / len(records) <= 0.22, with_reasoning  # REASONING_FRACTION = 0.15
    none = generate_symbolic(ctxs, types=("conversation",), seed=0, reasoning_fraction=0)
    assert all(_is_family_question(t["value"]) for r in none for t in r["conversations"][::2])
    first = generate_symbolic(ctxs, types=("conversation",), seed=0, answer_first=True)
    assert [r["conversations"][::2] for r in first] == [r["conversations"][::2] for r in records]
    changed = [(a, b) for a, b in zip(records, first) if a != b]
    assert len(changed) == with_reasoning
    with pytest.raises(ValueError):
        generate_symbolic(ctxs[:1], reasoning_fraction=1.5)


def test_a_lone_reasoning_turn_opens_with_the_image():
    s = scene(contexts(1, seed=7)[0])
    for seed in range(20):
        conv = make_conversation(s, random.Random(seed), min_turns=1, max_turns=1, reasoning_fraction=1.0)
        assert conv and conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
