"""A synthetic visual world: coloured shapes on varied backgrounds, with COCO-format annotations.

`render_world(out, n_images, seed)` writes

- `out/images/NNNNNN.png`         the scenes (RGB PNG, `image_size` px square)
- `out/captions.json`             COCO captions (>= 5 captions per image, different perspectives)
- `out/instances.json`            COCO instances: one category per (colour, shape) pair, named
                                  "red star" with supercategory "star"; boxes `[x, y, w, h]` px;
                                  polygon segmentation; area = polygon area
- `out/bench.jsonl`               exact-answer questions `{id, image, question, answer, type}` in
                                  held-out wording (templates the symbolic teacher never uses)
- `out/bench_in_distribution.jsonl`  the same questions (ids, answers) in the teacher's wording

Every question in the bench has exactly one correct one-word answer (the rules and both wordings
live in `vistune.data.world`), ends with `SHORT_ANSWER_INSTRUCTION`, and answers are balanced within
each type. The same seed gives byte-identical files; each image draws from its own generator seeded by
`(seed, index)`.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vistune.data.world import (
    COLOURS,
    QUESTION_TYPES,
    REL_MARGIN,
    SHAPE_PLURALS,
    SHAPES,
    SHORT_ANSWER_INSTRUCTION,
    Fact,
    WorldObject,
    article,
    number_word,
    question_facts,
    region_phrase,
    size_word,
    with_instruction,
    word_fact,
)
from vistune.data.world import (
    cap as _cap,
)
from vistune.data.world import (
    join as _join,
)
from vistune.utils.io import atomic_path, atomic_write_json, atomic_write_jsonl

__all__ = ["SHORT_ANSWER_INSTRUCTION", "BENCH_TYPES", "render_world", "bench_candidates", "select_balanced"]

# ----------------------------------------------------------------------------- vocabulary

#: Background colours: low saturation, mid luminance, so every object colour stands out.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (185, 185, 185),
    "gray": (140, 140, 140),
    "beige": (200, 188, 160),
    "pale blue": (165, 185, 205),
    "pale green": (170, 195, 165),
    "lavender": (190, 180, 205),
    "slate gray": (115, 128, 140),
    "sand": (195, 175, 140),
}
BACKGROUND_KINDS = ("plain", "gradient", "speckled", "mottled")

#: The benchmark's question types (the world's short-answer question families).
BENCH_TYPES = QUESTION_TYPES
#: The benchmark in held-out wording (templates the teacher never uses): the primary measure.
BENCH_FILE = "bench.jsonl"
#: The same questions (same ids and answers) in the teacher's training wording.
BENCH_IN_DISTRIBUTION_FILE = "bench_in_distribution.jsonl"


# ----------------------------------------------------------------------------- shapes


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (K, 2) of a shape centred at 0 whose extent fits [-1, 1] (y grows downwards)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -1], [1, 0.732], [-1, 0.732]], float)
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        p = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        p[:, 1] += (1 - p[:, 1].max()) / 2 - (p[:, 1].min() + 1) / 2  # centre vertically
        return p
    if shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        p = np.stack([x, y], 1)
        p -= (p.max(0) + p.min(0)) / 2
        return p / np.abs(p).max()
    if shape == "cross":
        a = 0.34
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                         [-a, a], [-1, a], [-1, -a], [-a, -a]], float)
    if shape == "diamond":
        return np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], float)
    raise ValueError(f"unknown shape {shape!r}")


_UNIT = {s: _unit_polygon(s) for s in SHAPES}


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@dataclass
class SceneObject:
    shape: str
    colour: str
    polygon: np.ndarray  # (K, 2) pixel coordinates
    bbox: tuple[float, float, float, float]  # [x, y, w, h] px, rounded to 2 decimals

    def centre(self, size: int) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return (x + w / 2) / size, (y + h / 2) / size

    def norm_wh(self, size: int) -> tuple[float, float]:
        return self.bbox[2] / size, self.bbox[3] / size


# ----------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    names = list(BACKGROUNDS)
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    name = names[rng.integers(len(names))]
    base = np.array(BACKGROUNDS[name], np.float32)
    if kind == "plain":
        img = np.broadcast_to(base, (size, size, 3)).copy()
        desc = f"plain {name}"
    elif kind == "gradient":
        other = names[(names.index(name) + 1 + rng.integers(len(names) - 1)) % len(names)]
        end = np.array(BACKGROUNDS[other], np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
        t = (xs * np.cos(angle) + ys * np.sin(angle)) / (abs(np.cos(angle)) / 2 + abs(np.sin(angle)) / 2) / 2 + 0.5
        t = np.clip(t, 0, 1)[..., None]
        img = base * (1 - t) + end * t
        desc = f"{name} to {other} gradient"
    elif kind == "speckled":
        noise = rng.normal(0, 10, (size, size, 1)).astype(np.float32)
        img = base + noise
        desc = f"speckled {name}"
    else:  # mottled: low-frequency blotches
        small = rng.normal(0, 14, (6, 6, 1)) + rng.normal(0, 3, (6, 6, 3))  # mostly luminance
        small = small.astype(np.float32)
        blot = np.asarray(Image.fromarray(((small + 128).clip(0, 255)).astype(np.uint8)).resize(
            (size, size), Image.BILINEAR), np.float32) - 128
        img = base + blot
        desc = f"mottled {name}"
    return np.clip(img, 0, 255).astype(np.uint8), desc


def _place(rng: np.random.Generator, shape: str, size: int, lo: float, hi: float,
           placed: list[SceneObject], max_overlap: float = 0.2) -> SceneObject | None:
    """Try to place one shape so its box overlaps any earlier box by at most `max_overlap` of the
    smaller box's area; shrink the shape when it does not fit."""
    margin = 2.0
    for _shrink in range(6):
        for _ in range(60):
            side = rng.uniform(lo, hi) * size  # longest side before rotation, px
            rot = np.deg2rad(rng.uniform(-15, 15)) if shape != "circle" else 0.0
            c, s = np.cos(rot), np.sin(rot)
            pts = _UNIT[shape] * (side / 2) @ np.array([[c, s], [-s, c]])
            mn, mx = pts.min(0), pts.max(0)
            w, h = mx - mn
            if w > size - 2 * margin or h > size - 2 * margin:
                continue
            x0 = rng.uniform(margin, size - margin - w)
            y0 = rng.uniform(margin, size - margin - h)
            poly = pts - mn + np.array([x0, y0])
            box = (round(float(x0), 2), round(float(y0), 2), round(float(w), 2), round(float(h), 2))
            ok = True
            for o in placed:
                ox, oy, ow, oh = o.bbox
                ix = max(0.0, min(box[0] + box[2], ox + ow) - max(box[0], ox))
                iy = max(0.0, min(box[1] + box[3], oy + oh) - max(box[1], oy))
                if ix * iy > max_overlap * min(box[2] * box[3], ow * oh):
                    ok = False
                    break
            if ok:
                return SceneObject(shape, "", poly, box)
        lo, hi = lo * 0.85, hi * 0.85
    return None


