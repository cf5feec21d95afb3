"""The symbolic teacher's reasoning questions: a generated, compositional space over one scene.

A question is put together from parts, and its answer is computed from the boxes:

- a **group** (`Group`): the objects a filter picks out: a colour, a kind, both or neither, narrowed to a
  half of the image or by a relation to one object the question can name (left of, right of, above,
  below, near, larger than, smaller than);
- an **operation** over groups (`OPERATIONS`): count, exists, compare two counts (more, fewer, as many,
  which), difference, total, ratio (twice as many, more than / at least half), quantifiers (all, any,
  none, not all, and every-against-every), the extreme member (along an axis, by size, nearest a corner
  or an object), the number of distinct colours or kinds;
- **hypotheticals**: remove an object, a colour's or a kind's objects, add objects, or move an object to
  an edge, then ask an operation again about the changed scene, in the conditional ("would there be");
- **background knowledge** over the scene: corners and straight sides of the polygons, which shape could
  roll, lines of symmetry, the colour two objects' paints mix to, what two objects or a group share.

The answer states the facts it uses, then concludes (`Reasoning.steps`, `Reasoning.conclusion`; the
conclusion starts with "So", "Yes" or "No", and the steps never contain "So ", so `order_answer` can put
it first). A question is refused (None) when it could not be answered exactly: a referent that is not
unique, an object within `ABS_MARGIN` of the midline for a half, within `REL_MARGIN` of the other object
along the asked axis, a box gap between `NEAR` and `FAR`, sizes within `SIZE_RATIO` of each other, an
extreme that leads the runner-up by less than `GAP`.

Wording is generated as well: several phrasings per operation, per group suffix, per relation and per
extreme, and hypotheticals as a clause or a sentence before the question. No phrasing is one of the
benchmark's held-out templates (`vistune.data.world.uses_heldout_wording`; tested).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from vistune.data.world import (
    ABS_MARGIN,
    REL_MARGIN,
    SHAPES,
    cap,
    count_phrase,
    join,
    number_word,
    plural,
    region_phrase,
    with_article,
)
from vistune.datagen.scene import Obj, Scene, groups_of

GAP = 0.08
"""An extreme (furthest, closest) must lead the runner-up by this much (fraction of the image side)."""
SIZE_RATIO = 1.4
"""One object is larger than another only when its estimated area is at least this many times the other's."""
NEAR, FAR = 0.05, 0.15
"""Boxes at most `NEAR` apart (fraction of the image side) are near each other; at least `FAR` apart, not."""

#: Estimated shape area / box area of the synthetic world's shapes (drawn turned by up to 15 degrees);
#: other kinds count as filling their box.
FILL = {"circle": 0.785, "square": 0.82, "triangle": 0.48, "star": 0.355, "hexagon": 0.72, "heart": 0.6,
        "cross": 0.535, "diamond": 0.52}

# ----------------------------------------------------------------------------- background knowledge

#: Corners of the world's polygons (a star: five points and five inner corners); the heart has none that
#: count cleanly and is left out. Straight sides are as many as corners.
CORNERS = {"circle": 0, "square": 4, "triangle": 3, "star": 10, "hexagon": 6, "cross": 12, "diamond": 4}
CORNER_FACTS = {"circle": "a circle has no corners and no straight sides",
                "square": "a square has four corners and four sides",
                "triangle": "a triangle has three corners and three sides",
                "star": "a five-pointed star has ten corners (five points and five inner corners) and ten sides",
                "hexagon": "a hexagon has six corners and six sides",
                "cross": "a plus-shaped cross has twelve corners and twelve sides",
                "diamond": "a diamond has four corners and four sides"}
#: Lines of symmetry (None: infinitely many) and why.
SYMMETRY = {"circle": (None, "every line through its centre is one"),
            "square": (4, "two through opposite corners and two through the middles of opposite sides"),
            "triangle": (3, "its sides are equal, so one runs from each corner to the middle of the opposite side"),
            "star": (5, "one runs through each of its five points"),
            "hexagon": (6, "three through opposite corners and three through the middles of opposite sides"),
            "heart": (1, "only the line down its middle"),
            "cross": (4, "two along its arms and two along the diagonals"),
            "diamond": (2, "one through each pair of opposite corners")}
ROUND = {"circle"}
#: Paint mixes.
MIXES = {frozenset({"red", "yellow"}): "orange", frozenset({"blue", "yellow"}): "green",
         frozenset({"red", "blue"}): "purple", frozenset({"black", "white"}): "gray",
         frozenset({"red", "white"}): "pink"}

# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class Group:
    """The objects with all the given attributes (None: any), in `half` of the image, in relation `rel` to
    `anchor` (which itself is never a member)."""

    colour: str | None = None
    kind: str | None = None
    half: str | None = None
    """"left", "right", "top" or "bottom"."""
    rel: str | None = None
    """One of `RELATIONS`."""
    anchor: Obj | None = None


RELATIONS = ("left", "right", "above", "below", "near", "larger", "smaller")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below", "below": "above",
            "near": "far", "far": "near", "larger": "smaller", "smaller": "larger"}
HALF_STATE = {h: f"in the {h} half" for h in ("left", "right", "top", "bottom")}
REL_STATE = {"left": "to the left of {a}", "right": "to the right of {a}", "above": "above {a}", "below": "below {a}",
             "near": "close to {a}", "far": "far from {a}", "larger": "larger than {a}", "smaller": "smaller than {a}"}


def size(o: Obj) -> float:
    """Estimated area of the shape, as a fraction of the image."""
    return o.area * FILL.get(o.kind, 1.0)


def box_gap(a: Obj, b: Obj) -> float:
    dx = max(0.0, max(a.box[0], b.box[0]) - min(a.box[2], b.box[2]))
    dy = max(0.0, max(a.box[1], b.box[1]) - min(a.box[3], b.box[3]))
    return math.hypot(dx, dy)


def in_half(o: Obj, half: str) -> bool | None:
    """Whether `o` is in that half of the image; None when its centre is too near the midline to tell."""
    d = (o.cx if half in ("left", "right") else o.cy) - 0.5
    if abs(d) < ABS_MARGIN:
        return None
    return (d < 0) == (half in ("left", "top"))


def related(o: Obj, rel: str, a: Obj) -> bool | None:
    """Whether `o` stands in `rel` to `a`; None when it is too close to call."""
    if rel in ("left", "right", "above", "below"):
        d = o.cx - a.cx if rel in ("left", "right") else o.cy - a.cy
        if abs(d) < REL_MARGIN:
            return None
        return (d < 0) == (rel in ("left", "above"))
    if rel == "near":
        g = box_gap(o, a)
        return True if g <= NEAR else (False if g >= FAR else None)
    r = size(o) / size(a)
    if 1 / SIZE_RATIO < r < SIZE_RATIO:
        return None
    return (r > 1) == (rel == "larger")


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def holds(o: Obj, g: Group) -> bool | None:
    """Whether `o` belongs to `g`: True, False, or None when that is too close to call."""
    if (g.colour and o.colour != g.colour) or (g.kind and o.kind != g.kind) or o is g.anchor:
        return False
    t: bool | None = True
    if g.half:
        t = _and(t, in_half(o, g.half))
    if g.rel:
        t = _and(t, related(o, g.rel, g.anchor))
    return t


# ----------------------------------------------------------------------------- the scene an operation sees

_MOOD = {
    False: {"q_are": "are", "q_is": "is", "q_be": "", "are": "are", "is": "is", "isnt": "is not", "do": "do",
            "does": "does", "have": "have", "has": "has", "makes": "makes", "are_there": "are there",
            "is_there": "is there"},
    True: {"q_are": "would", "q_is": "would", "q_be": "be ", "are": "would be", "is": "would be",
           "isnt": "would not be", "do": "would", "does": "would", "have": "would have", "has": "would have",
           "makes": "would make", "are_there": "would there be", "is_there": "would there be"},
}
_MOOD_TOKEN = re.compile(r"\{(" + "|".join(_MOOD[False]) + r")\}")


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


