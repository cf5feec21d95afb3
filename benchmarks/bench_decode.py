"""vistune's engine against transformers' `generate` on the same model, in one process: decode speed at batch 1
against the memory-bandwidth bound, time to first token with an image, and evaluation throughput.

    .venv/bin/python benchmarks/bench_decode.py [--rounds 3] [--new-tokens 48] [--questions 256] [--batch 8]
        [--eval-rounds 1] [--eval-tokens 16] [--threads N] [--tiny] [--json out.json]

The model is `bench_peer.py`'s: a small random CLIP tower at 224 px / patch 32 (49 image tokens), a two-layer GELU
projector and the real SmolLM2-135M-Instruct, fp32 (the engine's precision on CPU). The peer is
`transformers.LlavaForConditionalGeneration` holding the very same weights; both decode greedily. vistune runs as a
user runs it: `Assistant.chat`'s engine (one per model, kept prompt starts and image features) for single questions,
`vistune.inference.batch.infer` (what every `vistune eval` answers with) for the question file.

- decode: tokens/s after the first token of a long answer about an image, batch 1; the same greedy tokens are
  checked. The bound: the bytes of the LLM's weights (the tied embedding counted once, as the LM head that reads
  it whole) read once per token at this machine's read bandwidth (`sum` over a 512 MiB buffer, measured in every
  round, same threads); the fraction is tokens/s over that bound.
- time to first token with an image, two cases: the same question about the same image asked again (the
  engine keeps the start of the prompt per image, so only the question runs), and a new image each time (one
  pass over the prompt, the template's opening kept).
- evaluation: a ScienceQA-shaped question file (`Context`, `Question`, `Options (A) ...`, the letter
  instruction; half of the questions with an image of their own), answered in batches of `--batch`: vistune's
  `infer` against the peer's batched, left-padded `generate` over the file in order. The two sides alternate
  over slices of the file (one `infer` window, 8 batches, each), and each side's questions/s is over the whole
  file (`--eval-rounds` passes, a fresh engine each). The answers are compared.

Rounds alternate which side goes first; figures are medians, ratios are of medians. The last line prints the
three ratios. `--tiny` runs a tiny random model (figures mean nothing; for the test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_peer import build_peer, cpu_name, model_config, peer_generate, peer_image_token, small_clip  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
SUBJECTS = ("Which of these states is farthest north?", "Which word would you find on a dictionary page?",
            "What is the expected outcome of the experiment?", "Which material is this spoon made of?",
            "Which animal's feet are also adapted for digging?", "Select the organism in the same genus.",
            "Which tense does the sentence use?", "Is the following trait inherited or acquired?")
CHOICES = ("West Virginia", "Louisiana", "Arizona", "Oklahoma", "metal", "wood", "plastic", "past tense",
           "future tense", "inherited", "acquired", "the mole", "the camel", "cold", "warm", "rough", "smooth")
CONTEXTS = ("", "", "Figure: a map of the United States.", "The passage below describes an experiment. Ms. Baker "
            "measured how far a ball rolled down ramps of three different surfaces.", "This organism is a grizzly bear.")
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(f"{f}:{'yes' if f in flags else 'no'}" for f in FLAGS)


def read_bandwidth(threads_buffer: torch.Tensor, reps: int = 5) -> float:
    """Bytes/s of `sum` over a buffer larger than the caches (best of `reps`)."""
    threads_buffer.sum()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        threads_buffer.sum()
        best = max(best, threads_buffer.nbytes / (time.perf_counter() - t))
    return best


def weight_bytes(llm) -> int:
    """Bytes of weights one decode step reads: every parameter once, less an input embedding not shared with the
    LM head (a step reads one row of it)."""
    params = {p.data_ptr(): p for p in llm.parameters()}
    total = sum(p.nbytes for p in params.values())
    emb, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    return total - (emb.nbytes if emb.data_ptr() != head.data_ptr() else 0)


def draw_image(seed: int):
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    im = Image.new("RGB", (224, 224), tuple(rng.randint(150, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):
        x, y, s = rng.randint(0, 160), rng.randint(0, 160), rng.randint(20, 60)
        d.rectangle((x, y, x + s, y + s), fill=tuple(rng.randint(0, 200) for _ in range(3)))
    return im


def scienceqa_file(directory: Path, n: int) -> tuple[Path, Path]:
    """`n` questions in ScienceQA's prompt shape (half with an image of their own), as `vistune infer` reads them."""
    rng = random.Random(0)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        k = rng.randint(2, 4)
        options = " ".join(f"({'ABCD'[j]}) {c}" for j, c in enumerate(rng.sample(CHOICES, k)))
        text = (f"Context: {rng.choice(CONTEXTS)}\nQuestion: {rng.choice(SUBJECTS)}\nOptions: {options}\n"
                f"{LETTER_ANSWER}")
        q = {"question_id": f"q{i}", "text": text}
        if i % 2 == 0:
            draw_image(1000 + i).save(images / f"{i}.png")
            q["image"] = f"{i}.png"
        lines.append(json.dumps(q))
    path = directory / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, images