def _draw(img: Image.Image, obj: SceneObject, rgb: tuple[int, int, int], ss: int = 3) -> None:
    """Antialiased fill: draw the polygon on a supersampled mask, downsample, paste."""
    x, y, w, h = obj.bbox
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = int(math.ceil(x + w)) + 1, int(math.ceil(y + h)) + 1
    mw, mh = x1 - x0, y1 - y0
    mask = Image.new("L", (mw * ss, mh * ss), 0)
    pts = [((px - x0) * ss, (py - y0) * ss) for px, py in obj.polygon]
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    mask = mask.resize((mw, mh), Image.BOX)
    img.paste(rgb, (x0, y0, x1, y1), mask)


def render_scene(rng: np.random.Generator, size: int, n_objects: int, lo: float, hi: float
                 ) -> tuple[Image.Image, list[SceneObject], str]:
    bg, bg_desc = _background(rng, size)
    img = Image.fromarray(bg, "RGB")
    objects: list[SceneObject] = []
    colour_names = list(COLOURS)
    for _ in range(n_objects):
        # Repeat a shape or a colour now and then so counts above one and ambiguous references occur.
        if objects and rng.random() < 0.25:
            shape = objects[rng.integers(len(objects))].shape
        else:
            shape = SHAPES[rng.integers(len(SHAPES))]
        if objects and rng.random() < 0.2:
            colour = objects[rng.integers(len(objects))].colour
        else:
            colour = colour_names[rng.integers(len(colour_names))]
        obj = _place(rng, shape, size, lo, hi, objects)
        if obj is None:
            raise RuntimeError(
                f"could not place {n_objects} objects of size {lo:.2f}-{hi:.2f} in a {size}px image; "
                "ask for fewer or smaller objects")
        obj.colour = colour
        jitter = rng.integers(-12, 13, 3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        _draw(img, obj, rgb)
        objects.append(obj)
    return img, objects, bg_desc


# ----------------------------------------------------------------------------- captions


def _name(o: SceneObject) -> str:
    return f"{o.colour} {o.shape}"


def _a(o: SceneObject) -> str:
    return f"{article(o.colour)} {_name(o)}"



def captions_for(objs: list[SceneObject], bg: str, size: int, rng: random.Random) -> list[str]:
    """Five or more captions, each from a different perspective, all true of the scene."""
    n = len(objs)
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    things = [f"{article(c)} {c} {s}" if k == 1 else f"{number_word(k)} {c} {SHAPE_PLURALS[s]}"
              for (c, s), k in groups.items()]
    caps = []
    noun = "shape" if n == 1 else "shapes"
    # 1. inventory
    caps.append(_cap(rng.choice([
        f"{number_word(n)} {noun}: {_join(things)}." if n > 1 else f"a single {_name(objs[0])}.",
        f"a picture of {_join(things)}.",
        f"an image showing {_join(things)}.",
        f"simple geometric art with {_join(things)}.",
    ])))
    # 2. background
    subject = things[0] if n == 1 else rng.choice([f"{number_word(n)} colorful shapes", "some colorful shapes",
                                                   "a few geometric figures" if n <= 4 else "many geometric figures"])
    caps.append(_cap(rng.choice([f"{subject} on {article(bg)} {bg} background.",
                                 f"{subject} drawn on {article(bg)} {bg} background."])))
    # 3. spatial
    pairs = [(a, b) for a in objs for b in objs if a is not b]
    rel = None
    rng.shuffle(pairs)
    for a, b in pairs:
        (ax, ay), (bx, by) = a.centre(size), b.centre(size)
        if bx - ax >= REL_MARGIN:
            rel = f"{_a(a)} to the left of {_a(b)}."
        elif ay - by <= -REL_MARGIN:
            rel = f"{_a(a)} above {_a(b)}."
        if rel:
            break
    if rel is None:
        o = objs[rng.randrange(n)]
        rel = f"{_a(o)} {region_phrase(*o.centre(size))} of the image."
    caps.append(_cap(rel))
    # 4. counting by colour or by shape
    if rng.random() < 0.5:
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.colour] = counts.get(o.colour, 0) + 1
        parts = [f"{number_word(k)} {c} {'shape' if k == 1 else 'shapes'}" for c, k in counts.items()]
    else:
        counts = {}
        for o in objs:
            counts[o.shape] = counts.get(o.shape, 0) + 1
        parts = [f"{number_word(k)} {s if k == 1 else SHAPE_PLURALS[s]}" for s, k in counts.items()]
    caps.append(_cap(rng.choice([f"there {'is' if parts[0].startswith('one ') else 'are'} {_join(parts)} in the picture.",
                                 f"{_join(parts)}."])))
    # 5. size / placement of each object
    big = max(objs, key=lambda o: o.bbox[2] * o.bbox[3])
    where = [f"{_a(o)} {region_phrase(*o.centre(size))}" for o in objs]
    if n > 1 and rng.random() < 0.5:
        caps.append(_cap(f"the largest shape is {_a(big)} {region_phrase(*big.centre(size))}."))
    else:
        caps.append(_cap(_join(where) + "."))
    # 6. a casual one
    caps.append(_cap(rng.choice([
        f"a {size_word(*big.norm_wh(size))} {_name(big)} stands out in this simple drawing.",
        f"flat {_join(sorted({o.colour for o in objs}))} shapes in a synthetic image.",
        f"a computer-generated scene with {number_word(n)} {noun}.",
    ])))
    return caps