class View:
    """The objects an operation reasons over: the scene's own, or after a hypothetical change (`would`:
    questions and conclusions in the conditional; `placed`: whether every object has a place)."""

    def __init__(self, scene: Scene, objs: list[Obj] | None = None, would: bool = False, placed: bool = True,
                 change: str | None = None, index: dict[int, int] | None = None):
        self.scene = scene
        self.objs = list(scene.objs if objs is None else objs)
        self.would, self.placed, self.change = would, placed, change
        self.noun, self.npl = scene.noun, plural(scene.noun)
        self.mood = _MOOD[would]
        self.index = {id(o): i for i, o in enumerate(scene.objs)} if index is None else index

    def at(self, o: Obj) -> int | None:
        """`o`'s index in the scene (an added object has none)."""
        return self.index.get(id(o))

    def refer(self, o: Obj) -> str | None:
        """A phrase that picks out `o` alone both in the scene and here, else None."""
        r = self.scene.refer(o) if self.at(o) is not None else None
        if r is None:
            return None
        same = [p for p in self.objs if p.kind == o.kind and (r == o.kind or p.colour == o.colour)]
        return r if len(same) == 1 else None

    def referable(self) -> list[Obj]:
        return [o for o in self.objs if self.refer(o)]

    def be(self, n: int) -> str:
        return self.mood["are"] if self.would else ("is" if n == 1 else "are")

    def label(self, o: Obj) -> str:
        """"the red star"; when others share its name, "the red star on the left", or where their regions are
        the same too, "the second red star from the left"."""
        twins = [p for p in self.objs if p.name == o.name and p.box is not None]
        if len(twins) < 2 or o.box is None:
            return f"the {o.name}"
        regions = [region_phrase(p.cx, p.cy) for p in twins]
        if len(set(regions)) == len(regions):
            return f"the {o.name} {region_phrase(o.cx, o.cy)}"
        order = sorted(twins, key=lambda p: (p.cx, p.cy))
        return f"the {_ORDINALS[order.index(o)]} {o.name} from the left"

    def say(self, template: str, **fields) -> str:
        """A template filled in this view's mood, capitalised, with spacing tidied."""
        s = template.format(**self.mood, **fields)
        s = re.sub(r"\s+", " ", s).strip()
        return cap(re.sub(r" ([?.,:;])", r"\1", s))

    def pick(self, rng: random.Random, templates: list[str]) -> str:
        """A template; in the conditional, only those whose verbs follow the mood."""
        usable = [t for t in templates if not self.would or _MOOD_TOKEN.search(t)]
        return rng.choice(usable)

    def spec(self, g: Group) -> dict:
        return {"colour": g.colour, "kind": g.kind, "half": g.half, "rel": g.rel,
                "anchor": None if g.anchor is None else self.at(g.anchor)}


def members(v: View, g: Group) -> list[Obj] | None:
    """The objects of `g`, or None when any object's membership is too close to call."""
    out = []
    for o in v.objs:
        t = holds(o, g)
        if t is None:
            return None
        if t:
            out.append(o)
    return out


# ----------------------------------------------------------------------------- wording of groups

HALF_WORDS = {"left": ["in the left half", "on the left side of the image", "in the left half of the image",
                       "on the left-hand side"],
              "right": ["in the right half", "on the right side of the image", "in the right half of the image",
                        "on the right-hand side"],
              "top": ["in the top half", "in the upper half of the image", "in the top half of the image"],
              "bottom": ["in the bottom half", "in the lower half of the image", "in the bottom half of the image"]}
REL_WORDS = {"left": ["to the left of the {a}", "left of the {a}", "on the left of the {a}"],
             "right": ["to the right of the {a}", "right of the {a}", "on the right of the {a}"],
             "above": ["above the {a}", "higher up than the {a}"],
             "below": ["below the {a}", "lower down than the {a}", "beneath the {a}"],
             "near": ["near the {a}", "close to the {a}", "next to the {a}"],
             "larger": ["larger than the {a}", "bigger than the {a}"],
             "smaller": ["smaller than the {a}"]}


def base_words(v: View, g: Group) -> tuple[str, str]:
    """("red star", "red stars"), ("star", "stars"), ("red shape", "red shapes") or ("shape", "shapes")."""
    if g.kind:
        sg = f"{g.colour} {g.kind}" if g.colour else g.kind
    else:
        sg = f"{g.colour} {v.noun}" if g.colour else v.noun
    return sg, plural(sg)


def suffix_words(v: View, g: Group, rng: random.Random, than: bool = True) -> str:
    """The words that narrow `g` ("in the left half", "above the star"); without `than`, none that say "than"
    (for questions that compare with "than" themselves)."""
    if g.half:
        return rng.choice(HALF_WORDS[g.half])
    if g.rel:
        options = [w for w in REL_WORDS[g.rel] if than or "than" not in w] or REL_WORDS[g.rel]
        return rng.choice(options).format(a=v.refer(g.anchor))
    return ""


@dataclass
class Words:
    """A group's words: singular and plural base, and the suffix that narrows it ("" for none)."""

    sg: str
    pl: str
    suffix: str

    @property
    def np(self) -> str:
        return f"{self.pl} {self.suffix}".strip()

    @property
    def np_sg(self) -> str:
        return f"{self.sg} {self.suffix}".strip()


def words(v: View, g: Group, rng: random.Random, than: bool = True) -> Words:
    sg, pl = base_words(v, g)
    return Words(sg, pl, suffix_words(v, g, rng, than))


def state(v: View, o: Obj, p: Group) -> str:
    """What `o` is with respect to `p`'s one attribute (colour, kind, half or relation), as a clause."""
    if p.half:
        h = p.half if in_half(o, p.half) else OPPOSITE[p.half]
        return f"{v.label(o)} is {HALF_STATE[h]}"
    if p.rel:
        r = p.rel if related(o, p.rel, p.anchor) else OPPOSITE[p.rel]
        return f"{v.label(o)} is " + REL_STATE[r].format(a=v.label(p.anchor))
    if p.colour:
        return f"{v.label(o)} is {o.colour}"
    return f"{v.label(o)} is {with_article(o.kind)}"


def selection_steps(v: View, g: Group) -> str:
    """The facts that decide `g`'s members: the objects of its colour and kind, then where each one is."""
    base = [o for o in v.objs if holds(o, Group(g.colour, g.kind, anchor=g.anchor))]
    sg, pl = base_words(v, g)
    if not base:
        return f"There are no {pl} at all."
    out = f"There {'is' if len(base) == 1 else 'are'} {count_phrase(len(base), sg)}"
    labels = [v.label(o) for o in base]
    if (g.colour or g.kind) and labels != [f"the {sg}"]:
        out += f": {join(labels if len(set(labels)) == len(labels) else groups_of(base))}"
    out += "."
    if g.half or g.rel:
        p = Group(half=g.half, rel=g.rel, anchor=g.anchor)
        out += f" {cap('; '.join(state(v, o, p) for o in base))}."
    return out


def pick_group(v: View, rng: random.Random, *, half: bool = True, rel: bool = True, narrow: bool = False,
               colour: bool = True, kind: bool = True, absent: float = 0.2) -> Group:
    """A random group: a base of colour and/or kind (present ones, sometimes absent ones from the vocabulary),
    narrowed (always when `narrow`) by a half or a relation where the scene and flags allow."""
    s = v.scene
    kinds = sorted({o.kind for o in v.objs})
    colours = sorted({o.colour for o in v.objs if o.colour})
    bases = ["none"] + (["kind"] if kind and kinds else [])
    if colour and s.coloured and colours:
        bases += ["colour"] + (["both"] if kind and kinds else [])
    b = rng.choice(bases)

    def one(present: list[str], vocab: list[str]) -> str:
        return rng.choice(vocab) if vocab and rng.random() < absent else rng.choice(present)

    c = one(colours, s.colours_vocab) if b in ("colour", "both") else None
    k = one(kinds, s.kinds_vocab) if b in ("kind", "both") else None
    anchors = v.referable() if rel and v.placed else []
    ways = (["half"] if half and v.placed else []) + (["rel"] if anchors else [])
    if not narrow:
        ways.append("")
    way = rng.choice(ways) if ways else ""
    if way == "half":
        return Group(c, k, half=rng.choice(("left", "right", "top", "bottom")))
    if way == "rel":
        # not "the stars left of the star": an anchor named by its kind is the only one of it
        anchors = [a for a in anchors if not (k == a.kind and v.refer(a) == a.kind)]
        if anchors:
            return Group(c, k, rel=rng.choice(RELATIONS), anchor=rng.choice(anchors))
    return Group(c, k)


# ----------------------------------------------------------------------------- operations


