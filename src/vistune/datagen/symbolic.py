"""The symbolic teacher: instruction data computed from captions + boxes, correct by construction.

It sees what a text-only teacher sees (an `ImageContext`: captions and labelled normalised boxes)
and writes the paper's three kinds of records:

- `conversation`: 2-5 turns of questions with definite answers (kinds, counts, colours, absolute
  and relative positions, existence). About half of the turns are short-answer turns: the
  question ends with `SHORT_ANSWER_INSTRUCTION` and the answer is one word or number.
- `detail`: a paragraph describing every object and the background.
- `complex`: a question that needs a few reasoning steps, from the generated space of
  `vistune.datagen.reasoning` (operations over filtered groups, hypotheticals, background knowledge);
  the answer shows the steps, then concludes. A conversation ends with such a question now and then
  (`reasoning_fraction`), as the paper's conversations include reasoning questions.

Beyond the paper's three, `short` writes LLaVA-1.5-style short-answer VQA records: per image, one
single-turn record per question family (colour, shape, count, existence, absolute and relative
position), each with a one-word answer drawn so that every answer the scene allows is equally
likely (a conversation's later turns lean towards absent things, since they may not name what
earlier turns named).

Labels of the form "<colour> <kind>" (the synthetic world's categories, e.g. "red star") give an
object a colour; other labels ("person") have no colour, and colour questions are not asked
about them. Which questions have a definite answer, and the teacher's wording of them, are the
world's rules (`vistune.data.world`), shared with the benchmark (which asks them in held-out wording).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vistune.data.annotations import ImageContext, make_record
from vistune.data.world import (
    COLOURS,
    FAMILIES,
    QUESTION_TYPES,
    REL_MARGIN,
    SHAPES,
    SHORT_ANSWER_INSTRUCTION,
    TEACHER_WORDING,
    Fact,
    cap,
    count_phrase,
    join,
    number_word,
    parse_label,
    plural,
    question_facts,
    region_phrase,
    size_word,
    with_article,
)
from vistune.datagen.reasoning import make_reasoning, order_answer
from vistune.datagen.scene import Scene
from vistune.errors import UserError
from vistune.utils.io import atomic_write_json

TYPES = ("conversation", "detail", "complex", "short")
PAPER_TYPES = TYPES[:3]
SHORT_FAMILIES = QUESTION_TYPES
TEACHER = "symbolic"

# Short local names for the world's phrasing helpers, used throughout the generators below.
_a, _join, _cap, _count_phrase = with_article, join, cap, count_phrase


# ----------------------------------------------------------------------------- conversation items


@dataclass
class QA:
    kind: str          # question family, e.g. "count", "colour"
    question: str      # the question, without any instruction
    long: str          # full-sentence answer
    short: str | None  # one word/number, or None if no short form exists


def _long_answer(s: Scene, f: Fact) -> str:
    """The full-sentence answer to a fact's question."""
    sl = f.slots
    n, npl = s.noun, plural(s.noun)
    if f.family == "colour":
        return f"The {sl['r']} is {f.subject.colour}."
    if f.family == "shape":
        return f"The {sl['c']} {n} is {_a(sl['k'])}."
    if f.family == "count" and f.form == "kind":
        k, m = sl["k"], int(f.answer)
        cols = Counter(o.colour for o in s.objs if o.kind == k)
        if m == 0:
            long = f"There are no {plural(k)} in the image."
        elif len(cols) == 1:
            col = next(iter(cols))
            long = f"There {'is' if m == 1 else 'are'} {_count_phrase(m, f'{col} {k}' if col else k)}."
        else:
            parts = _join([f"{number_word(v)} {c}" for c, v in cols.items()])
            long = f"There are {_count_phrase(m, k)}: {parts}."
        return _cap(long)
    if f.family == "count" and f.form == "colour":
        c, m = sl["c"], int(f.answer)
        return (f"There are no {c} {npl}." if m == 0 else
                f"There {'is' if m == 1 else 'are'} {_count_phrase(m, f'{c} {n}')}.")
    if f.family == "count":
        total = len(s.objs)
        return (f"There {'is' if total == 1 else 'are'} {_count_phrase(total, n)} in total: "
                f"{_join(s.groups())}.")
    if f.family == "existence" and f.form == "kind":
        k = sl["k"]
        if f.answer == "yes":
            m = s.count_kind(k)
            return f"Yes, there {'is' if m == 1 else 'are'} {_count_phrase(m, k)} in the image."
        return f"No, there is no {k} in the image."
    if f.family == "existence":
        c, k = sl["c"], sl["k"]
        if f.answer == "yes":
            return f"Yes, there is {_a(f'{c} {k}')} in the image."
        other = _join(sorted({o.colour for o in s.objs if o.kind == k}))
        its = "it is" if s.count_kind(k) == 1 else "they are"
        return f"No. There is {'a' if s.count_kind(k) == 1 else 'more than one'} {k}, but {its} {other}, not {c}."
    if f.family == "absolute_position":
        if f.form == "horizontal":
            return f"The {sl['r']} is on the {f.answer} side of the image."
        return f"The {sl['r']} is in the {f.answer} half of the image."
    if f.family == "where":
        return f"The {sl['r']} is {region_phrase(f.subject.cx, f.subject.cy)} of the image."
    if f.family == "relative_position":
        if f.form == "horizontal":
            return f"The {sl['r']} is to the {f.answer} of the {sl['r2']}."
        return f"The {sl['r']} is {f.answer} the {sl['r2']}."
    return _cap(f"The image shows {_join(s.groups())}.")  # list


