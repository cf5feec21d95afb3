"""The synthetic world's rules, in one place: its vocabulary, the phrasing helpers, which questions
have one definite answer, and the two wordings those questions are asked in.

- Vocabulary: `SHAPES` (and their plurals), `COLOURS` (name -> RGB), `NUMBER_WORDS`.
- Phrasing helpers: `number_word`, `article`, `with_article`, `join`, `cap`, `plural`, `count_phrase`,
  `size_word`, `region_words`, `region_phrase`, `parse_label`.
- Question families: `question_facts(objects, kinds, colours, noun)` lists every question a scene
  answers definitely, as `Fact`s (family, form, template slots, one-word answer). The six
  `QUESTION_TYPES` are the short-answer families the benchmark scores; `where` and `list` are
  long-answer families the teacher also asks.
- Wordings: `TEACHER_WORDING` is how the symbolic teacher asks each (family, form) in training data;
  `HELDOUT_WORDING` asks the same questions in templates the teacher never uses, so the benchmark
  (`bench.jsonl`) measures whether a model generalises beyond memorised templates. Both wordings of
  a question have the same answer words. `uses_heldout_wording(question)` tells whether any question
  (the teacher's reasoning questions too) borrows the held-out wording.

Rules for a definite question: colour of a kind only when exactly one object has that kind; the kind
of "the <colour> object" only when exactly one object has that colour; counts of every kind and
colour of the vocabulary (zero included) and of all objects; existence of a kind, and of a colour +
kind when the kind is present (a hard negative when it is there in another colour); absolute
left/right (top/bottom) only when the centre is at least `ABS_MARGIN` from the midline; relative
left/right (above/below) only when centres differ by at least `REL_MARGIN` along that axis; an
object is named only by a phrase that picks it out alone (`refer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

# ----------------------------------------------------------------------------- vocabulary

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross", "diamond")

#: Object colours: clearly distinct, named, all readable on the synthetic world's mid-tone backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 135, 15),
    "yellow": (250, 225, 25),
    "green": (30, 165, 60),
    "blue": (30, 75, 225),
    "purple": (135, 45, 180),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}

#: The fixed instruction that ends every bench question (and the training short-answer turns).
SHORT_ANSWER_INSTRUCTION = "Answer with a single word or number."

#: The short-answer question families, in report order.
QUESTION_TYPES = ("colour", "shape", "count", "existence", "absolute_position", "relative_position")
#: Every family the teacher asks: the short-answer ones plus two with only long answers.
FAMILIES = QUESTION_TYPES + ("where", "list")

#: Absolute position questions ("left or right half?") are asked only when the object's centre is
#: at least this far (fraction of the image side) from the midline.
ABS_MARGIN = 0.10
#: Relative position questions are asked only when the two centres differ by at least this much
#: along the asked axis.
REL_MARGIN = 0.15

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty")

# ----------------------------------------------------------------------------- phrasing helpers

_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
              "sheep": "sheep", "skis": "skis", "scissors": "scissors", "glasses": "glasses", "fish": "fish",
              "knife": "knives", "shelf": "shelves", "leaf": "leaves", "foot": "feet", "tooth": "teeth"}


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """"red star" -> "a red star"."""
    return f"{article(phrase)} {phrase}"


def join(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def plural(noun: str) -> str:
    """Simple English plural of the last word of `noun`."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


SHAPE_PLURALS = {s: plural(s) for s in SHAPES}


def count_phrase(n: int, singular: str) -> str:
    """(2, "red star") -> "two red stars"."""
    return f"{number_word(n)} {singular if n == 1 else plural(singular)}"


def size_word(w: float, h: float) -> str:
    """Size class from a normalised box's longest side."""
    side = max(w, h)
    return "small" if side < 0.2 else ("medium-sized" if side < 0.33 else "large")


def region_words(cx: float, cy: float) -> str:
    """3x3 region of a normalised centre: "top left", "top", "center", "bottom right", ..."""
    v = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    h = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    return " ".join(p for p in (v, h) if p) or "center"