@dataclass
class Reasoning:
    """One reasoning question with its answer: `steps` state the facts, `conclusion` concludes."""

    op: str
    """The operation (one of `OPERATIONS`)."""
    question: str
    steps: str
    conclusion: str
    answer: str
    """The short answer: a number ("3"), "yes"/"no", or a phrase ("the blue star", "orange")."""
    spec: dict
    """What was asked, with objects as indices into the scene's objects: for checking answers."""


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _n(m: int) -> str:
    return number_word(m)


COUNT_WORDING = ["How many {pl} {are} {suffix}?", "How many {pl} {suffix} {are_there}?",
                 "How many of the {pl} {are} {suffix}?", "Of all the {pl}, how many {are} {suffix}?",
                 "Count the {pl} {suffix}.", "What is the number of {pl} {suffix}?"]
COUNT_PLAIN_WORDING = ["How many {pl} {are_there}?", "How many {pl} {are_there} in the image?"]
REMAIN_WORDING = ["how many {pl} would remain?", "how many {pl} would be left?"]


def _base_present(v: View, g: Group) -> bool:
    """Whether any object other than the anchor has `g`'s colour and kind (else "none of them" says it all)."""
    return any(holds(o, Group(g.colour, g.kind, anchor=g.anchor)) for o in v.objs)


def op_count(v: View, rng: random.Random) -> Reasoning | None:
    """How many objects of a narrowed group (in a hypothetical, any group)."""
    g = pick_group(v, rng, narrow=v.change not in ("remove", "add"), absent=0.0)
    m = members(v, g)
    if m is None or not _base_present(v, g):
        return None
    w = words(v, g, rng)
    remain = v.change == "remove" and not w.suffix and rng.random() < 0.5
    if remain:
        q = v.say(rng.choice(REMAIN_WORDING), pl=w.pl)
        concl = f"So {count_phrase(len(m), w.sg)} would remain." if m else f"So no {w.pl} would remain."
    else:
        q = v.say(v.pick(rng, COUNT_WORDING if w.suffix else COUNT_PLAIN_WORDING), pl=w.pl, suffix=w.suffix)
        what = count_phrase(len(m), w.sg) if m else f"no {w.pl}"
        concl = v.say("So there {be} {what} {suffix}.", be=v.be(len(m)), what=what, suffix=w.suffix)
    return Reasoning("count", q, selection_steps(v, g), concl, str(len(m)), {"op": "count", "group": v.spec(g)})


EXISTS_WORDING = ["{is_there} {a} {suffix}?", "{are_there} any {pl} {suffix}?", "Can you find {a} {suffix}?",
                  "Does the image have {a} {suffix}?", "{q_is} any {sg} {q_be}{suffix}?"]


def op_exists(v: View, rng: random.Random) -> Reasoning | None:
    """Whether a narrowed group has any member."""
    g = pick_group(v, rng, narrow=True, absent=0.0)
    m = members(v, g)
    if m is None or not (g.half or g.rel) or not _base_present(v, g):
        return None
    w = words(v, g, rng)
    q = v.say(v.pick(rng, EXISTS_WORDING), a=with_article(w.sg), sg=w.sg, pl=w.pl, suffix=w.suffix)
    if m:
        concl = v.say("Yes, {x} {be} {suffix}.", x=join([v.label(o) for o in m]), be=v.be(len(m)), suffix=w.suffix)
    else:
        concl = v.say("No, there {be} no {pl} {suffix}.", be=v.be(2), pl=w.pl, suffix=w.suffix)
    return Reasoning("exists", q, selection_steps(v, g), concl, _yes(bool(m)), {"op": "exists", "group": v.spec(g)})


def pick_pair(v: View, rng: random.Random, modes: tuple[str, ...] = ("kinds", "colours", "halves", "relation")
              ) -> tuple[Group, Group, bool] | None:
    """Two disjoint groups: two kinds, two colours, or one base in opposite halves or on opposite sides of an
    object; the flag says whether they share the base (then the second is worded "ones ...")."""
    s = v.scene
    kinds = sorted({o.kind for o in v.objs})
    modes = tuple(m for m in modes if (m != "colours" or s.coloured) and (m in ("kinds", "colours") or v.placed))
    mode = rng.choice(modes)
    if mode == "kinds":
        if len(s.kinds_vocab) < 2:
            return None
        a = rng.choice(kinds)
        b = rng.choice([k for k in (kinds if len(kinds) > 1 and rng.random() < 0.7 else s.kinds_vocab) if k != a])
        return Group(kind=a), Group(kind=b), False
    if mode == "colours":
        colours = sorted({o.colour for o in v.objs})
        a = rng.choice(colours)
        pool = colours if len(colours) > 1 and rng.random() < 0.7 else s.colours_vocab
        others = [c for c in pool if c != a]
        if not others:
            return None
        return Group(colour=a), Group(colour=rng.choice(others)), False
    base = pick_group(v, rng, half=False, rel=False)
    if mode == "halves":
        h = rng.choice(("left", "top"))
        pair = [replace(base, half=h), replace(base, half=OPPOSITE[h])]
    else:
        anchors = v.referable()
        if not anchors:
            return None
        r = rng.choice(("left", "above"))
        a = rng.choice(anchors)
        pair = [replace(base, rel=r, anchor=a), replace(base, rel=OPPOSITE[r], anchor=a)]
    rng.shuffle(pair)
    return pair[0], pair[1], True


def _pair_words(v: View, a: Group, b: Group, same: bool, rng: random.Random) -> tuple[Words, str, str]:
    """(first group's words, second group as asked, second group in full)."""
    wa = words(v, a, rng, than=False)
    sb = suffix_words(v, b, rng, than=False)
    full = f"{base_words(v, b)[1]} {sb}".strip()
    return wa, (f"ones {sb}" if same else full), full


def counted_pair(v: View, rng: random.Random, modes: tuple[str, ...] = ("kinds", "colours", "halves", "relation")
                 ) -> tuple[Group, Group, bool, list[Obj], list[Obj]] | None:
    """`pick_pair`'s groups, the flag, and both groups' members; None when either group is too close to call
    or both are empty (nothing to compare)."""
    pair = pick_pair(v, rng, modes)
    if pair is None:
        return None
    a, b, same = pair
    ma, mb = members(v, a), members(v, b)
    if ma is None or mb is None or not (ma or mb):
        return None
    return a, b, same, ma, mb


def _ask_pair(v: View, template: str, A: str, B: str, B_full: str) -> str:
    """A question about two groups; "ones ..." for the second only where it follows the first."""
    return v.say(template, A=A, B=B if template.find("{B}") > template.find("{A}") else B_full)


def _pair_steps(v: View, a: Group, b: Group, same: bool) -> str:
    if same:
        return selection_steps(v, a)
    return f"{selection_steps(v, a)} {selection_steps(v, b)}"


COMPARE_WORDING = {
    "more": ["{are_there} more {A} than {B}?", "Does the image show more {A} than {B}?",
             "{q_are} the {A} {q_be}more numerous than the {B}?"],
    "fewer": ["{are_there} fewer {A} than {B}?", "{q_are} the {A} {q_be}fewer than the {B}?"],
    "same": ["{are_there} as many {A} as {B}?", "{q_are} there {q_be}the same number of {A} and {B}?",
             "Is the number of {A} equal to the number of {B}?"],
    "which": ["Which {are} more numerous, the {A} or the {B}?", "Of the {A} and the {B}, which {are} more common?",
              "{are_there} more {A} or more {B}?"],
    "three": ["{are_there} more, fewer or the same number of {A} compared with {B}?",
              "Compared with the {B}, {are_there} more, fewer or as many {A}?"],
}


