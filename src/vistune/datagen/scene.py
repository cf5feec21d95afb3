"""One image's objects as the symbolic teacher sees them: labelled boxes from an `ImageContext`, with the
referring and counting helpers its generators share (`vistune.datagen.symbolic` for the paper's three kinds
of records, `vistune.datagen.reasoning` for the reasoning questions)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vistune.data.annotations import ImageContext
from vistune.data.world import (
    SHAPES,
    count_phrase,
    name_of,
    parse_label,
    plural,
    refer,
    with_article,
)


@dataclass
class Obj:
    colour: str | None
    kind: str
    box: tuple[float, float, float, float] | None
    """Normalised [x1, y1, x2, y2]; None for an object a hypothetical adds, which has no place."""

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def w(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def h(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def name(self) -> str:
        return name_of(self)


def groups_of(objs: Iterable[Obj]) -> list[str]:
    """"two red stars", "a blue circle" ... in first-seen order."""
    c: Counter = Counter(o.name for o in objs)
    return [(with_article(n) if k == 1 else count_phrase(k, n)) for n, k in c.items()]


class Scene:
    """One image's objects plus the referring and counting helpers every generator uses."""

    def __init__(self, ctx: ImageContext, kinds_vocab: Sequence[str], colours_vocab: Sequence[str]):
        self.ctx = ctx
        self.objs = [Obj(*parse_label(i.category), tuple(i.bbox)) for i in ctx.instances]
        self.kinds_vocab = list(kinds_vocab)
        self.colours_vocab = list(colours_vocab)
        self.noun = "shape" if self.objs and all(o.kind in SHAPES for o in self.objs) else "object"
        self.coloured = bool(self.objs) and all(o.colour for o in self.objs)
        self.background = _background_from_captions(ctx.captions)

    def count_kind(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.objs)

    def count_colour(self, colour: str) -> int:
        return sum(o.colour == colour for o in self.objs)

    def refer(self, o: Obj) -> str | None:
        """A phrase that picks out `o` alone: its kind, else colour + kind, else None."""
        return refer(self.objs, o)

    def mentions(self, text: str) -> set[str]:
        """The vocabulary's colours and kinds (singular or plural) that `text` names."""
        words = set(re.findall(r"[a-z]+", text.lower()))
        found = {c for c in self.colours_vocab if set(c.split()) <= words}
        found |= {k for k in self.kinds_vocab if set(k.split()) <= words or set(plural(k).split()) <= words}
        return found

    def groups(self) -> list[str]:
        """"two red stars", "a blue circle" ... in first-seen order."""
        return groups_of(self.objs)


_BG = re.compile(r"\bon (?:a|an) ([a-z][a-z -]*?) background\b", re.IGNORECASE)


def _background_from_captions(captions: Iterable[str]) -> str | None:
    for c in captions:
        m = _BG.search(c)
        if m:
            return m.group(1).lower()
    return None