def conversation_items(s: Scene, rng: random.Random) -> dict[str, list[QA]]:
    """Every definite question this scene supports (`vistune.data.world.question_facts`), grouped by
    family, each worded in one of the teacher's templates and given its long and short answers."""
    items: dict[str, list[QA]] = {k: [] for k in FAMILIES}
    for f in question_facts(s.objs, s.kinds_vocab, s.colours_vocab, s.noun):
        question = rng.choice(TEACHER_WORDING[(f.family, f.form)]).format(**f.slots)
        items[f.family].append(QA(f.family, question, _long_answer(s, f), f.answer))
    return items


def _one_answer_only(family: str, pool: list[QA]) -> bool:
    """A yes/no or count family whose questions here all have the same answer: nothing to read off the image."""
    return family in ("existence", "count") and len({q.short for q in pool}) < 2


def _choose(rng: random.Random, qas: list[QA], family: str) -> QA:
    """Pick one item of a family, balancing answers: first a random answer, then an item with it."""
    if family in ("existence", "count", "absolute_position", "relative_position", "colour", "shape"):
        answers = sorted({q.short or "" for q in qas})
        want = rng.choice(answers)
        qas = [q for q in qas if (q.short or "") == want]
    return rng.choice(qas)


AXIS = {"left": "x", "right": "x", "above": "y", "below": "y"}


REASONING_FRACTION = 0.15
"""The share of conversations whose last turn is a reasoning question (`vistune.datagen.reasoning`)."""