def op_compare(v: View, rng: random.Random) -> Reasoning | None:
    """Compare two groups' counts."""
    pair = counted_pair(v, rng)
    if pair is None:
        return None
    a, b, same, ma, mb = pair
    na, nb = len(ma), len(mb)
    wa, B, B_full = _pair_words(v, a, b, same, rng)
    A = wa.np
    ask = rng.choice(sorted(COMPARE_WORDING))
    q = _ask_pair(v, v.pick(rng, COMPARE_WORDING[ask]), A, B, B_full)
    more = "there are" if not v.would else "there would be"
    cmp = "more" if na > nb else ("fewer" if na < nb else "same")
    if ask in ("more", "fewer", "same"):
        answer = _yes(cmp == ask)
        head = "Yes" if answer == "yes" else "No"
        if cmp == "same":
            concl = f"{head}, the numbers are equal ({_n(na)} each)."
        else:
            big, small = (na, nb) if na > nb else (nb, na)
            concl = (f"{head}, {_n(big)} is more than {_n(small)}, so {more} more "
                     f"{A if na > nb else B_full}.")
    elif ask == "which":
        answer = {"more": "first", "fewer": "second", "same": "same"}[cmp]
        if cmp == "same":
            concl = f"So neither: {more} {_n(na)} of each."
        else:
            concl = f"So {more} more {A if na > nb else B_full}: {_n(max(na, nb))} against {_n(min(na, nb))}."
    else:
        answer = cmp
        concl = (f"So {more} as many {A} as {B_full}: {_n(na)} each." if cmp == "same" else
                 f"So {more} {cmp} {A}: {_n(na)} against {_n(nb)}.")
    return Reasoning("compare", q, _pair_steps(v, a, b, same), concl, answer,
                     {"op": "compare", "ask": ask, "a": v.spec(a), "b": v.spec(b)})


DIFFERENCE_WORDING = ["How many more {A} than {B} {are_there}?", "By how many {do} the {A} outnumber the {B}?",
                      "How many fewer {B} than {A} {are_there}?",
                      "What is the difference between the number of {A} and the number of {B}?"]


def op_difference(v: View, rng: random.Random) -> Reasoning | None:
    """How many more of one group than of another."""
    pair = counted_pair(v, rng)
    if pair is None:
        return None
    a, b, same, ma, mb = pair
    if len(ma) < len(mb) or (same and len(ma) == len(mb) and rng.random() < 0.5):
        a, b, ma, mb = b, a, mb, ma
    d = len(ma) - len(mb)
    wa, B, B_full = _pair_words(v, a, b, same, rng)
    A = wa.np
    q = _ask_pair(v, v.pick(rng, DIFFERENCE_WORDING), A, B, B_full)
    steps = f"{_pair_steps(v, a, b, same)} That is {_n(len(ma))} against {_n(len(mb))}, and " \
            f"{len(ma)} - {len(mb)} = {d}."
    concl = (v.say("So the difference is zero: there {are} as many {A} as {B}.", A=A, B=B_full) if d == 0 else
             v.say("So there {be} {n} more {A} {suffix} than {B}.", be=v.be(d), n=_n(d),
                   A=wa.sg if d == 1 else wa.pl, suffix=wa.suffix, B=B_full))
    return Reasoning("difference", q, steps, concl, str(d), {"op": "difference", "a": v.spec(a), "b": v.spec(b)})


TOTAL_WORDING = ["How many {A} and {B} {are_there} in total?", "What is the total number of {A} and {B}?",
                 "Counting the {A} and the {B} together, how many {are_there}?",
                 "Taken together, how many {A} and {B} {are_there}?"]


def op_total(v: View, rng: random.Random) -> Reasoning | None:
    """The number of objects in two disjoint groups together."""
    pair = counted_pair(v, rng, ("kinds", "colours"))
    if pair is None:
        return None
    a, b, _, ma, mb = pair
    wa, wb = words(v, a, rng), words(v, b, rng)
    q = v.say(v.pick(rng, TOTAL_WORDING), A=wa.np, B=wb.np)
    t = len(ma) + len(mb)
    steps = f"{selection_steps(v, a)} {selection_steps(v, b)} {len(ma)} + {len(mb)} = {t}."
    concl = v.say("So that {makes} {n} in total.", n=_n(t))
    return Reasoning("total", q, steps, concl, str(t), {"op": "total", "a": v.spec(a), "b": v.spec(b)})


# --- subjects and predicates (quantifiers, ratios)


def pick_subject_predicate(v: View, rng: random.Random, min_size: int = 2
                           ) -> tuple[Group, Group, list[Obj], list[bool]] | None:
    """A subject group (a base, maybe in a half) and a predicate on one other attribute (a colour, a kind,
    a half or a relation), with the subject's members and whether each satisfies the predicate."""
    s = pick_group(v, rng, rel=False, absent=0.0)
    ways = [w for w, ok in (("colour", not s.colour and v.scene.coloured), ("kind", not s.kind),
                            ("half", not s.half and v.placed), ("rel", v.placed)) if ok]
    if not ways:
        return None
    way = rng.choice(ways)
    if way == "colour":
        p = Group(colour=rng.choice(sorted({o.colour for o in v.objs})))
    elif way == "kind":
        p = Group(kind=rng.choice(sorted({o.kind for o in v.objs})))
    elif way == "half":
        p = Group(half=rng.choice(("left", "right", "top", "bottom")))
    else:
        anchors = [o for o in v.referable() if not holds(o, s)]
        if not anchors:
            return None
        p = Group(rel=rng.choice(RELATIONS), anchor=rng.choice(anchors))
    m = members(v, s)
    if m is None or len(m) < min_size:
        return None
    truth = [holds(o, p) for o in m]
    if any(t is None for t in truth):
        return None
    return s, p, m, truth


def predicate_words(v: View, p: Group, rng: random.Random) -> tuple[str, str]:
    """(singular, plural) predicate: ("red", "red"), ("a star", "stars"), ("in the left half", ...)."""
    if p.colour:
        return p.colour, p.colour
    if p.kind:
        return with_article(p.kind), plural(p.kind)
    w = suffix_words(v, p, rng)
    return w, w


QUANTIFIER_WORDING = {
    "all": ["{q_are} all the {S} {q_be}{P}?", "{q_is} every {S1} {q_be}{P1}?", "Are the {S} all {P}?"],
    "any": ["{q_is} any of the {S} {q_be}{P1}?", "{q_is} at least one of the {S} {q_be}{P1}?",
            "Does any {S1} happen to be {P1}?"],
    "none": ["{q_are} none of the {S} {q_be}{P}?", "Is it true that no {S1} is {P1}?"],
    "not_all": ["{is_there} {aS1} that {isnt} {P1}?", "Is any of the {S} not {P1}?"],
}
EVERY_WORDING = ["{q_is} every {S1} {q_be}{R} every {T1}?", "{q_are} all the {S} {q_be}{R} all the {T}?",
                 "{q_is} each {S1} {q_be}{R} each of the {T}?"]
EVERY_RELATION = {"larger": ["larger than", "bigger than"], "smaller": ["smaller than"],
                  "left": ["to the left of", "further left than"], "right": ["to the right of", "further right than"],
                  "above": ["above", "higher up than"], "below": ["below", "lower down than"]}


def _order_steps(v: View, objs: list[Obj], by: str) -> str:
    if by in ("larger", "smaller"):
        order = sorted(objs, key=lambda o: -size(o))
        return f"From largest to smallest: {join([v.label(o) for o in order])}."
    if by in ("left", "right"):
        return f"From left to right: {join([v.label(o) for o in sorted(objs, key=lambda o: o.cx)])}."
    return f"From top to bottom: {join([v.label(o) for o in sorted(objs, key=lambda o: o.cy)])}."


def op_quantifier(v: View, rng: random.Random) -> Reasoning | None:
    """All / any / none / not all of a group have a property; or every member of one group stands in a
    relation to every member of another."""
    if v.placed and rng.random() < 0.3:
        return _every_every(v, rng)
    sp = pick_subject_predicate(v, rng)
    if sp is None:
        return None
    s, p, m, truth = sp
    q_kind = rng.choice(sorted(QUANTIFIER_WORDING))
    sw = words(v, s, rng)
    P1, P = predicate_words(v, p, rng)
    q = v.say(v.pick(rng, QUANTIFIER_WORDING[q_kind]), S=sw.np, S1=sw.np_sg, aS1=with_article(sw.np_sg), P=P, P1=P1)
    yes_o = next((o for o, t in zip(m, truth) if t), None)
    no_o = next((o for o, t in zip(m, truth) if not t), None)
    answer = {"all": no_o is None, "any": yes_o is not None, "none": yes_o is None, "not_all": no_o is not None}[q_kind]
    head = "Yes" if answer else "No"
    if q_kind in ("all", "not_all"):
        concl = (v.say("{h}, the {x} {isnt} {P1}.", h=head, x=v.label(no_o)[4:], P1=P1) if no_o is not None else
                 v.say("{h}, every one of them {is} {P1}.", h=head, P1=P1))
    else:
        concl = (v.say("{h}, the {x} {is} {P1}.", h=head, x=v.label(yes_o)[4:], P1=P1) if yes_o is not None else
                 v.say("{h}, none of them {is} {P1}.", h=head, P1=P1))
    steps = f"{selection_steps(v, s)} {cap('; '.join(state(v, o, p) for o in m))}."
    return Reasoning("quantifier", q, steps, concl, _yes(answer),
                     {"op": "quantifier", "q": q_kind, "subject": v.spec(s), "predicate": v.spec(p)})