def peer_answers(peer, engine, questions: list[dict], images: Path, batch: int, tokens: int,
                 image_token_id: int) -> list[list[int]]:
    """The peer's greedy answers (ids up to the end of the turn), batches of `batch` in file order, left-padded."""
    from vistune.conversation import IMAGE_TOKEN_ID, conversation_messages
    from vistune.data.image import load_image
    from vistune.inference.engine import Request

    model = engine.model
    eot = list(engine.end_of_turn_ids)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eot[0]
    out = []
    for start in range(0, len(questions), batch):
        rows, pixels = [], []
        for q in questions[start:start + batch]:
            ims = [load_image(images / q["image"])] if q.get("image") else []
            ids = engine.render(Request(conversation_messages(q["text"], image_turns=[0] * len(ims)), ims))
            rows.append([image_token_id if t == IMAGE_TOKEN_ID else t for t in ids])
            pixels += ims
        width = max(map(len, rows))
        x = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        kw = {"pixel_values": model.image_processor.batch(pixels)} if pixels else {}
        gen = peer.generate(input_ids=x, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                            eos_token_id=eot, pad_token_id=pad, **kw)[:, width:]
        for row in gen.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eot), len(row))
            out.append(row[:cut])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the decode and first-token figures")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens of the decode figure's answer")
    ap.add_argument("--questions", type=int, default=256, help="questions in the evaluation file")
    ap.add_argument("--batch", type=int, default=8, help="questions answered together")
    ap.add_argument("--eval-rounds", type=int, default=1, help="rounds of the evaluation figure")
    ap.add_argument("--eval-tokens", type=int, default=16, help="most tokens per evaluation answer")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (figures mean nothing)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    logging.disable(logging.WARNING)
    from vistune.inference.assistant import Assistant
    from vistune.inference.batch import LENGTH_WINDOW, infer, read_questions
    from vistune.inference.engine import Engine, Request
    from vistune.inference.generate import SamplingParams

    root = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    try:
        torch.manual_seed(0)
        if args.tiny:
            from vistune.model.tiny import tiny_vlm

            model = tiny_vlm(projector="mlp2x_gelu", image_size=224, patch_size=32)
            with torch.no_grad():  # weights large enough for varied answers
                g = torch.Generator().manual_seed(1)
                for p in model.llm.parameters():
                    if p.dim() >= 2:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        else:
            from vistune.model.vlm import VisionLanguageModel

            model = VisionLanguageModel.build(model_config(small_clip(root / "clip")))
        model = Assistant.wrap(model.eval())
        ids_seen = [SimpleNamespace(input_ids=torch.tensor(model.renderer.render(
            Request.of("x", draw_image(0)).messages, num_images=1, add_generation_prompt=True).input_ids))]
        image_token_id = peer_image_token(model.tokenizer, ids_seen)
        peer = build_peer(model, image_token_id).eval()
        buffer = torch.ones(128 * 2**20, dtype=torch.float32)  # 512 MiB
        nbytes = weight_bytes(model.llm)

        image = draw_image(1)
        question = "Describe this image in detail."
        decode_params = SamplingParams(max_new_tokens=args.new_tokens)
        rows: dict[str, list[float]] = {k: [] for k in ("v_decode", "p_decode", "bandwidth", "v_ttft_again",
                                                         "p_ttft_again", "v_ttft_new", "p_ttft_new")}
        same = True

        def vistune_run(req):
            times: list[float] = []
            t0 = time.perf_counter()
            done = model.engine().generate([req], on_event=lambda e: times.append(time.perf_counter()))[0]
            end = time.perf_counter()
            return times[0] - t0, (done.completion_tokens - 1) / max(end - times[0], 1e-9), done.token_ids

        def pixels_of(im):
            return model.image_processor.batch([im])

        with torch.no_grad():
            for rnd in range(args.rounds + 1):  # the first round warms up
                first_token = Request.of(question, image, params=SamplingParams(max_new_tokens=1))
                fresh = draw_image(100 + rnd)
                fresh_req = Request.of(question, fresh, params=SamplingParams(max_new_tokens=1))
                long_req = Request.of(question, image, params=decode_params)
                figures = {}
                sides = [("v", lambda: (vistune_run(long_req), vistune_run(first_token)[0], vistune_run(fresh_req)[0])),
                         ("p", lambda: (peer_generate(peer, lambda: (model.engine().render(long_req), pixels_of(image)),
                                                      args.new_tokens, image_token_id),
                                        peer_generate(peer, lambda: (model.engine().render(first_token),
                                                                     pixels_of(image)), 1, image_token_id)[0],
                                        peer_generate(peer, lambda: (model.engine().render(fresh_req),
                                                                     pixels_of(fresh)), 1, image_token_id)[0]))]
                for who, fn in (sides if rnd % 2 else sides[::-1]):
                    figures[who] = fn()
                bandwidth = read_bandwidth(buffer)
                (_, v_rate, v_ids), v_again, v_new = figures["v"]
                (_, p_rate, p_ids), p_again, p_new = figures["p"]
                n = min(len(v_ids), len(p_ids))
                same &= v_ids[:n] == p_ids[:n] and n > 1
                if rnd:
                    for k, v in (("v_decode", v_rate), ("p_decode", p_rate), ("bandwidth", bandwidth),
                                 ("v_ttft_again", v_again), ("p_ttft_again", p_again), ("v_ttft_new", v_new),
                                 ("p_ttft_new", p_new)):
                        rows[k].append(v)
                    print(f"round {rnd}: decode {v_rate:.1f} vs {p_rate:.1f} tok/s ({len(v_ids)} tokens), "
                          f"bandwidth {bandwidth / 1e9:.1f} GB/s; first token, same image again "
                          f"{v_again * 1e3:.0f} vs {p_again * 1e3:.0f} ms, new image {v_new * 1e3:.0f} vs "
                          f"{p_new * 1e3:.0f} ms", flush=True)

            qpath, images = scienceqa_file(root / "sqa", args.questions)
            questions = read_questions(qpath)
            eval_params = SamplingParams(max_new_tokens=args.eval_tokens)
            # the file in slices of one `infer` window, the two sides alternating slice by slice (the machine's
            # speed drifts over minutes); each side's time is the sum over the slices
            window = args.batch * LENGTH_WINDOW
            seconds: dict[str, list[float]] = {"v": [], "p": []}
            answers: dict[str, list[str]] = {"v": [], "p": []}
            for rnd in range(args.eval_rounds):
                engine = Engine(model, max_batch_size=args.batch)  # a fresh engine per pass: nothing kept yet
                out = root / f"answers-{rnd}.jsonl"
                total = {"v": 0.0, "p": 0.0}
                texts: dict[str, list[str]] = {"v": [], "p": []}
                for k, start in enumerate(range(0, len(questions), window)):
                    part = questions[start:start + window]
                    for who in (("v", "p") if (k + rnd) % 2 else ("p", "v")):
                        t = time.perf_counter()
                        if who == "v":
                            infer(engine, part, images, out, eval_params, batch_size=args.batch)
                        else:
                            ids = peer_answers(peer, model.engine(), part, images, args.batch, args.eval_tokens,
                                               image_token_id)
                            texts["p"] += [model.decode_answer(a) for a in ids]
                        total[who] += time.perf_counter() - t
                texts["v"] = [json.loads(line)["text"] for line in out.read_text().splitlines()]
                for who in total:
                    seconds[who].append(total[who])
                answers = texts
                print(f"evaluation pass {rnd + 1}: {len(questions) / total['v']:.2f} vs "
                      f"{len(questions) / total['p']:.2f} questions/s", flush=True)
            rates = {who: [len(questions) / t for t in ts] for who, ts in seconds.items()}
            same_answers = sum(a == b for a, b in zip(answers["v"], answers["p"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    bound = med["bandwidth"] / nbytes
    res = {
        "machine": f"{cpu_name()}; {cpu_flags()}; {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads; precision fp32",
        "decode_tokens_per_s": {"vistune": med["v_decode"], "peer": med["p_decode"]},
        "decode_ratio": med["v_decode"] / med["p_decode"],
        "bandwidth_gb_s": med["bandwidth"] / 1e9, "weight_mb": nbytes / 1e6, "bound_tokens_per_s": bound,
        "fraction_of_bound": {"vistune": med["v_decode"] / bound, "peer": med["p_decode"] / bound},
        "same_tokens": same,
        "ttft_again_ms": {"vistune": med["v_ttft_again"] * 1e3, "peer": med["p_ttft_again"] * 1e3},
        "ttft_again_ratio": med["p_ttft_again"] / med["v_ttft_again"],
        "ttft_new_ms": {"vistune": med["v_ttft_new"] * 1e3, "peer": med["p_ttft_new"] * 1e3},
        "ttft_new_ratio": med["p_ttft_new"] / med["v_ttft_new"],
        "eval_questions_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "eval_ratio": statistics.median(rates["v"]) / statistics.median(rates["p"]),
        "eval_same_answers": same_answers, "eval_questions": len(questions),
    }
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}\nmachine: {res['machine']}")
    print(f"decode (batch 1, {args.new_tokens} tokens): vistune {med['v_decode']:.1f}, peer {med['p_decode']:.1f} "
          f"tok/s ({res['decode_ratio']:.2f}x; same greedy tokens: {same}); bound {bound:.1f} tok/s "
          f"({nbytes / 1e6:.0f} MB of weights at {med['bandwidth'] / 1e9:.1f} GB/s): vistune at "
          f"{res['fraction_of_bound']['vistune'] * 100:.0f} %, peer at {res['fraction_of_bound']['peer'] * 100:.0f} %")
    print(f"first token with an image: same image again {med['v_ttft_again'] * 1e3:.0f} vs "
          f"{med['p_ttft_again'] * 1e3:.0f} ms ({res['ttft_again_ratio']:.2f}x); new image "
          f"{med['v_ttft_new'] * 1e3:.0f} vs {med['p_ttft_new'] * 1e3:.0f} ms ({res['ttft_new_ratio']:.2f}x)")
    print(f"evaluation ({len(questions)} ScienceQA-shaped questions, batch {args.batch}, at most {args.eval_tokens} "
          f"tokens): {res['eval_questions_per_s']['v']:.2f} vs {res['eval_questions_per_s']['p']:.2f} questions/s "
          f"({res['eval_ratio']:.2f}x; same answers {same_answers}/{len(questions)})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"ratios vs generate: decode {res['decode_ratio']:.2f}x, first token {res['ttft_again_ratio']:.2f}x "
          f"(same image) / {res['ttft_new_ratio']:.2f}x (new image), evaluation {res['eval_ratio']:.2f}x")
    return res


if __name__ == "__main__":
    main()