# ----------------------------------------------------------------------------- bench


def bench_candidates(objs: list[SceneObject], size: int) -> dict[str, list[Fact]]:
    """Every definite short-answer question per type for one scene (the rules are the world's:
    `vistune.data.world.question_facts`, over all shapes and colours)."""
    placed = [WorldObject(o.colour, o.shape, *o.centre(size)) for o in objs]
    c: dict[str, list[Fact]] = {t: [] for t in BENCH_TYPES}
    for f in question_facts(placed, SHAPES, list(COLOURS)):
        if f.family in c:
            c[f.family].append(f)
    return c


def select_balanced(cands_per_image: list[tuple[str, dict[str, list[Fact]]]], seed: int) -> list[dict]:
    """One question per type per image, keeping answers close to uniform both within each type
    and within each question form (count all / a shape / a colour, left-right / top-bottom, ...),
    so that neither the type nor the wording predicts the answer.

    Among the (form, answer) pairs the image allows, take the one with the smallest
    `uses of the answer in the type + uses of the answer in that form` (random among ties).
    Each question is written in both wordings: `question` (held-out) and `question_teacher`."""
    rng = random.Random(f"bench:{seed}")
    by_type: dict[str, dict[str, int]] = {t: {} for t in BENCH_TYPES}
    by_form: dict[tuple[str, str], dict[str, int]] = {}
    out = []
    for image, cands in cands_per_image:
        stem = Path(image).stem
        for t in BENCH_TYPES:
            facts = cands[t]
            if not facts:
                continue
            options = sorted({(f.form, f.answer) for f in facts})
            cost = {(f, a): by_type[t].get(a, 0) + by_form.get((t, f), {}).get(a, 0) for f, a in options}
            low = min(cost.values())
            form, answer = rng.choice([o for o in options if cost[o] == low])
            fact = rng.choice(sorted((f for f in facts if f.answer == answer and f.form == form),
                                     key=lambda f: f.key))
            by_type[t][answer] = by_type[t].get(answer, 0) + 1
            fc = by_form.setdefault((t, form), {})
            fc[answer] = fc.get(answer, 0) + 1
            out.append({"id": f"{stem}-{t}", "image": image, "question": with_instruction(word_fact(fact, "heldout")),
                        "answer": answer, "type": t,
                        "question_teacher": with_instruction(word_fact(fact, "teacher"))})
    return out