def _every_every(v: View, rng: random.Random) -> Reasoning | None:
    pair = counted_pair(v, rng, ("kinds", "colours"))
    if pair is None:
        return None
    s, t, _, ms, mt = pair
    if not ms or not mt or len(ms) + len(mt) < 3:
        return None
    rel = rng.choice(sorted(EVERY_RELATION))
    truth = [related(a, rel, b) for a in ms for b in mt]
    if any(x is None for x in truth):
        return None
    ws, wt = words(v, s, rng), words(v, t, rng)
    R = rng.choice(EVERY_RELATION[rel])
    q = v.say(v.pick(rng, EVERY_WORDING), S=ws.np, S1=ws.sg, T=wt.np, T1=wt.sg, R=R)
    bad = next(((a, b) for a in ms for b in mt if not related(a, rel, b)), None)
    if bad is None:
        concl = v.say("Yes, each {S1} {is} {R} each {T1}.", S1=ws.sg, T1=wt.sg, R=R)
    else:
        concl = v.say("No, the {a} {isnt} {R} the {b}.", a=v.label(bad[0])[4:], b=v.label(bad[1])[4:], R=R)
    steps = f"{selection_steps(v, s)} {selection_steps(v, t)} {_order_steps(v, ms + mt, rel)}"
    return Reasoning("quantifier", q, steps, concl, _yes(bad is None),
                     {"op": "quantifier", "q": "every_every", "subject": v.spec(s), "other": v.spec(t),
                      "rel": rel})


RATIO_WORDING = {
    "twice": ["{are_there} twice as many {A} as {B}?", "{q_are} there {q_be}exactly two {A} for every one of the {B}?",
              "Is the number of {A} double the number of {B}?"],
    "more_than_half": ["{q_are} more than half of the {S} {q_be}{P}?", "{q_are} most of the {S} {q_be}{P}?"],
    "at_least_half": ["{q_are} at least half of the {S} {q_be}{P}?", "{q_are} half or more of the {S} {q_be}{P}?"],
}


def op_ratio(v: View, rng: random.Random) -> Reasoning | None:
    """Twice as many of one group as of another; more than / at least half of a group with a property."""
    ask = rng.choice(sorted(RATIO_WORDING))
    if ask == "twice":
        pair = counted_pair(v, rng)
        if pair is None or not pair[4]:
            return None
        a, b, same, ma, mb = pair
        wa, B, B_full = _pair_words(v, a, b, same, rng)
        q = _ask_pair(v, v.pick(rng, RATIO_WORDING[ask]), wa.np, B, B_full)
        ok = len(ma) == 2 * len(mb)
        concl = (f"{'Yes' if ok else 'No'}, {_n(len(ma))} {'is' if ok else 'is not'} twice {_n(len(mb))}.")
        return Reasoning("ratio", q, f"{_pair_steps(v, a, b, same)} Twice {_n(len(mb))} is {_n(2 * len(mb))}.",
                         concl, _yes(ok), {"op": "ratio", "ask": ask, "a": v.spec(a), "b": v.spec(b)})
    sp = pick_subject_predicate(v, rng)
    if sp is None:
        return None
    s, p, m, truth = sp
    k, n = sum(truth), len(m)
    sw = words(v, s, rng)
    _, P = predicate_words(v, p, rng)
    q = v.say(v.pick(rng, RATIO_WORDING[ask]), S=sw.np, P=P)
    ok = 2 * k > n if ask == "more_than_half" else 2 * k >= n
    detail = "exactly half" if 2 * k == n else ("more than half" if 2 * k > n else "fewer than half")
    concl = f"{'Yes' if ok else 'No'}, {_n(k)} of {_n(n)} is {detail}."
    steps = f"{selection_steps(v, s)} {cap('; '.join(state(v, o, p) for o in m))}."
    return Reasoning("ratio", q, steps, concl, _yes(ok),
                     {"op": "ratio", "ask": ask, "subject": v.spec(s), "predicate": v.spec(p)})


# --- extremes

_CORNER_AT = {"top-left": (0.0, 0.0), "top-right": (1.0, 0.0), "bottom-left": (0.0, 1.0), "bottom-right": (1.0, 1.0)}
EXTREME_WORDS = {"left": ["furthest to the left", "closest to the left edge", "the leftmost one"],
                 "right": ["furthest to the right", "closest to the right edge", "the rightmost one"],
                 "top": ["highest in the image", "closest to the top edge", "the topmost one"],
                 "bottom": ["lowest in the image", "closest to the bottom edge", "the lowest one"],
                 "largest": ["the largest", "the biggest"], "smallest": ["the smallest", "the tiniest"],
                 "corner": ["closest to the {c} corner", "nearest the {c} corner"],
                 "nearest": ["closest to the {a}", "nearest to the {a}"],
                 "farthest": ["furthest from the {a}", "farthest away from the {a}"]}
EXTREME_WORDING = ["Which {S1} {is} {E}?", "Which of the {S} {is} {E}?", "Of the {S}, which one {is} {E}?",
                   "Among the {S}, which {is} {E}?"]


def _dist(o: Obj, x: float, y: float) -> float:
    return math.hypot(o.cx - x, o.cy - y)


def op_extreme(v: View, rng: random.Random) -> Reasoning | None:
    """The member of a group furthest along an axis, largest or smallest, nearest a corner, or nearest to /
    furthest from another object."""
    if not v.placed:
        return None
    by = rng.choice(sorted(EXTREME_WORDS))
    g = pick_group(v, rng, rel=False, absent=0.0)
    anchor, corner = None, None
    if by in ("nearest", "farthest"):
        others = v.referable()
        if not others:
            return None
        anchor = rng.choice(others)
        g = replace(g, anchor=anchor)
    if by == "corner":
        corner = rng.choice(sorted(_CORNER_AT))
    m = members(v, g)
    if m is None or len(m) < 2:
        return None
    key: Callable[[Obj], float] = {
        "left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy, "bottom": lambda o: -o.cy,
        "largest": lambda o: -size(o), "smallest": size,
        "corner": lambda o: _dist(o, *_CORNER_AT.get(corner, (0, 0))),
        "nearest": lambda o: _dist(o, anchor.cx, anchor.cy) if anchor else 0.0,
        "farthest": lambda o: -_dist(o, anchor.cx, anchor.cy) if anchor else 0.0}[by]
    order = sorted(m, key=key)
    first, second = order[0], order[1]
    if by in ("largest", "smallest"):
        big, small = (first, second) if by == "largest" else (second, first)
        if size(big) < SIZE_RATIO * size(small):
            return None
    elif key(second) - key(first) < GAP:
        return None
    ref = v.refer(first)
    if ref is None:
        return None
    sw = words(v, g, rng)
    E = rng.choice(EXTREME_WORDS[by]).format(c=corner, a=v.refer(anchor) if anchor else "")
    q = v.say(v.pick(rng, EXTREME_WORDING), S=sw.np, S1=sw.np_sg, E=E)
    steps = selection_steps(v, g)
    if by in ("left", "right", "top", "bottom", "largest", "smallest"):
        steps += " " + _order_steps(v, m, {"top": "above", "bottom": "above", "largest": "larger",
                                           "smallest": "smaller"}.get(by, by))
        edge = {"largest": "", "smallest": ""}.get(by, f"nearer the {by} edge than ")
        steps += (f" The {first.name} is clearly {'larger' if by == 'largest' else 'smaller'} than the "
                  f"{second.name}, the next one." if not edge else
                  f" The {first.name} is {edge}the {second.name}, the next one.")
    else:
        x, y = _CORNER_AT[corner] if corner else (anchor.cx, anchor.cy)
        where = f"the {corner} corner" if corner else v.label(anchor)
        steps += (f" Measuring from {where} to the middle of each: "
                  + "; ".join(f"{v.label(o)} is about {_dist(o, x, y):.2f} image widths away" for o in m)
                  + f". The {first.name} is clearly ahead of the {second.name}, the next one.")
    extra = f", which is {first.colour}" if first.colour and ref == first.kind else ""
    concl = v.say("So it {is} the {r}{extra}.", r=ref, extra=extra)
    return Reasoning("extreme", q, steps, concl, ref,
                     {"op": "extreme", "group": v.spec(g), "by": by, "corner": corner, "answer": v.at(first)})