def make_conversation(s: Scene, rng: random.Random, short_fraction: float = 0.5, min_turns: int = 2,
                      max_turns: int = 5, reasoning_fraction: float = REASONING_FRACTION,
                      answer_first: bool = False) -> list[dict] | None:
    """A multi-turn conversation in which no answer can be read off the turns before it: a colour or kind
    that an earlier turn named is never the answer, and a yes/no or count question names nothing named before
    ("What colour is the cross? orange" ... "Is there a yellow cross?" is never asked), a thing's region is not
    asked after any of its positions nor its side after its region, and a relative position is asked once per
    axis. Yes/no and count questions are asked only while more than one answer is still open, so answers stay
    balanced.

    With probability `reasoning_fraction` the last of the turns is a reasoning question instead, answered with
    its steps and conclusion (conclusion first with `answer_first`); it comes last because its steps state
    facts that later turns could be read off. With `reasoning_fraction=0` no random draw is spent on it."""
    reasoning = None
    if reasoning_fraction > 0 and rng.random() < reasoning_fraction:
        reasoning = make_reasoning(s, random.Random(rng.random()))
    items = conversation_items(s, rng)
    named: set[str] = set()  # colours and kinds the conversation has named so far
    axes_asked: set[str] = set()
    placed: set[frozenset] = set()  # things with any position stated
    located: set[frozenset] = set()  # things whose region ("top left") was stated
    everything = {o.kind for o in s.objs} | {o.colour for o in s.objs if o.colour}

    def askable(q: QA, short: bool) -> bool:
        if q.question in asked or (short and q.short is None):
            return False
        if q.kind == "relative_position":  # one per axis: "A left of B?" gives away "B left of A?"
            return AXIS.get(q.short or "") not in axes_asked
        if q.kind == "where":  # "top left" gives away "left or right?" and "top or bottom?" of the same thing
            return frozenset(s.mentions(q.question)) not in placed
        if q.kind == "absolute_position":
            return frozenset(s.mentions(q.question)) not in located
        if q.kind in ("colour", "shape"):
            return bool(q.short) and q.short not in named
        return not (s.mentions(q.question) or everything) & named

    def open_pool(family: str, short: bool) -> list[QA]:
        pool = [q for q in items[family] if askable(q, short)]
        if _one_answer_only(family, pool):
            return []
        return pool

    n_turns = rng.randint(min_turns, max_turns) - (reasoning is not None)
    turns: list[dict] = []
    asked: set[str] = set()
    used: list[str] = []
    for _ in range(n_turns):
        # decide the answer style first, so about `short_fraction` of the turns are short-answer turns
        want_short = rng.random() < short_fraction
        fams = [f for f in items if open_pool(f, want_short)]
        if not fams and want_short:
            want_short = False
            fams = [f for f in items if open_pool(f, False)]
        if not fams:
            break
        fam = rng.choice([f for f in fams if f not in used] or fams)
        used.append(fam)
        qa = _choose(rng, open_pool(fam, want_short), fam)
        asked.add(qa.question)
        if want_short:
            q, a = f"{qa.question}\n{SHORT_ANSWER_INSTRUCTION}", qa.short
        else:
            q, a = qa.question, qa.long
        named |= s.mentions(f"{q} {a}")
        if qa.kind == "relative_position":
            axes_asked.add(AXIS.get(qa.short or "", ""))
        elif qa.kind in ("where", "absolute_position"):
            placed.add(frozenset(s.mentions(qa.question)))
            if qa.kind == "where":
                located.add(frozenset(s.mentions(qa.question)))
        if not turns:
            q = "<image>\n" + q
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    if reasoning is not None:
        q = reasoning.question if turns else "<image>\n" + reasoning.question
        turns += [{"from": "human", "value": q},
                  {"from": "gpt", "value": order_answer(reasoning.steps, reasoning.conclusion, answer_first)}]
    return turns or None


def make_short(s: Scene, rng: random.Random) -> list[list[dict]] | None:
    """One single-turn short-answer conversation per question family the scene can answer."""
    items = conversation_items(s, rng)
    out = []
    for family in SHORT_FAMILIES:
        pool = [q for q in items[family] if q.short]
        if pool and not _one_answer_only(family, pool):
            qa = _choose(rng, pool, family)
            out.append([{"from": "human", "value": f"<image>\n{qa.question}\n{SHORT_ANSWER_INSTRUCTION}"},
                        {"from": "gpt", "value": qa.short}])
    return out or None


# ----------------------------------------------------------------------------- detail

P_DETAIL = [
    "Describe the image in detail.",
    "Give a detailed description of this image.",
    "What is in this picture? Please describe it thoroughly.",
    "Describe everything you can see in the image.",
    "Write a detailed account of the scene in the image.",
    "Can you describe this image as completely as possible?",
    "Explain in detail what the image contains.",
    "Provide a thorough description of the picture, including where everything is.",
]