# ----------------------------------------------------------------------------- world


def _auto_sizes(max_objects: int) -> tuple[float, float]:
    return (0.25, 0.45) if max_objects <= 3 else (0.14, 0.34)


def render_world(out: str | Path, n_images: int, seed: int = 0, min_objects: int = 1, max_objects: int = 5,
                 image_size: int = 224, min_object_size: float | None = None,
                 max_object_size: float | None = None, progress: bool = True) -> dict:
    """Render `n_images` scenes under `out`; returns a summary dict.

    Object sizes are the longest side as a fraction of the image side; by default 0.25-0.45 when
    `max_objects <= 3` (each object covers at least 1-2 cells of a 7x7 grid at 224 px), otherwise
    0.14-0.34.
    """
    if n_images < 1:
        raise ValueError("--images must be at least 1")
    if min_objects < 1 or max_objects < min_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects (got {min_objects}, {max_objects})")
    if max_objects > 12:
        raise ValueError("at most 12 objects per image")
    if image_size < 64:
        raise ValueError("image size must be at least 64 px")
    lo, hi = _auto_sizes(max_objects)
    lo = lo if min_object_size is None else min_object_size
    hi = hi if max_object_size is None else max_object_size
    if not (0 < lo <= hi <= 0.95):
        raise ValueError(f"need 0 < min_object_size <= max_object_size <= 0.95 (got {lo}, {hi})")

    from tqdm import tqdm

    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    cat_ids = {(c, s): i + 1 for i, (s, c) in enumerate((s, c) for s in SHAPES for c in COLOURS)}
    categories = [{"id": i, "name": f"{c} {s}", "supercategory": s} for (c, s), i in cat_ids.items()]
    images, cap_anns, inst_anns, bench_in = [], [], [], []
    for i in tqdm(range(n_images), desc="render", unit="img", disable=not progress, file=sys.stderr):
        rng = np.random.default_rng([seed, i])
        n_obj = int(rng.integers(min_objects, max_objects + 1))
        img, objs, bg = render_scene(rng, image_size, n_obj, lo, hi)
        name = f"{i:06d}.png"
        with atomic_path(img_dir / name) as tmp:
            img.save(tmp, format="PNG", compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
        for cap in captions_for(objs, bg, image_size, random.Random(f"cap:{seed}:{i}")):
            cap_anns.append({"image_id": image_id, "id": len(cap_anns) + 1, "caption": cap})
        for o in objs:
            seg = [round(float(v), 2) for v in o.polygon.reshape(-1)]
            inst_anns.append({"id": len(inst_anns) + 1, "image_id": image_id, "category_id": cat_ids[(o.colour, o.shape)],
                              "bbox": list(o.bbox), "area": round(_polygon_area(o.polygon), 2),
                              "segmentation": [seg], "iscrowd": 0})
        bench_in.append((name, bench_candidates(objs, image_size)))
    info = {"description": "vistune synthetic shapes world", "seed": seed, "version": "1"}
    licenses = [{"id": 1, "name": "generated", "url": ""}]
    atomic_write_json(out / "captions.json", {"info": info, "licenses": licenses, "images": images,
                                              "annotations": cap_anns})
    atomic_write_json(out / "instances.json", {"info": info, "licenses": licenses, "images": images,
                                               "annotations": inst_anns, "categories": categories})
    bench = select_balanced(bench_in, seed)
    atomic_write_jsonl(out / BENCH_FILE, [{k: v for k, v in q.items() if k != "question_teacher"} for q in bench])
    atomic_write_jsonl(out / BENCH_IN_DISTRIBUTION_FILE,
                       [{**{k: v for k, v in q.items() if k != "question_teacher"}, "question": q["question_teacher"]}
                        for q in bench])
    return {"images": len(images), "captions": len(cap_anns), "instances": len(inst_anns), "bench": len(bench)}