DISTINCT_COLOUR_WORDING = ["How many different colors {do} the {S} have?",
                           "Among the {S}, how many different colors {are_there}?",
                           "How many distinct colors {are} used for the {S}?"]
DISTINCT_KIND_WORDING = ["How many different kinds of {n} {are_there} among the {S}?",
                         "Among the {S}, how many different kinds {are_there}?"]
DISTINCT_ALL_KIND_WORDING = ["How many different kinds of {npl} {are} in the image?",
                             "How many distinct {n} types {are_there}?"]


def op_distinct(v: View, rng: random.Random) -> Reasoning | None:
    """How many different colours a group has, or different kinds."""
    of = "colour" if v.scene.coloured and rng.random() < 0.5 else "kind"
    g = pick_group(v, rng, rel=False, colour=of == "kind", kind=of == "colour", absent=0.0)
    m = members(v, g)
    if not m or len(m) < 2:
        return None
    values = list(dict.fromkeys(o.colour if of == "colour" else o.kind for o in m))
    w = words(v, g, rng)
    if of == "colour":
        q = v.say(v.pick(rng, DISTINCT_COLOUR_WORDING), S=w.np)
        steps = f"{selection_steps(v, g)} Their colors: " + "; ".join(f"{v.label(o)} is {o.colour}" for o in m) + "."
        what = "different color"
    else:
        plain = not (g.colour or w.suffix)
        q = v.say(v.pick(rng, DISTINCT_ALL_KIND_WORDING if plain else DISTINCT_KIND_WORDING), n=v.noun, npl=v.npl,
                  S=w.np)
        steps = f"{selection_steps(v, g)} Listing them: {join(groups_of(m))}."
        what = "different kind"
    named = join([x if of == "colour" else plural(x) if sum(o.kind == x for o in m) > 1 else with_article(x)
                  for x in values])
    if len(values) == 1:
        concl = v.say("So there {be} only one {what}: {x}.", be=v.be(1), what=what.split()[1], x=named)
    else:
        concl = v.say("So there {be} {n}: {x}.", be=v.be(len(values)), n=count_phrase(len(values), what), x=named)
    return Reasoning("distinct", q, steps, concl, str(len(values)), {"op": "distinct", "of": of, "group": v.spec(g)})


# --- background knowledge


CORNER_WORDING = {
    "corners": ["How many corners {do} the {S} have in total?", "How many corners {do} the {S} have together?",
                "What is the total number of corners of the {S}?",
                "If you counted every corner of the {S}, how many would you get?"],
    "sides": ["How many straight sides {do} the {S} have in total?",
              "Adding up the straight sides of the {S}, how many {are_there}?",
              "What is the total number of straight sides of the {S}?"],
}
CORNER_ONE_WORDING = {"corners": ["How many corners {does} the {S1} have?"],
                      "sides": ["How many straight sides {does} the {S1} have?"]}


def op_corners(v: View, rng: random.Random) -> Reasoning | None:
    """Knowledge: the total number of corners (or straight sides) of a group's polygons."""
    measure = rng.choice(("corners", "sides"))
    g = pick_group(v, rng, rel=False, absent=0.0)
    m = members(v, g)
    if not m or any(o.kind not in CORNERS for o in m):
        return None
    w = words(v, g, rng)
    if len(m) == 1:
        if w.suffix or g.kind or not g.colour:  # "the triangle": nothing to see
            return None
        q = v.say(v.pick(rng, CORNER_ONE_WORDING[measure]), S1=w.sg)
    else:
        q = v.say(v.pick(rng, CORNER_WORDING[measure]), S=w.np)
    kinds = Counter(o.kind for o in m)
    total = sum(CORNERS[k] * n for k, n in kinds.items())
    parts = [f"{count_phrase(n, k)} {'has' if n == 1 else 'have'} "
             + (f"{n} × {CORNERS[k]} = {n * CORNERS[k]}" if n > 1 else f"{CORNERS[k]}") for k, n in kinds.items()]
    sums = f"; {' + '.join(str(CORNERS[k] * n) for k, n in kinds.items())} = {total}" if len(kinds) > 1 else ""
    steps = (f"{selection_steps(v, g)} {cap('; '.join(CORNER_FACTS[k] for k in kinds))}. "
             f"{cap(', '.join(parts))}{sums}.")
    who = f"the {w.np}" if len(m) > 1 else f"the {w.np_sg}"
    concl = v.say("So {who} {h} {n} {what}{tot}.", who=who, h=v.mood["have"] if len(m) > 1 else v.mood["has"],
                  n=_n(total), what=measure if measure == "corners" else "straight sides",
                  tot=" in total" if len(m) > 1 else "")
    return Reasoning("corners", q, steps, concl, str(total), {"op": "corners", "measure": measure, "group": v.spec(g)})


ROLL_WORDING = ["Which of the {npl} could roll if you pushed it?", "Which {n} could roll like a wheel?",
                "If these were real objects on a table, which {n} could roll away?",
                "Could any of the {npl} roll? Which one?"]


def op_roll(v: View, rng: random.Random) -> Reasoning | None:
    """Knowledge: only round shapes roll."""
    if len(v.objs) < 2 or any(o.kind not in SHAPES for o in v.objs):
        return None
    rolls = [o for o in v.objs if o.kind in ROUND]
    q = v.say(rng.choice(ROLL_WORDING), n=v.noun, npl=v.npl)
    steps = (f"The image shows {join(groups_of(v.objs))}. Only a round outline like a circle's can roll; "
             "shapes with corners or a point tip over and stop.")
    if not rolls:
        concl, answer = "So none of them could roll: none is round.", "none"
    elif len(rolls) == 1:
        r = v.refer(rolls[0])
        if r is None:
            return None
        concl, answer = f"So the {r} could roll.", f"the {r}"
    else:
        concl, answer = f"So the {count_phrase(len(rolls), 'circle')} could roll.", "the circles"
    return Reasoning("roll", q, steps, concl, answer,
                     {"op": "roll", "answer": sorted(v.at(o) for o in rolls)})


SYMMETRY_WORDING = ["How many lines of symmetry does the {X} have?", "How many mirror lines does the {X} have?",
                    "Along how many different lines could you fold the {X} so that both halves match?"]
SAME_SYMMETRY_WORDING = ["Do the {X} and the {Y} have the same number of lines of symmetry?",
                         "Does the {X} have as many mirror lines as the {Y}?"]


def _colour_ref(v: View, o: Obj) -> str | None:
    """"red shape" when `o` is the only red object (so the question does not name its kind), else `refer`."""
    if o.colour and sum(p.colour == o.colour for p in v.objs) == 1:
        return f"{o.colour} {v.noun}"
    return v.refer(o)


def _lines(k: str) -> str:
    n = SYMMETRY[k][0]
    return "infinitely many" if n is None else _n(n)


def _lines_phrase(k: str) -> str:
    n = SYMMETRY[k][0]
    return "infinitely many lines" if n is None else count_phrase(n, "line")


def op_symmetry(v: View, rng: random.Random) -> Reasoning | None:
    """Knowledge: lines of symmetry of one object, or whether two have as many."""
    known = [o for o in v.objs if o.kind in SYMMETRY and _colour_ref(v, o)]
    if not known:
        return None
    if len(known) >= 2 and rng.random() < 0.4:
        a, b = rng.sample(known, 2)
        X, Y = _colour_ref(v, a), _colour_ref(v, b)
        q = v.say(rng.choice(SAME_SYMMETRY_WORDING), X=X, Y=Y)
        same = SYMMETRY[a.kind][0] == SYMMETRY[b.kind][0]
        steps = " ".join(f"The {R}{'' if R == o.kind else ' is ' + with_article(o.kind) + ', which'} has "
                         f"{_lines_phrase(o.kind)} of symmetry: {SYMMETRY[o.kind][1]}." for R, o in ((X, a), (Y, b)))
        concl = (f"Yes, both have {_lines(a.kind)}." if same else f"No, {_lines(a.kind)} against {_lines(b.kind)}.")
        return Reasoning("symmetry", q, steps, concl, _yes(same),
                         {"op": "symmetry", "ask": "same", "a": v.at(a), "b": v.at(b)})
    o = rng.choice(known)
    X = _colour_ref(v, o)
    q = v.say(rng.choice(SYMMETRY_WORDING), X=X)
    why = SYMMETRY[o.kind][1]
    lines = _lines_phrase(o.kind)
    steps = (f"The {X} is {with_article(o.kind)}. " if X != o.kind else "") + \
        f"{cap(with_article(o.kind))} has {lines} of symmetry: {why}."
    concl = f"So the {X} has {lines} of symmetry."
    return Reasoning("symmetry", q, steps, concl, _lines(o.kind), {"op": "symmetry", "ask": "lines", "a": v.at(o)})


