"""vistune against transformers' Llava trained and run as a user would: same model, same data, one process.

    .venv/bin/python benchmarks/bench_peer.py [--rounds 3] [--samples 16] [--batch 4] [--levers] [--no-inference]
        [--precision auto|fp32|bf16] [--with compile] [--stages 2,1] [--json out.json]

The model: a small random CLIP tower at 224 px / patch 32 (49 image tokens, features of its second-to-last
layer), a two-layer GELU projector and the real SmolLM2-135M-Instruct. vistune holds it as a
`VisionLanguageModel`; the peer is `transformers.LlavaForConditionalGeneration` with the very same weights
(the script checks that both give the same loss on one batch). The data: `--samples` synthetic records of
20-200 text tokens in the LLM's chat template, 3/4 with an image.

Training (stage 1: projector only; stage 2: projector + LLM), `--batch` samples per step, AdamW, the
precision `train.precision` picks (auto: bf16 autocast where the CPU has native bf16, else fp32):
- vistune: `vistune.train.loop.train` with its defaults (packing, tower-feature cache shared by every round and
  both stages, length grouping, LM head at labels only, fused AdamW);
- peer: random padded batches, `model(..., labels=...)` (full-vocabulary logits at every position),
  `torch.optim.AdamW` defaults, the tower run on every step.
Each round is one whole epoch; modes alternate round by round. A mode's figure is real (non-padding) tokens/s
over the steps after the first, median over rounds, and the same as samples/s (both sides see the same samples);
the ratio is of medians. Each mode also gets a step's time split (data, forward, backward, optimizer,
bookkeeping: vistune's `step_time_s` from metrics.jsonl, the peer's timed the same way), per real token over the
steps after the first and scaled to a step of the epoch's mean length, so that length-grouped and random
batches compare. With `--levers`, every lever is
also measured switched off on its own (vistune minus that lever); `--with compile` also measures vistune with
`train.compile: true` (mode `with_compile`; its first step, which compiles, is not timed). Each figure comes with model FLOP/s as a
fraction of this machine's matmul peak (`matmul_peak.py`, in the same precision): forward and backward of
every LLM/projector matmul and attention product a step needs (stage 1: input gradients only through the
frozen LLM), the LM head at supervised positions only, the frozen tower not counted. Peak memory is the
largest growth of the process's resident memory during a round. vistune's allocator setting
(`train.malloc_tuning`) is process-wide, so after the first vistune round the peer runs with it too
(`--no-malloc-tuning` leaves it off everywhere).

Inference (fp32, greedy, `--new-tokens`): time to first token for an image + question, decode tokens/s
(vistune's engine vs the peer's `generate`), and the fourth turn's time to first token: vistune's chat session
(KV cache of the first three turns reused) vs the peer re-processing the conversation.
The last line prints the stage-2 and stage-1 training ratios.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from matmul_peak import measure as measure_peak  # noqa: E402

# lever -> overrides that switch it off (a lever whose key the config lacks is left out)
LEVERS = {
    "packing": ["train.packing=false"],
    "feature_cache": ["train.feature_cache=false"],
    "length_grouping": ["data.group_by_length=false"],
}
OPTIONS = {  # settings off by default, measured switched on with `--with NAME`
    "compile": ["train.compile=true"],
}
WORDS = ("red blue green yellow circle square triangle small large top left right bottom corner centre shape colour "
         "light dark near far above below next to the a of and with in on").split()


# --------------------------------------------------------------------------------------------------
# data and models


def make_data(directory: Path, n: int, seed: int = 0) -> Path:
    """`n` LLaVA records of ~20-200 text tokens, 3/4 with one of 16 drawn images; returns the JSON path."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = f"img{i % 16}.png"
        if not (images / name).exists():
            im = Image.new("RGB", (224, 224), tuple(rng.randint(150, 255) for _ in range(3)))
            d = ImageDraw.Draw(im)
            for _ in range(rng.randint(1, 3)):
                x, y, s = rng.randint(0, 160), rng.randint(0, 160), rng.randint(20, 60)
                d.ellipse((x, y, x + s, y + s), fill=tuple(rng.randint(0, 200) for _ in range(3)))
            im.save(images / name)
        n_words = rng.randint(10, 140)
        q = " ".join(rng.choices(WORDS, k=max(3, n_words // 5))) + "?"
        a = " ".join(rng.choices(WORDS, k=n_words - n_words // 5)) + "."
        rec = {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if rng.random() < 0.75:
            rec["image"] = name
            rec["conversations"][0]["value"] = "<image>\n" + q
        records.append(rec)
    path = directory / "data.json"
    path.write_text(json.dumps(records))
    return path


def small_clip(directory: Path) -> Path:
    """A random CLIP vision tower at 224 px / patch 32, saved as a transformers directory."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=256, intermediate_size=1024,
                           num_hidden_layers=4, num_attention_heads=4)
    CLIPVisionModel(cfg).save_pretrained(directory)
    return directory


def model_config(clip_dir: Path):
    from vistune.config import ModelConfig

    return ModelConfig(vision_tower=str(clip_dir), vision_layer=-2, vision_select="patch", projector="mlp2x_gelu",
                       llm="smollm2-135m-instruct", template="chat_template")


def peer_image_token(tokenizer, dataset) -> int:
    """A special token id that no rendered sample uses, to mark the peer's image positions."""
    used = {int(t) for i in range(len(dataset)) for t in dataset[i].input_ids}
    keep = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return next(i for i in sorted(tokenizer.added_tokens_decoder) if i not in keep and i not in used)


def build_peer(model, image_token_id: int):
    """LlavaForConditionalGeneration holding `model`'s tower, projector and LLM weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tower = model.vision_tower.model
    cfg = LlavaConfig(vision_config=tower.config, text_config=model.llm.config, image_token_id=image_token_id,
                      projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default", image_seq_length=model.num_image_tokens)
    peer = LlavaForConditionalGeneration(cfg)
    peer.model.vision_tower.load_state_dict(tower.state_dict())
    peer.model.language_model.load_state_dict(model.llm.get_decoder().state_dict())
    proj = {k: v for k, v in model.projector.state_dict().items() if k.startswith(("linear_1", "linear_2"))}
    peer.model.multi_modal_projector.load_state_dict(proj)
    peer.lm_head.load_state_dict(model.llm.get_output_embeddings().state_dict())
    return peer.float()


def to_peer(batch: dict, image_token_id: int) -> dict:
    from vistune.conversation import IMAGE_TOKEN_ID

    ids = batch["input_ids"].clone()
    ids[ids == IMAGE_TOKEN_ID] = image_token_id
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "pixel_values": batch["pixel_values"],
            "labels": batch["labels"]}


# --------------------------------------------------------------------------------------------------
# model FLOPs


def epoch_flops(model, dataset, stage: int) -> tuple[float, int]:
    """(model FLOPs of one pass over `dataset`, real tokens in it); see `vistune.train.flops` for what counts."""
    from vistune.conversation import IGNORE_INDEX
    from vistune.train.flops import FlopCounter

    counter = FlopCounter.of(model)
    flops, tokens = 0.0, 0
    for i in range(len(dataset)):
        s = dataset[i]
        T = len(s.input_ids)
        sup = int((s.labels[1:] != IGNORE_INDEX).sum())
        n_img = model.num_image_tokens if s.pixel_values is not None else 0
        flops += counter.step([T], sup, n_img, stage)
        tokens += T
    return flops, tokens


# --------------------------------------------------------------------------------------------------
# measuring


class PeakRSS:
    """Largest growth of this process's resident memory while the block runs (MiB)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mib = (self.peak - self.start) / 2**20


def vistune_round(base: list[str], stage: int, out: Path, extra: list[str]
                  ) -> tuple[float, float, float, dict[str, float]]:
    """(real tokens/s after the first step, peak memory growth MiB, seconds of the first step, seconds per real
    token of each phase after the first step, from metrics.jsonl's `step_time_s`) of one epoch of `vistune
    train`."""
    from vistune.config import load_run_config
    from vistune.train.loop import train

    run = load_run_config(None, base + [f"train.stage={stage}", f"output_dir={out}",
                                        f"train.seed={random.randint(0, 10**6)}"] + extra)
    with PeakRSS() as mem:
        train(run, progress=False, resume=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)  # each round's final checkpoint holds the whole LLM: rounds x modes would fill the disk
    tokens = sum(r["tokens"] for r in records[1:])
    split = {k: sum(r["step_time_s"][k] for r in records[1:]) / tokens for k in records[-1]["step_time_s"]}
    return tokens / (records[-1]["elapsed_s"] - records[0]["elapsed_s"]), mem.mib, records[0]["elapsed_s"], split


def peer_round(peer, dataset, stage: int, batch: int, lr: float, bf16: bool, image_token_id: int, pad_id: int
               ) -> tuple[float, float, dict[str, float]]:
    """One epoch of random padded batches through the peer; (real tokens/s after the first step, memory MiB,
    seconds per real token of each phase after the first step)."""
    from vistune.data.dataset import collate

    peer.train()
    peer.requires_grad_(False)
    peer.model.multi_modal_projector.requires_grad_(True)
    if stage == 2:
        peer.model.language_model.requires_grad_(True)
        peer.lm_head.requires_grad_(True)
    params = [p for p in peer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    order = random.sample(range(len(dataset)), len(dataset))
    tokens, seconds = 0, 0.0
    split = dict.fromkeys(("data", "forward", "backward", "optimizer", "bookkeeping"), 0.0)
    with PeakRSS() as mem:
        for s in range(len(dataset) // batch):
            t = [time.perf_counter()]
            b = to_peer(collate([dataset[i] for i in order[s * batch: (s + 1) * batch]], pad_id), image_token_id)
            t.append(time.perf_counter())
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = peer(**b).loss
            t.append(time.perf_counter())
            loss.backward()
            t.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            t.append(time.perf_counter())
            if s:
                tokens += int(b["attention_mask"].sum())
                seconds += t[-1] - t[0]
                for k, a, z in zip(split, t, t[1:]):
                    split[k] += z - a
    return tokens / seconds, mem.mib, {k: v / tokens for k, v in split.items()}


def check_same_model(model, peer, dataset, image_token_id: int) -> float:
    """Relative difference of the two models' fp32 losses on the first four samples (must be tiny)."""
    from vistune.data.dataset import collate

    b = collate([dataset[i] for i in range(4)], model.tokenizer.pad_token_id)
    model.eval(), peer.eval()
    with torch.no_grad():
        ours = model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["labels"]).loss
        theirs = peer(**to_peer(b, image_token_id)).loss
    diff = abs(float(ours) - float(theirs)) / abs(float(theirs))
    if diff > 1e-4:
        raise SystemExit(f"vistune and the peer disagree on the loss: {float(ours)} vs {float(theirs)}")
    return diff


# --------------------------------------------------------------------------------------------------
# inference


class _Clock:
    """A transformers streamer that records when each piece of tokens arrives (the first is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def peer_generate(peer, prepare, new_tokens: int, image_token_id: int):
    """(time to first token, decode tokens/s, generated ids) of the peer's greedy `generate`. `prepare()` gives
    (ids, pixels) and is timed too, as vistune's engine renders and preprocesses inside its own timing."""
    from vistune.conversation import IMAGE_TOKEN_ID

    clock = _Clock()
    t0 = time.perf_counter()
    ids, pixels = prepare()
    x = torch.tensor([[image_token_id if t == IMAGE_TOKEN_ID else t for t in ids]])
    out = peer.generate(input_ids=x, attention_mask=torch.ones_like(x), pixel_values=pixels,
                        max_new_tokens=new_tokens, do_sample=False, streamer=clock, pad_token_id=0)
    end = time.perf_counter()
    gen = out[0, x.shape[1]:].tolist()
    first = clock.times[1]
    return first - t0, (len(gen) - 1) / max(end - first, 1e-9), gen


def vistune_generate(engine, request):
    """(time to first token, decode tokens/s, generated ids) of vistune's engine."""
    times: list[float] = []
    t0 = time.perf_counter()
    done = engine.generate([request], on_event=lambda e: times.append(time.perf_counter()))[0]
    end = time.perf_counter()
    return times[0] - t0, (done.completion_tokens - 1) / max(end - times[0], 1e-9), done.token_ids


def inference(model, peer, image_token_id: int, reps: int, new_tokens: int) -> dict:
    from matplotlib import cbook
    from PIL import Image

    from vistune.inference.chat import ChatSession
    from vistune.inference.engine import Engine, Request
    from vistune.inference.generate import SamplingParams

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB")
    engine = Engine(model, prefix_reuse=False)  # every request runs whole, as the peer's do (kept starts: bench_prefix.py)
    peer.eval()
    def pixels_of(im):
        return model.image_processor.batch([im])

    params = SamplingParams(max_new_tokens=new_tokens)
    questions = ["Describe this image in detail.", "What is the person wearing?", "What colour is the background?",
                 "Is there anything written in the image?"]
    rows: dict[str, list[float]] = {k: [] for k in ("v_ttft", "p_ttft", "v_decode", "p_decode", "v_follow",
                                                     "p_follow", "v_reprocess")}
    same, gens = True, {}
    with torch.no_grad():
        for rep in range(reps + 1):  # the first repetition warms up
            req = Request.of(questions[0], image, params=params)
            runs = [("v", lambda: vistune_generate(engine, req)),
                    ("p", lambda: peer_generate(peer, lambda: (engine.render(req), pixels_of(image)), new_tokens,
                                                  image_token_id))]
            for who, fn in (runs if rep % 2 else runs[::-1]):
                ttft, rate, gen = fn()
                if rep:
                    rows[f"{who}_ttft"].append(ttft)
                    rows[f"{who}_decode"].append(rate)
                gens[who] = gen
            n = min(len(gens["v"]), len(gens["p"]))
            same &= gens["v"][:n] == gens["p"][:n]
            session = ChatSession(engine, image, SamplingParams(max_new_tokens=32))
            for q in questions[:3]:
                session.ask(q)
            history = list(session.history)
            full = Request.of(questions[3], image, history=history, params=SamplingParams(max_new_tokens=1))
            full_ids = engine.render(full)
            for which in (("v", "p", "r") if rep % 2 else ("p", "r", "v")):
                if which == "v":
                    session.ask(questions[3], SamplingParams(max_new_tokens=1))
                    t = session.last_ttft_s
                elif which == "p":
                    t = peer_generate(peer, lambda: (engine.render(full), pixels_of(image)), 1, image_token_id)[0]
                else:
                    t = vistune_generate(engine, full)[0]
                if rep:
                    rows[{"v": "v_follow", "p": "p_follow", "r": "v_reprocess"}[which]].append(t)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {**med, "same_tokens": same, "ttft_ratio": med["p_ttft"] / med["v_ttft"],
            "decode_ratio": med["v_decode"] / med["p_decode"], "follow_ratio": med["p_follow"] / med["v_follow"],
            "prompt_positions": len(full_ids)}


# --------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({isa})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
    ap.add_argument("--samples", type=int, default=16, help="samples per epoch (one epoch per round)")
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--levers", action="store_true", help="also measure vistune with each lever switched off")
    ap.add_argument("--with", dest="with_options", action="append", default=[], choices=sorted(OPTIONS),
                    help="also measure vistune with this setting switched on (repeatable)")
    ap.add_argument("--stages", default="2,1", help="stages to train, in order")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="train.malloc_tuning=false in every vistune round (the setting is process-wide: once a "
                         "round has made it, every later round, the peer's included, runs with it; compare two "
                         "invocations to measure it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); 1 is steadier when other jobs share the cores")
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="inference repetitions")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    logging.disable(logging.WARNING)
    from vistune.config import TrainConfig, DataConfig
    from vistune.data.dataset import LlavaDataset
    from vistune.model.checkpoint import save_checkpoint
    from vistune.model.vlm import VisionLanguageModel
    from vistune.train.distributed import resolve_precision

    bf16 = resolve_precision(args.precision, torch.device("cpu"))
    root = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    atexit.register(shutil.rmtree, root, True)
    data = make_data(root / "data", args.samples)
    clip = small_clip(root / "clip")
    cfg = model_config(clip)
    torch.manual_seed(0)
    model = VisionLanguageModel.build(cfg)
    init = save_checkpoint(model, root / "init")
    dataset = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=512)
    image_token_id = peer_image_token(model.tokenizer, dataset)
    peer = build_peer(model, image_token_id)
    diff = check_same_model(model, peer, dataset, image_token_id)
    keys = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)} | \
        {f"data.{f.name}" for f in dataclasses.fields(DataConfig)}
    levers = {k: v for k, v in LEVERS.items() if all(o.split("=")[0] in keys for o in v)} if args.levers else {}
    base = [f"model.{k}={v}" for k, v in dataclasses.asdict(cfg).items() if v is not None]
    base += [f"init_from={init}", f"data.path={data}", f"data.image_folder={data.parent / 'images'}",
             "data.max_length=512", "data.num_workers=1", "train.epochs=1", f"train.global_batch_size={args.batch}",
             f"train.micro_batch_size={args.batch}", "train.save_every=null", "train.warmup_ratio=0",
             f"train.precision={args.precision}"] + (["train.malloc_tuning=false"] if args.no_malloc_tuning else [])
    if "train.feature_cache_dir" in keys:
        base.append(f"train.feature_cache_dir={root / 'feature-cache'}")
    peak = measure_peak(bf16=bf16, seconds=0.3)["peak"]["bf16" if bf16 else "fp32"]
    print(f"same model: vistune and peer fp32 losses agree to {diff:.1e} (relative); matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s ({'bf16' if bf16 else 'fp32'})", flush=True)

    results: dict = {}
    for stage in [int(s) for s in args.stages.split(",")]:
        lr = 1e-3 if stage == 1 else 5e-5
        flops, tokens = epoch_flops(model, dataset, stage)
        per_token = flops / tokens
        samples_per_token = len(dataset) / tokens
        tokens_per_step = tokens / (len(dataset) // args.batch)  # a step of the epoch's mean length
        modes = ["vistune", "peer"] + [f"no_{k}" for k in levers] + [f"with_{k}" for k in args.with_options]
        settings = {f"no_{k}": v for k, v in levers.items()} | {f"with_{k}": OPTIONS[k] for k in args.with_options}
        rates: dict[str, list[float]] = {m: [] for m in modes}
        mems: dict[str, list[float]] = {m: [] for m in modes}
        firsts: dict[str, list[float | None]] = {m: [] for m in modes}
        splits: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                if m == "peer":
                    rate, mem, split = peer_round(peer, dataset, stage, args.batch, lr, bf16, image_token_id,
                                                  model.tokenizer.pad_token_id)
                    first = None
                else:
                    extra = [f"train.lr={lr}"] + settings.get(m, [])
                    rate, mem, first, split = vistune_round(base, stage, root / f"run-{stage}-{m}-{r}", extra)
                rates[m].append(rate)
                splits[m].append(split)
                mems[m].append(mem)
                firsts[m].append(first)
            print(f"stage {stage} round {r + 1}: " + ", ".join(f"{m} {rates[m][-1]:.0f}" for m in modes)
                  + " tok/s", flush=True)
        res = {}
        for m in modes:
            med = statistics.median(rates[m])
            res[m] = {"tokens_per_s": med, "samples_per_s": med * samples_per_token, "rounds": rates[m],
                      "step_time_s": {k: statistics.median(sp[k] for sp in splits[m]) * tokens_per_step
                                      for k in splits[m][0]},
                      "peak_mem_mib": max(mems[m]),
                      "first_step_s": None if m == "peer" else statistics.median(firsts[m]),
                      "model_flops_per_s": med * per_token, "fraction_of_peak": med * per_token / peak,
                      "ratio_vs_peer": med / statistics.median(rates["peer"])}
        results[f"stage{stage}"] = res
    if not args.no_inference:  # the training rounds updated the peer's weights: compare against the same weights
        del peer
        peer = build_peer(model, image_token_id)
    inf = None if args.no_inference else inference(model, peer, image_token_id, args.reps, args.new_tokens)

    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
               f"threads; training precision {'bf16 autocast' if bf16 else 'fp32'} (train.precision="
               f"{args.precision})")
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}\nmachine: {machine}")
    for stage, res in results.items():
        for m, r in res.items():
            print(f"{stage} {m:20s} {r['tokens_per_s']:7.0f} tok/s {r['samples_per_s']:5.2f} samples/s  "
                  f"{r['ratio_vs_peer']:5.2f}x peer  {r['fraction_of_peak'] * 100:5.1f}% of matmul peak  peak mem "
                  f"+{r['peak_mem_mib']:.0f} MiB"
                  + (f"  first step {r['first_step_s']:.1f} s" if r["first_step_s"] is not None else ""))
        print(f"{stage} step time split (s per step of the epoch's mean length, {tokens_per_step:.0f} tokens, "
              f"from the steps after the first; medians over rounds):")
        for m, r in res.items():
            total = sum(r["step_time_s"].values())
            print(f"  {m:20s} " + "  ".join(f"{k} {v:.3f}" for k, v in r["step_time_s"].items())
                  + f"  = {total:.3f}")
    if inf is not None:
        print(f"inference (fp32): TTFT vistune {inf['v_ttft'] * 1e3:.0f} ms vs peer {inf['p_ttft'] * 1e3:.0f} ms "
              f"({inf['ttft_ratio']:.2f}x); decode {inf['v_decode']:.1f} vs {inf['p_decode']:.1f} tok/s "
              f"({inf['decode_ratio']:.2f}x; same greedy tokens: {inf['same_tokens']}); 4th-turn TTFT "
              f"({inf['prompt_positions']} positions): vistune KV reuse {inf['v_follow'] * 1e3:.0f} ms vs peer "
              f"re-processing {inf['p_follow'] * 1e3:.0f} ms ({inf['follow_ratio']:.2f}x; vistune re-processing "
              f"{inf['v_reprocess'] * 1e3:.0f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "peak_flops": peak, **results,
                                               "inference": inf}, indent=2))
    ratio = {s: results[f"stage{s}"]["vistune"]["ratio_vs_peer"] for s in (2, 1) if f"stage{s}" in results}
    print("ratios vs peer (samples/s): " + ", ".join(f"stage {s} {v:.2f}x" for s, v in ratio.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