def region_phrase(cx: float, cy: float) -> str:
    r = region_words(cx, cy)
    if r == "center":
        return "in the center"
    if " " in r:
        return f"in the {r} corner"
    return {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right"}[r]


def near_region_border(v: float, margin: float = 0.05) -> bool:
    """Whether a normalised coordinate is too close to a 3x3 region border to name its region."""
    return any(abs(v - t) < margin for t in (1 / 3, 2 / 3))


def parse_label(label: str) -> tuple[str | None, str]:
    """"red star" -> ("red", "star"); "person" -> (None, "person")."""
    words = label.strip().split()
    if len(words) >= 2 and words[0].lower() in COLOURS:
        return words[0].lower(), " ".join(words[1:])
    return None, label.strip()


# ----------------------------------------------------------------------------- question families


class Placed(Protocol):
    """An object as the question rules see it: its colour (None if it has none), its kind, and its
    box centre as fractions of the image side (y grows downwards)."""

    colour: str | None
    kind: str
    cx: float
    cy: float


@dataclass(frozen=True)
class WorldObject:
    """A plain `Placed` object."""

    colour: str | None
    """Colour name, or None for an uncoloured label such as "person"."""
    kind: str
    """Kind ("star", "person")."""
    cx: float
    """Box centre x, fraction of the image width."""
    cy: float
    """Box centre y, fraction of the image height."""


def name_of(o: Placed) -> str:
    return f"{o.colour} {o.kind}" if o.colour else o.kind


def refer(objs: Sequence[Placed], o: Placed) -> str | None:
    """A phrase that picks out `o` alone: its kind, else colour + kind, else None."""
    if sum(p.kind == o.kind for p in objs) == 1:
        return o.kind
    if o.colour and sum(p.kind == o.kind and p.colour == o.colour for p in objs) == 1:
        return name_of(o)
    return None


@dataclass(frozen=True)
class Fact:
    """One question the scene answers definitely, before it is worded."""

    family: str
    """One of `FAMILIES`."""
    form: str
    """Which question of the family: e.g. count "kind" / "colour" / "all", position "horizontal" / "vertical"."""
    answer: str | None
    """The one-word (or number) answer; None when the question has no one-word answer."""
    slots: dict = field(default_factory=dict, hash=False, compare=False)
    """What a wording's template fills in: r, r2 (referring phrases), c (colour), k (kind), n (the scene's
    noun), pl (plural kind), npl (plural noun), a (kind or colour + kind with its article)."""
    subject: object = field(default=None, hash=False, compare=False, repr=False)
    """The object the question is about (positions, colour), else None."""
    other: object = field(default=None, hash=False, compare=False, repr=False)
    """The second object of a relative position, else None."""

    @property
    def key(self) -> tuple:
        """A stable sort key: family, form, then the template slots."""
        return (self.family, self.form, tuple(sorted(self.slots.items())))


def question_facts(objs: Sequence[Placed], kinds: Sequence[str], colours: Sequence[str],
                   noun: str = "shape") -> list[Fact]:
    """Every definite question about `objs`, in a fixed order (see the module docstring for the rules).

    `kinds` and `colours` are the vocabulary that count and existence questions may ask about (absent
    ones too); colour-based questions are asked only when every object has a colour."""
    facts: list[Fact] = []
    npl = plural(noun)
    coloured = bool(objs) and all(o.colour for o in objs)
    for o in objs:
        r = refer(objs, o)
        if r is not None and o.colour and r == o.kind:
            facts.append(Fact("colour", "colour", o.colour, {"r": r}, subject=o))
    for c in colours:
        same = [o for o in objs if o.colour == c]
        if len(same) == 1:
            k = same[0].kind
            facts.append(Fact("shape", noun, k if " " not in k else None, {"c": c, "n": noun, "k": k},
                              subject=same[0]))
    for k in kinds:
        facts.append(Fact("count", "kind", str(sum(o.kind == k for o in objs)), {"k": k, "pl": plural(k)}))
    if coloured:
        for c in colours:
            facts.append(Fact("count", "colour", str(sum(o.colour == c for o in objs)),
                              {"c": c, "n": noun, "npl": npl}))
    if objs:
        facts.append(Fact("count", "all", str(len(objs)), {"n": noun, "npl": npl}))
    present_kinds = {o.kind for o in objs}
    for k in kinds:
        facts.append(Fact("existence", "kind", "yes" if k in present_kinds else "no",
                          {"k": k, "a": with_article(k)}))
        if coloured and k in present_kinds:
            have = {o.colour for o in objs if o.kind == k}
            for c in colours:
                facts.append(Fact("existence", "colour_kind", "yes" if c in have else "no",
                                  {"c": c, "k": k, "a": with_article(f"{c} {k}")}))
    for o in objs:
        r = refer(objs, o)
        if r is None:
            continue
        if abs(o.cx - 0.5) >= ABS_MARGIN:
            facts.append(Fact("absolute_position", "horizontal", "left" if o.cx < 0.5 else "right", {"r": r},
                              subject=o))
        if abs(o.cy - 0.5) >= ABS_MARGIN:
            facts.append(Fact("absolute_position", "vertical", "top" if o.cy < 0.5 else "bottom", {"r": r},
                              subject=o))
        if not (near_region_border(o.cx) or near_region_border(o.cy)):
            facts.append(Fact("where", "region", None, {"r": r}, subject=o))
        for p in objs:
            r2 = refer(objs, p)
            if p is o or r2 is None:
                continue
            if abs(o.cx - p.cx) >= REL_MARGIN:
                facts.append(Fact("relative_position", "horizontal", "left" if o.cx < p.cx else "right",
                                  {"r": r, "r2": r2}, subject=o, other=p))
            if abs(o.cy - p.cy) >= REL_MARGIN:
                facts.append(Fact("relative_position", "vertical", "above" if o.cy < p.cy else "below",
                                  {"r": r, "r2": r2}, subject=o, other=p))
    if objs:
        facts.append(Fact("list", "all", None, {"npl": npl}))
    return facts


# ----------------------------------------------------------------------------- wordings

#: The teacher's training wording: templates per (family, form).
TEACHER_WORDING: dict[tuple[str, str], list[str]] = {
    ("colour", "colour"): ["What color is the {r}?", "What is the color of the {r}?",
                           "Which color does the {r} have?", "Can you tell me the color of the {r}?",
                           "What colour is the {r}?"],
    ("shape", "shape"): ["What shape is the {c} {n}?", "Which shape is {c}?", "What kind of shape is the {c} one?",
                         "What is the {c} {n}?", "Which {n} is {c}?"],
    ("shape", "object"): ["What is the {c} object?", "What kind of object is {c}?"],
    ("count", "kind"): ["How many {pl} are there?", "How many {pl} can you see?", "How many {pl} are in the picture?",
                        "Count the {pl} in the image.", "What is the number of {pl} in the image?"],
    ("count", "colour"): ["How many {c} {npl} are there?", "How many {c} {npl} can you see?",
                          "How many {npl} are {c}?", "Count the {c} {npl}."],
    ("count", "all"): ["How many {npl} are there in total?", "How many {npl} can you see in the image?",
                       "How many {npl} does the image contain?", "What is the total number of {npl}?"],
    ("existence", "kind"): ["Is there {a} in the image?", "Can you see {a}?", "Does the picture show {a}?",
                            "Is {a} present in the image?"],
    ("existence", "colour_kind"): ["Is there {a} in the picture?", "Does the image contain {a}?",
                                   "Can you spot {a}?", "Is there {a} anywhere in the image?"],
    ("absolute_position", "horizontal"): [
        "Is the {r} on the left or the right side of the image?", "Is the {r} on the left or on the right?",
        "Which side of the image is the {r} on, left or right?", "Is the {r} located on the left or the right?"],
    ("absolute_position", "vertical"): [
        "Is the {r} in the top or the bottom half of the image?", "Is the {r} near the top or the bottom?",
        "Is the {r} located at the top or at the bottom of the image?",
        "Which half of the image is the {r} in, top or bottom?"],
    ("relative_position", "horizontal"): [
        "Is the {r} to the left or to the right of the {r2}?", "Is the {r} left or right of the {r2}?",
        "Relative to the {r2}, is the {r} on the left or on the right?"],
    ("relative_position", "vertical"): ["Is the {r} above or below the {r2}?",
                                        "Is the {r} located above or below the {r2}?",
                                        "Relative to the {r2}, is the {r} above or below?"],
    ("where", "region"): ["Where is the {r}?", "Where is the {r} located in the image?",
                          "In which part of the image is the {r}?"],
    ("list", "all"): ["What {npl} can you see in the image?", "Which {npl} are in the picture?",
                      "What does the image show?", "List the {npl} in the image."],
}

#: The benchmark's held-out wording: the same short-answer questions in templates the teacher never uses.
HELDOUT_WORDING: dict[tuple[str, str], list[str]] = {
    ("colour", "colour"): ["Which color has the {r} been painted?", "The {r} in this picture is which color?"],
    ("shape", "shape"): ["Name the shape that is {c}.", "Which form does the {c} {n} take?"],
    ("shape", "object"): ["Name the object that is {c}.", "Which thing in this picture is {c}?"],
    ("count", "kind"): ["How many {pl} appear in this picture?", "Give the number of {pl} shown here."],
    ("count", "colour"): ["How many {npl} in this picture are {c}?", "Give the number of {c} {npl} shown here."],
    ("count", "all"): ["How many {npl} appear in this picture altogether?",
                       "Give the number of {npl} shown here in all."],
    ("existence", "kind"): ["Does {a} appear anywhere in this picture?", "Would I find {a} in this picture?"],
    ("existence", "colour_kind"): ["Is {a} visible in this picture?", "Does this picture include {a}?"],
    ("absolute_position", "horizontal"): ["Which half of this picture holds the {r}, the left or the right?",
                                          "Is the {r} placed toward the left or toward the right?"],
    ("absolute_position", "vertical"): ["Which half of this picture holds the {r}, the top or the bottom?",
                                        "Is the {r} placed toward the top or toward the bottom?"],
    ("relative_position", "horizontal"): ["Seen from the {r2}, is the {r} off to the left or off to the right?",
                                          "Is the {r} placed left of the {r2} or right of it?"],
    ("relative_position", "vertical"): ["Seen from the {r2}, is the {r} above it or below it?",
                                        "Is the {r} placed above the {r2} or below it?"],
}

WORDINGS = {"heldout": HELDOUT_WORDING, "teacher": TEACHER_WORDING}


def word_fact(fact: Fact, wording: str = "heldout") -> str:
    """The question of `fact` in one of `WORDINGS`, the template picked deterministically from its slots."""
    options = WORDINGS[wording][(fact.family, fact.form)]
    key = " ".join(str(v) for _, v in sorted(fact.slots.items()))
    return options[sum(map(ord, key)) % len(options)].format(**fact.slots)


def with_instruction(question: str) -> str:
    """A short-answer question: the question, a newline, `SHORT_ANSWER_INSTRUCTION`."""
    return f"{question}\n{SHORT_ANSWER_INSTRUCTION}"


def _fixed_runs(template: str) -> list[list[str]]:
    """The words of a template between its slots: "Is {a} visible in this picture?" -> [["is"], ["visible", ...]]."""
    return [re.findall(r"[a-z]+", piece.lower()) for piece in re.split(r"\{\w+\}", template)]


def _phrases(templates: Sequence[str]) -> set[str]:
    """Each template's distinctive fixed phrases: a run of exactly three words between slots, and every four
    consecutive words of a longer run."""
    out = set()
    for t in templates:
        for run in _fixed_runs(t):
            n = 3 if len(run) == 3 else 4
            out |= {" ".join(run[i:i + n]) for i in range(len(run) - n + 1)}
    return out


_HELDOUT_TEMPLATES = [t for ts in HELDOUT_WORDING.values() for t in ts]
_TEACHER_TEXT = [f" {' '.join(w for run in _fixed_runs(t) for w in run)} " for ts in TEACHER_WORDING.values()
                 for t in ts]
#: Phrases of the held-out wording that the teacher's wording never uses ("in this picture", "would i find").
HELDOUT_PHRASES = frozenset(p for p in _phrases(_HELDOUT_TEMPLATES) if not any(f" {p} " in t for t in _TEACHER_TEXT))
_HELDOUT_PATTERNS = [re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)), re.IGNORECASE) for t in _HELDOUT_TEMPLATES]


def uses_heldout_wording(question: str) -> bool:
    """Whether `question` is asked in the benchmark's held-out wording: it is a held-out template filled in, or
    it contains one of `HELDOUT_PHRASES`. Training questions must not be (the benchmark would no longer
    measure wording it has not seen)."""
    q = question.replace("<image>", "").replace(SHORT_ANSWER_INSTRUCTION, "").strip()
    if any(p.fullmatch(q) for p in _HELDOUT_PATTERNS):
        return True
    text = f" {' '.join(re.findall(r'[a-z]+', q.lower()))} "
    return any(f" {p} " in text for p in HELDOUT_PHRASES)