MIX_WORDING = ["If you mixed paints in the colors of the {X} and the {Y}, what color would you get?",
               "What color do you get by mixing the colors of the {X} and the {Y}?",
               "Mixing paint the color of the {X} with paint the color of the {Y} gives which color?"]
MIX_FIND_WORDING = ["Is there a {n} whose color you would get by mixing the colors of the {X} and the {Y}?",
                    "Does any {n} have the color that the colors of the {X} and the {Y} make when mixed?"]


def op_mix(v: View, rng: random.Random) -> Reasoning | None:
    """Knowledge: the paint mix of two objects' colours (named by kind, so the colours must be seen)."""
    named = [o for o in v.objs if o.colour and v.refer(o) == o.kind]
    pairs = [(a, b) for i, a in enumerate(named) for b in named[i + 1:] if frozenset((a.colour, b.colour)) in MIXES]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    if rng.random() < 0.5:
        a, b = b, a
    mix = MIXES[frozenset((a.colour, b.colour))]
    steps = f"The {a.kind} is {a.colour} and the {b.kind} is {b.colour}. Mixing {a.colour} and {b.colour} paint " \
            f"gives {mix}."
    if rng.random() < 0.6:
        q = v.say(rng.choice(MIX_WORDING), X=a.kind, Y=b.kind)
        return Reasoning("mix", q, steps, f"So you would get {mix}.", mix,
                         {"op": "mix", "ask": "colour", "a": v.at(a), "b": v.at(b)})
    q = v.say(rng.choice(MIX_FIND_WORDING), n=v.noun, X=a.kind, Y=b.kind)
    found = [o for o in v.objs if o.colour == mix]
    steps += f" Looking for {with_article(mix)} {v.noun}: " + (
        f"{join([v.label(o) for o in found])} {'is' if len(found) == 1 else 'are'} {mix}." if found else
        f"the colors present are {join(sorted({o.colour for o in v.objs}))}.")
    concl = (f"Yes, {join([v.label(o) for o in found])} {'is' if len(found) == 1 else 'are'} {mix}." if found else
             f"No, none of the {v.npl} is {mix}.")
    return Reasoning("mix", q, steps, concl, _yes(bool(found)), {"op": "mix", "ask": "find", "a": v.at(a), "b": v.at(b)})


COMMON_WORDING = ["What do the {X} and the {Y} have in common?", "What do the {X} and the {Y} share?",
                  "In what ways are the {X} and the {Y} alike?"]
COMMON_GROUP_WORDING = ["What do all the {S} have in common?", "What do the {S} share?",
                        "What is the same about all the {S}?"]


def _traits(objs: list[Obj], skip: set[str]) -> tuple[list[str], list[str]]:
    """(what all of `objs` share, what was compared): colour, kind, number of corners, the left/right and the
    top/bottom half (only when every object is clearly in one); the attributes in `skip` (those the question
    names) are left out."""
    shared, compared = [], []
    if "colour" not in skip and all(o.colour for o in objs):
        compared.append("color")
        if len({o.colour for o in objs}) == 1:
            shared.append(f"{objs[0].colour}")
    if "kind" not in skip:
        compared.append("shape")
        if len({o.kind for o in objs}) == 1:
            shared.append(plural(objs[0].kind))
    if all(o.kind in CORNERS for o in objs) and len({o.kind for o in objs}) > 1:
        compared.append("number of corners")
        if len({CORNERS[o.kind] for o in objs}) == 1:
            shared.append(f"shapes with {_n(CORNERS[objs[0].kind])} corners")
    for h in ("left", "top"):
        sides = [in_half(o, h) for o in objs]
        if h not in skip and None not in sides:
            compared.append("half of the image")
            if len(set(sides)) == 1:
                shared.append(HALF_STATE[h if sides[0] else OPPOSITE[h]])
    return shared, list(dict.fromkeys(compared))


def _trait_steps(v: View, objs: list[Obj]) -> str:
    def one(o: Obj) -> str:
        facts = ([o.colour] if o.colour else []) + [with_article(o.kind)]
        if o.kind in CORNERS:
            facts.append(f"{'no' if CORNERS[o.kind] == 0 else _n(CORNERS[o.kind])} corners")
        halves = [HALF_STATE[h if t else OPPOSITE[h]] for h in ("left", "top") if (t := in_half(o, h)) is not None]
        facts.append(" and ".join(halves) if halves else "near the middle")
        return f"{v.label(o)}: {', '.join(facts)}"
    return cap("; ".join(one(o) for o in objs)) + "."


COMMON_WORDING = ["What do the {X} and the {Y} have in common?", "What do the {X} and the {Y} share?",
                  "In what ways are the {X} and the {Y} alike?"]
COMMON_GROUP_WORDING = ["What do all the {S} have in common?", "What do the {S} share?",
                        "What is the same about all the {S}?"]


def op_common(v: View, rng: random.Random) -> Reasoning | None:
    """Knowledge and scene: what two named objects, or all members of a group, have in common (only what the
    question does not already say)."""
    if rng.random() < 0.5:
        named = v.referable()
        if len(named) < 2:
            return None
        a, b = rng.sample(named, 2)
        objs, X, Y = [a, b], v.refer(a), v.refer(b)
        q = v.say(rng.choice(COMMON_WORDING), X=X, Y=Y)
        skip = {"kind"} | ({"colour"} if X != a.kind or Y != b.kind else set())
        spec, them = {"op": "common", "objects": [v.at(a), v.at(b)]}, "both"
    else:
        g = pick_group(v, rng, absent=0.0, narrow=True)
        objs = members(v, g) or []
        if len(objs) < 2:
            return None
        q = v.say(rng.choice(COMMON_GROUP_WORDING), S=words(v, g, rng).np)
        skip = {x for x, named in (("colour", g.colour), ("kind", g.kind), ("left", g.half in ("left", "right")),
                                   ("top", g.half in ("top", "bottom"))) if named}
        spec, them = {"op": "common", "objects": [v.at(o) for o in objs], "group": v.spec(g)}, "all"
    shared, compared = _traits(objs, skip)
    if len(compared) < 2:  # too little to compare for an answer worth asking
        return None
    if shared:
        concl = f"So they are {them} {join(shared)}."
    else:
        concl = f"So they have no {join(compared).replace(' and ', ' or ')} in common."
    return Reasoning("common", q, _trait_steps(v, objs), concl, "; ".join(shared) or "nothing",
                     {**spec, "skip": sorted(skip), "shared": shared, "compared": compared})


# ----------------------------------------------------------------------------- hypotheticals

REMOVE_ONE = ["If the {X} were removed,", "If the {X} were taken away,", "Suppose the {X} were removed.",
              "Imagine the {X} is no longer there."]
REMOVE_COLOUR = ["If you removed all the {c} {npl},", "Suppose every {c} {n} were taken away.",
                 "If all the {c} {npl} disappeared,"]
REMOVE_KIND = ["If all the {kpl} were removed,", "Suppose the {kpl} were taken out of the image.",
               "Imagine there were no {kpl}."]
ADD_WORDING = ["If {X} were added,", "If someone added {X},", "Suppose {X} were added to the image.",
               "Imagine adding {X} to the drawing."]
MOVE_WORDING = ["If the {X} were moved to the {edge},", "If the {X} slid all the way to the {edge},",
                "Suppose the {X} were moved to the {edge}.", "Imagine the {X} pushed against the {edge}."]
EDGES = {"left": ["far left", "left edge"], "right": ["far right", "right edge"], "top": ["very top", "top edge"],
         "bottom": ["very bottom", "bottom edge"]}


def _then(v: View, rng: random.Random, clauses: list[str], inner: Reasoning, **fields) -> str:
    """The change, then the question: "If the star were removed," + "How many ...?" -> "If the star were
    removed, how many ...?"; a question that opens with a clause of its own ("Of the shapes, which ...")
    follows a sentence instead ("Suppose the star were removed. Of the shapes, which ...")."""
    q = inner.question
    if "," in q:
        clauses = [c for c in clauses if c.endswith(".")]
    clause = v.say(rng.choice(clauses), **fields)
    return f"{clause} {q[:1].lower() + q[1:]}" if clause.endswith(",") else f"{clause} {q}"


