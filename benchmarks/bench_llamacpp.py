"""vistune's chat engine against llama.cpp on the same exported model: time to first token and decode speed.

    .venv/bin/python benchmarks/bench_llamacpp.py [--model CKPT] [--reps 3] [--new-tokens 48] [--threads 2]

The model is a checkpoint (`--model`, exportable to GGUF) or, by default, SmolLM2-135M-Instruct with a random
SigLIP tower at 224 px / patch 32 (49 image tokens, 4 blocks of width 256) and a two-layer GELU projector. It is
exported with `vistune export --to gguf` in f32 and q8_0; each repetition then asks the same question about a photo
(greedy) of vistune's engine (fp32, `Engine.generate`, no kept prompt starts), llama.cpp with the f32 files and
llama.cpp with the q8_0 files, in an order that rotates. llama.cpp runs through libllama + libmtmd (built by
`make install`) with its CPU defaults (flash attention, f16 K/V cache), on the same number of threads.

Time to first token: from the request (image decoding and preprocessing, the tower, the prompt) to the first
token's logits; decode: tokens after the first per second. Medians over the repetitions after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_description() -> str:
    """The CPU's model name and whether it has AVX512-BF16 / AMX (what decides bf16 against fp32 speed)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(extras) or 'no AVX2'}), {torch.get_num_threads()} threads"


def default_model():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from vistune.config import ModelConfig
    from vistune.model.llm import load_llm
    from vistune.model.vision import HFVisionTower
    from vistune.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    tower = HFVisionTower(SiglipVisionModel(SiglipVisionConfig(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224,
        patch_size=32)), layer=-2, select="patch")
    llm, tokenizer = load_llm("smollm2-135m-instruct")
    config = ModelConfig(vision_tower="random-siglip-224/32", vision_layer=-2, projector="mlp2x_gelu",
                         llm="smollm2-135m-instruct", template="chat_template")
    return VisionLanguageModel.from_parts(config, tower, llm, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="vistune checkpoint (default: SmolLM2-135M + a random SigLIP tower)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from matplotlib import cbook
    from PIL import Image

    from vistune.inference.engine import Engine, Request
    from vistune.inference.generate import SamplingParams
    from vistune.inference.llamacpp import LlamaCppModel, runtime_problem
    from vistune.model.checkpoint import load_checkpoint, save_checkpoint
    from vistune.model.gguf_export import export_gguf

    problem = runtime_problem()
    if problem:
        raise SystemExit(problem)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB")
    question = "Describe this image in detail."
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        checkpoint = Path(args.model) if args.model else Path(tmp) / "ckpt"
        if not args.model:
            save_checkpoint(default_model(), checkpoint)
        model = load_checkpoint(checkpoint)
        engine = Engine(model, prefix_reuse=False)
        runtimes = {}
        for outtype in ("f32", "q8_0"):
            out = export_gguf(checkpoint, Path(tmp) / f"gguf-{outtype}", outtype)
            runtimes[outtype] = LlamaCppModel(out / "model.gguf", out / "mmproj.gguf", threads=args.threads)
            prompt = runtimes[outtype].chat_prompt([{"role": "user", "content": [{"type": "image"},
                                                                                   {"type": "text", "text": question}]}])

        def ours():
            times: list[float] = []
            t0 = time.perf_counter()
            request = Request.of(question, image, params=SamplingParams(max_new_tokens=args.new_tokens))
            done = engine.generate([request], on_event=lambda e: times.append(time.perf_counter()))[0]
            end = time.perf_counter()
            return times[0] - t0, (done.completion_tokens - 1) / max(end - times[0], 1e-9), done.completion_tokens

        def theirs(outtype):
            g = runtimes[outtype].generate(prompt, [image], args.new_tokens)
            return g.time_to_first_token, (len(g.tokens) - 1) / max(g.decode_seconds, 1e-9), len(g.tokens)

        sides = {"vistune fp32": ours, "llama.cpp f32": lambda: theirs("f32"), "llama.cpp q8_0": lambda: theirs("q8_0")}
        names = list(sides)
        rows: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
        for rep in range(args.reps + 1):  # repetition 0 warms up
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                result = sides[name]()
                if rep:
                    rows[name].append(result)
                    print(f"rep {rep} {name}: TTFT {result[0] * 1e3:.0f} ms, decode {result[1]:.1f} tok/s "
                          f"({result[2]} tokens)", flush=True)
        for r in runtimes.values():
            r.close()
    med = {n: (statistics.median(x[0] for x in rows[n]), statistics.median(x[1] for x in rows[n])) for n in names}
    print()
    print(f"model: {args.model or 'SmolLM2-135M-Instruct + random SigLIP 224/32 (49 image tokens) + mlp2x_gelu'}")
    print(f"cpu: {cpu_description()}; torch {torch.__version__}")
    print("precision: vistune fp32; llama.cpp f32 and q8_0 language model (mmproj f32 / f16 tower), flash attention, "
          "f16 K/V cache")
    base_ttft, base_decode = med["vistune fp32"]
    for n in names:
        ttft, decode = med[n]
        print(f"{n:15s} TTFT {ttft * 1e3:6.0f} ms ({base_ttft / ttft:4.2f}x of vistune's speed), decode "
              f"{decode:6.1f} tok/s ({decode / base_decode:4.2f}x)  [median of {args.reps}]")
    return med


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
