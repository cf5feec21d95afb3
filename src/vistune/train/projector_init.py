"""Warm start of a fresh linear projector from the stage-1 pairs, before stage 1 trains it (`train.projector_init`).

A randomly initialised projector hands the frozen LLM image tokens it cannot read, and the gradient that
reaches the projector through the frozen LLM is weak and noisy, so a short stage 1 aligns little. The warm
start solves the alignment's linear core in closed form first: ridge regression from each image's
mean-pooled projector inputs to the idf-weighted mean word embedding of its captions,

    min_W  sum_i || mean_tokens(x_i) W + b - y_i ||^2 + ridge * ||W||^2   (inputs standardised per channel),

then applies W to every token. Mean pooling commutes with the linear map, so an image's tokens average to a
prediction of its captions' content words; the token of a red star is pushed towards the embeddings of
"red" and "star". Stage 1 then trains from there as usual. Only records with one image take part (the
answers of a record with several images cannot be attributed to one of them). The statistics are sums over images, so
processes each take a shard and add them up; every process ends with the same weights.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vistune.data.image import ImageLoadError, load_image

log = logging.getLogger(__name__)


@dataclass
class WarmStart:
    images: int
    """Images the regression used."""
    skipped: int
    """Images that could not be read."""
    fit_r2: float
    """Fraction of the caption-embedding variance (over images) that the fitted map explains."""


def caption_targets(captions: list[list[str]], tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """Per image, the idf-weighted mean embedding of its captions' tokens: (I, D). Words in every caption
    (articles, "image") weigh nothing; rare content words weigh most."""
    docs = [[t for c in caps for t in tokenizer.encode(" " + c.lower(), add_special_tokens=False)] for caps in captions]
    df = Counter(t for d in docs for t in set(d))
    idf = {t: math.log(len(docs) / n) for t, n in df.items()}
    targets = torch.zeros(len(docs), embeddings.shape[1])
    for i, d in enumerate(docs):
        w = torch.tensor([idf[t] for t in d])
        if w.sum() > 0:
            targets[i] = (w[:, None] * embeddings[d].float()).sum(0) / w.sum()
        else:  # every token of this image's captions occurs in all of them
            targets[i] = embeddings[d].float().mean(0)
    return targets


def captions_by_image(dataset, captions: str | Path | None = None) -> dict[Path, list[str]]:
    """Non-blank assistant turns of each image's one-image records (stage-1 data: one caption per record); with a
    `captions` file, the file's captions of each of the dataset's images that it has (all of them, where the
    records hold one). Records with several images are left out: their answers speak of several images at once
    and cannot be attributed to one of them."""
    found: dict[Path, list[str]] = defaultdict(list)
    for i, (record, messages) in enumerate(zip(dataset.records, dataset.messages)):
        texts = [m.content for m in messages if m.role == "assistant" and m.content.strip()]
        if dataset.num_images(i) == 1 and texts:
            found[dataset.image_path(record)] += texts
    if captions is not None:
        from vistune.data.annotations import load_caption_sets

        sets, _ = load_caption_sets(captions)
        by_path = {dataset.resolve(image): caps for image, caps in sets}
        matched = [p for p in found if p in by_path]
        if not matched:
            raise ValueError(f"{captions} has captions of none of the training data's images")
        for p in matched:
            found[p] = list(by_path[p])
        log.info("projector warm start: all captions from %s for %d of %d images", captions, len(matched), len(found))
    return found


@torch.no_grad()
def ridge_warm_start(model, dataset, ridge: float = 100.0, max_images: int = 20000, seed: int = 0,
                     world=None, progress: bool = True, batch_size: int = 32,
                     captions: str | Path | None = None) -> WarmStart:
    """Set `model.projector` (linear) to the ridge solution over up to `max_images` images of `dataset`
    (their records' captions, or those of a `captions` file: see `captions_by_image`)."""
    projector = model.projector
    if projector.kind != "linear":
        raise ValueError(f"the ridge warm start needs a linear projector, not {projector.kind!r}")
    groups = captions_by_image(dataset, captions)
    paths = sorted(groups)
    random.Random(seed).shuffle(paths)
    paths = paths[:max_images]
    if len(paths) < 2:
        raise ValueError("the ridge warm start needs captions of at least two images")
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    embeddings = model.llm.get_input_embeddings().weight.detach().float().cpu()
    targets = caption_targets([groups[p] for p in paths], model.tokenizer, embeddings)  # (I, D_llm)

    dv, dl = projector.linear_1.in_features, embeddings.shape[1]
    f64 = {"dtype": torch.float64}
    # sums over images (x: mean-pooled inputs, y: targets) and over tokens (t: for the channel statistics)
    sx, sy, sxx, sxy = torch.zeros(dv, **f64), torch.zeros(dl, **f64), torch.zeros(dv, dv, **f64), \
        torch.zeros(dv, dl, **f64)
    st, stt = torch.zeros(dv, **f64), torch.zeros(dv, **f64)
    counts = torch.zeros(4, **f64)  # images used, images skipped, tokens, sum of squared targets
    mine = list(range(rank, len(paths), size))
    bar = tqdm(total=len(mine), desc="projector warm start", unit="img", disable=not progress)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        idx, pixels = [], []
        for j in chunk:
            try:
                pixels.append(model.image_processor(load_image(paths[j])))
                idx.append(j)
            except ImageLoadError as e:
                log.warning("projector warm start: %s", e)
                counts[1] += 1
        bar.update(len(chunk))
        if not idx:
            continue
        tokens = model.projector_inputs(torch.stack(pixels)).double().cpu()  # (B, N, D_v)
        x, y = tokens.mean(1), targets[idx].double()  # (B, D_v), (B, D_llm)
        sx += x.sum(0)
        sy += y.sum(0)
        sxx += x.T @ x
        sxy += x.T @ y
        st += tokens.sum((0, 1))
        stt += tokens.pow(2).sum((0, 1))
        counts += torch.tensor([len(idx), 0, tokens.shape[0] * tokens.shape[1], float((y * y).sum())], **f64)
    bar.close()
    if world is not None and world.distributed:
        from vistune.train.distributed import all_sum_tensor

        sx, sy, sxx, sxy, st, stt, counts = (all_sum_tensor(world, t) for t in (sx, sy, sxx, sxy, st, stt, counts))
    used, skipped, n_tokens, syy = int(counts[0]), int(counts[1]), float(counts[2]), float(counts[3])
    if used < 2:
        raise ValueError(f"the ridge warm start could read only {used} image(s)")

    mean = st / n_tokens  # per-channel statistics over all tokens
    std = (stt / n_tokens - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
    mx, my = sx / used, sy / used
    cxx = sxx / used - torch.outer(mx, mx)  # (D_v, D_v) covariance of pooled inputs
    cxy = sxy / used - torch.outer(mx, my)  # (D_v, D_llm)
    # solve on standardised inputs (one ridge strength suits any feature scale)
    w_std = torch.linalg.solve(cxx / torch.outer(std, std) + ridge / used * torch.eye(dv, **f64), cxy / std[:, None])
    weight = w_std / std[:, None]  # (D_v, D_llm): the same map on raw inputs
    bias = my - mx @ weight
    total = syy / used - float(my @ my)  # summed variance of the targets
    residual = total - 2 * float((weight * cxy).sum()) + float((weight * (cxx @ weight)).sum())
    if projector.input_mean is not None:  # the projector standardises its inputs itself
        projector.input_mean.copy_(mean.to(projector.input_mean))
        projector.input_std.copy_(std.to(projector.input_std))
        weight, bias = w_std, bias + mean @ weight
    projector.linear_1.weight.copy_(weight.T.to(projector.linear_1.weight))
    projector.linear_1.bias.copy_(bias.to(projector.linear_1.bias))
    return WarmStart(images=used, skipped=skipped, fit_r2=1.0 - residual / max(total, 1e-12))