def _ask_again(v: View, rng: random.Random, objs: list[Obj], inner_ops: tuple, change: str, about: list[Obj],
               gone: str | None = None, placed: bool = True, index: dict[int, int] | None = None, tries: int = 3
               ) -> Reasoning | None:
    """A question about `objs` (the changed scene) in the conditional, where a few draws find one that bears
    on the change: it names the colour or kind of something changed (`about`), or no colour or kind at all;
    after all of a colour or kind (`gone`) is removed, any question that does not ask about that one."""
    if not objs:
        return None
    nv = View(v.scene, objs, would=True, placed=placed, change=change, index=index or v.index)
    touched = {o.kind for o in about} | {o.colour for o in about if o.colour}
    for _ in range(tries):
        r = rng.choice(inner_ops)(nv, rng)
        if r is not None:
            named = v.scene.mentions(r.question)
            if (gone not in named) if gone else (not named or named & touched):
                return r
    return None


def op_remove(v: View, rng: random.Random) -> Reasoning | None:
    """Hypothetical: without one object, or all of a colour or a kind, ask again."""
    s = v.scene
    colours = sorted({o.colour for o in v.objs if o.colour}) if s.coloured else []
    kinds = [k for k in sorted({o.kind for o in v.objs}) if sum(o.kind == k for o in v.objs) > 1]
    ways = (["object"] if v.referable() else []) + (["colour"] if len(colours) > 1 else []) + \
        (["kind"] if kinds else [])
    if not ways:
        return None
    way = rng.choice(ways)
    if way == "object":
        x = rng.choice(v.referable())
        gone, target = [x], {"object": v.at(x)}
        clauses, fields = REMOVE_ONE, {"X": v.refer(x)}
        change = f"Without {v.label(x)}, the image would show {{rest}}."
    elif way == "colour":
        c = rng.choice(colours)
        gone, target = [o for o in v.objs if o.colour == c], {"colour": c}
        clauses, fields = REMOVE_COLOUR, {"c": c, "n": v.noun, "npl": v.npl}
        change = (f"Right now there {'is' if len(v.objs) == 1 else 'are'} {count_phrase(len(v.objs), v.noun)}: "
                  f"{join(groups_of(v.objs))}. {cap(count_phrase(len(gone), f'{c} {v.noun}'))} would go "
                  f"({join(groups_of(gone))}), leaving {{rest}}.")
    else:
        k = rng.choice(kinds)
        gone, target = [o for o in v.objs if o.kind == k], {"kind": k}
        clauses, fields = REMOVE_KIND, {"kpl": plural(k)}
        change = f"Taking away the {count_phrase(len(gone), k)} would leave {{rest}}."
    rest = [o for o in v.objs if all(o is not g for g in gone)]
    inner = _ask_again(v, rng, rest, (op_count, op_exists, op_compare, op_difference, op_total, op_extreme,
                                      op_distinct, op_corners, op_quantifier, op_ratio), "remove", gone,
                       gone=target.get("colour") or target.get("kind"))
    if inner is None:
        return None
    steps = change.format(rest=join(groups_of(rest))) + " " + inner.steps
    return Reasoning("remove", _then(v, rng, clauses, inner, **fields), steps, inner.conclusion, inner.answer,
                     {"op": "remove", "target": target, "inner": inner.spec})


def op_add(v: View, rng: random.Random) -> Reasoning | None:
    """Hypothetical: with one to three more objects of a colour and kind (no place), ask again."""
    s = v.scene
    kind = rng.choice(s.kinds_vocab or sorted({o.kind for o in v.objs}))
    colour = rng.choice(s.colours_vocab) if s.coloured and s.colours_vocab else None
    n = rng.choice((1, 1, 2, 3))
    new = [Obj(colour, kind, None) for _ in range(n)]
    name = new[0].name
    X = with_article(name) if n == 1 else count_phrase(n, name)
    inner = _ask_again(v, rng, v.objs + new, (op_count, op_compare, op_difference, op_total, op_distinct,
                                              op_corners, op_ratio, op_quantifier), "add", new, placed=False)
    if inner is None:
        return None
    steps = (f"Right now the image shows {join(groups_of(v.objs))}. Adding {X} would give "
             f"{join(groups_of(v.objs + new))}. {inner.steps}")
    return Reasoning("add", _then(v, rng, ADD_WORDING, inner, X=X), steps, inner.conclusion, inner.answer,
                     {"op": "add", "colour": colour, "kind": kind, "n": n, "inner": inner.spec})


def op_move(v: View, rng: random.Random) -> Reasoning | None:
    """Hypothetical: with one object pushed against an edge of the image, ask again about positions."""
    named = v.referable()
    if not named or len(v.objs) < 2:
        return None
    x = rng.choice(named)
    to = rng.choice(sorted(EDGES))
    b = x.box
    dx = {"left": -b[0], "right": 1 - b[2]}.get(to, 0.0)
    dy = {"top": -b[1], "bottom": 1 - b[3]}.get(to, 0.0)
    if abs(dx) + abs(dy) < REL_MARGIN:
        return None
    moved = Obj(x.colour, x.kind, (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy))
    objs = [moved if o is x else o for o in v.objs]
    index = {**v.index, id(moved): v.at(x)}
    inner = _ask_again(v, rng, objs, (op_count, op_exists, op_extreme), "move", [x], index=index)
    if inner is None:
        return None
    edge = rng.choice(EDGES[to])
    steps = (f"{cap(v.label(x))} is now {region_phrase(x.cx, x.cy)}; against the {to} edge it would be "
             f"{region_phrase(moved.cx, moved.cy)}. {inner.steps}")
    return Reasoning("move", _then(v, rng, MOVE_WORDING, inner, X=v.refer(x), edge=edge), steps, inner.conclusion, inner.answer,
                     {"op": "move", "object": v.at(x), "to": to, "inner": inner.spec})


# ----------------------------------------------------------------------------- the space

OPERATIONS: dict[str, Callable[[View, random.Random], Reasoning | None]] = {
    "count": op_count, "exists": op_exists, "compare": op_compare, "difference": op_difference, "total": op_total,
    "ratio": op_ratio, "quantifier": op_quantifier, "extreme": op_extreme, "distinct": op_distinct,
    "remove": op_remove, "add": op_add, "move": op_move,
    "corners": op_corners, "roll": op_roll, "symmetry": op_symmetry, "mix": op_mix, "common": op_common,
}
"""Every operation by name: plain operations, hypotheticals, background knowledge."""
KNOWLEDGE = ("corners", "roll", "symmetry", "mix", "common")
HYPOTHETICAL = ("remove", "add", "move")


def balanced(op: Callable[[View, random.Random], Reasoning | None], v: View, rng: random.Random, tries: int = 6
             ) -> Reasoning | None:
    """One question of `op`: a few drawn, then an answer chosen uniformly among theirs, then a question with it."""
    found: list[Reasoning] = []
    for _ in range(tries):
        r = op(v, rng)
        if r is not None and all(r.question != f.question for f in found):
            found.append(r)
    if not found:
        return None
    want = rng.choice(sorted({r.answer for r in found}))
    return rng.choice([r for r in found if r.answer == want])


def make_reasoning(scene: Scene, rng: random.Random, ops: list[str] | tuple[str, ...] | None = None
                   ) -> Reasoning | None:
    """A reasoning question about `scene`: the operations (`ops`, default all of `OPERATIONS`) are tried in a
    random order, and the first that the scene allows gives the question; None if none does."""
    if not scene.objs:
        return None
    names = list(ops or OPERATIONS)
    rng.shuffle(names)
    v = View(scene)
    for name in names:
        r = balanced(OPERATIONS[name], v, rng)
        if r is not None:
            return r
    return None


def order_answer(steps: str, conclusion: str, answer_first: bool = False) -> str:
    """A reasoning answer: the steps, then the conclusion (reasoning first, the default); or answer first:
    the conclusion (without its leading "So"), then the steps that support it."""
    if not answer_first:
        return f"{steps} {conclusion}"
    if conclusion.startswith("So "):
        conclusion = cap(conclusion[3:])
    return f"{conclusion} {steps}"