def make_detail(s: Scene, rng: random.Random) -> list[dict] | None:
    if not s.objs:
        return None
    n = s.noun
    total = len(s.objs)
    bg = f" on {_a(s.background)} background" if s.background else ""
    intro = rng.choice([
        f"The image shows {_count_phrase(total, n)}{bg}.",
        f"This picture contains {_count_phrase(total, n)}{bg}.",
        f"In this image there {'is' if total == 1 else 'are'} {_count_phrase(total, n)}{bg}.",
    ])
    sents = [intro]
    objs = sorted(s.objs, key=lambda o: (o.cx, o.cy))
    for i, o in enumerate(objs):
        desc = f"{size_word(o.w, o.h)} {o.name}"
        where = region_phrase(o.cx, o.cy)
        if i == 0:
            # "leftmost" only among several objects: a lone object may well sit on the right
            lead = rng.choice(["Starting from the left, ", "On the far left, ", "The leftmost one is "]
                              if total > 1 else ["", "Here ", "It is "])
            if lead.endswith("is "):
                sents.append(f"{lead}{_a(desc)}, {where} of the image.")
            else:
                sents.append(_cap(f"{lead}there is {_a(desc)} {where} of the image."))
        else:
            prev = objs[i - 1]
            rel = []
            if abs(o.cx - prev.cx) >= REL_MARGIN:
                rel.append("to the right of")
            if abs(o.cy - prev.cy) >= REL_MARGIN:
                rel.append("above" if o.cy < prev.cy else "below")
            prev_ref = s.refer(prev)
            rel_s = f", {' and '.join(rel)} the {prev_ref}" if rel and prev_ref else ""
            sents.append(_cap(rng.choice([f"{_a(desc)} is {where}{rel_s}.",
                                          f"next, {_a(desc)} appears {where}{rel_s}."])))
    for i, o in enumerate(s.objs):
        for p in s.objs[i + 1:]:
            ix = min(o.box[2], p.box[2]) - max(o.box[0], p.box[0])
            iy = min(o.box[3], p.box[3]) - max(o.box[1], p.box[1])
            ro, rp = s.refer(o), s.refer(p)
            if ix > 0 and iy > 0 and ro and rp:
                sents.append(f"The {ro} and the {rp} are very close to each other.")
    if s.coloured and total > 1:
        cols = Counter(o.colour for o in s.objs)
        sents.append("In total there " + ("is " if next(iter(cols.values())) == 1 else "are ")
                     + _join([_count_phrase(k, f"{c} {n}") for c, k in cols.items()]) + ".")
    if s.background:
        sents.append(f"The background is {_a(s.background)} surface with nothing else on it."
                     if s.noun == "shape" else f"The background is {s.background}.")
    q = "<image>\n" + rng.choice(P_DETAIL)
    return [{"from": "human", "value": q}, {"from": "gpt", "value": " ".join(sents)}]


# ----------------------------------------------------------------------------- complex reasoning


def make_complex(s: Scene, rng: random.Random, answer_first: bool = False) -> list[dict] | None:
    """One reasoning question from the generated space (`vistune.datagen.reasoning`), answered with its steps
    and conclusion (conclusion first with `answer_first`)."""
    r = make_reasoning(s, rng)
    if r is None:
        return None
    return [{"from": "human", "value": "<image>\n" + r.question},
            {"from": "gpt", "value": order_answer(r.steps, r.conclusion, answer_first)}]


# ----------------------------------------------------------------------------- driver


def _stem(image: str) -> str:
    p = Path(image)
    return str(p.with_suffix("")).replace("/", "_").replace("\\", "_")


def vocabulary(contexts: Sequence[ImageContext], kinds: Sequence[str] | None = None,
               colours: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The kinds and colours count and existence questions may ask about (absent ones too): the given ones, else
    the synthetic world's (all shapes and colours) when every label is a "<colour> <shape>", else those seen."""
    labels = [parse_label(i.category) for c in contexts for i in c.instances]
    synthetic = bool(labels) and all(col is not None and k in SHAPES for col, k in labels)
    if kinds is None:
        kinds = list(SHAPES) if synthetic else sorted({k for _, k in labels})
    if colours is None:
        colours = list(COLOURS) if synthetic else [c for c in COLOURS if any(col == c for col, _ in labels)]
    return list(kinds), list(colours)


def generate_symbolic(contexts: Sequence[ImageContext], types: Sequence[str] = PAPER_TYPES, seed: int = 0,
                      short_fraction: float = 0.5, min_turns: int = 2, max_turns: int = 5,
                      skips: Counter | None = None, kinds: Sequence[str] | None = None,
                      colours: Sequence[str] | None = None, answer_first: bool = False,
                      reasoning_fraction: float = REASONING_FRACTION) -> list[dict]:
    """LLaVA records for `contexts`; `answer_first` writes the reasoning answers (complex records and the
    conversations' reasoning turns) conclusion first (the paper's answer-first ablation; the same questions
    and facts either way); `reasoning_fraction` of the conversations end with a reasoning question.

    Each (image, type) draws from its own generator seeded by (seed, type, image), so a record
    depends only on its image, the seed and the vocabulary: the object kinds and colours that
    count/existence questions may ask about (also absent ones). By default the vocabulary is the
    synthetic world's (all shapes and colours) when every label is a "<colour> <shape>", else the
    kinds and colours seen across `contexts`. Images for which a kind has no definite content
    (e.g. no boxes) are counted in `skips` as `no_<type>`."""
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise ValueError(f"unknown types {unknown}; choose from {list(TYPES)}")
    if not 1 <= min_turns <= max_turns:
        raise ValueError("need 1 <= min_turns <= max_turns")
    kinds, colours = vocabulary(contexts, kinds, colours)
    skips = skips if skips is not None else Counter()
    if not 0 <= reasoning_fraction <= 1:
        raise ValueError("need 0 <= reasoning_fraction <= 1")
    makers = {"conversation": lambda sc, r: make_conversation(sc, r, short_fraction, min_turns, max_turns,
                                                              reasoning_fraction, answer_first),
              "detail": make_detail, "complex": lambda sc, r: make_complex(sc, r, answer_first), "short": make_short}
    records, seen = [], Counter()
    for ctx in contexts:
        scene = Scene(ctx, kinds, colours)
        stem = _stem(ctx.image)
        seen[stem] += 1
        if seen[stem] > 1:
            stem = f"{stem}~{seen[stem] - 1}"
        for t in types:
            rng = random.Random(f"{seed}:{t}:{stem}")
            conv = makers[t](scene, rng)
            if conv is None:
                skips[f"no_{t}"] += 1
                continue
            for k, one in enumerate(conv if t == "short" else [conv]):
                records.append(make_record(f"{stem}-{t}-{k}", ctx.image, one, t, TEACHER))
    return records


def write_symbolic(contexts: list[ImageContext], types: list[str], out: str | Path, seed: int = 0
                   ) -> tuple[Counter, Counter]:
    """`vistune generate --teacher symbolic`: write the records of `types` for `contexts` to `out` (one JSON
    list, written atomically). Returns (records per type, generation skips by reason)."""
    bad = [t for t in types if t not in TYPES]
    if not types or bad:
        raise UserError(f"--types must list some of {','.join(TYPES)} (got {','.join(types) or 'nothing'})")
    skips: Counter = Counter()
    records = generate_symbolic(contexts, types, seed=seed, skips=skips)
    atomic_write_json(out, records)
    return Counter(r["metadata"]["type"] for r in records), skips


def balanced_short_conversations(contexts: Sequence[ImageContext], seed: int = 0,
                                 kinds: Sequence[str] | None = None, colours: Sequence[str] | None = None,
                                 instruction_every_turn: bool = False) -> list[dict]:
    """One conversation per image of short-answer turns, one per question type (`QUESTION_TYPES`) the scene
    can answer, in the teacher's wording and a seeded order. The answers are balanced over all images, within
    each type and each question form (the rule of `vistune.data.synth.select_balanced`), so no answer is
    predictable from the question alone. The short-answer instruction ends the first question (and every
    question with `instruction_every_turn`); the image precedes the first question."""
    from vistune.data.synth import select_balanced

    kinds, colours = vocabulary(contexts, kinds, colours)
    candidates = []
    for ctx in contexts:
        scene = Scene(ctx, kinds, colours)
        by_type: dict[str, list] = {t: [] for t in QUESTION_TYPES}
        for f in question_facts(scene.objs, scene.kinds_vocab, scene.colours_vocab, scene.noun):
            if f.family in by_type and f.answer is not None:
                by_type[f.family].append(f)
        candidates.append((ctx.image, by_type))
    questions: dict[str, list[dict]] = {}
    for q in select_balanced(candidates, seed):
        questions.setdefault(q["image"], []).append(q)
    records = []
    for image, qs in questions.items():
        random.Random(f"{seed}:balanced:{image}").shuffle(qs)
        turns = []
        for k, q in enumerate(qs):
            text = q["question_teacher"]
            if k and not instruction_every_turn:
                text = text.removesuffix(f"\n{SHORT_ANSWER_INSTRUCTION}")
            turns += [{"from": "human", "value": f"<image>\n{text}" if k == 0 else text},
                      {"from": "gpt", "value": q["answer"]}]
        records.append(make_record(f"{_stem(image)}-balanced", image, turns, "short", TEACHER,
                                   question_types=[q["type"] for q in qs]))
    return records
