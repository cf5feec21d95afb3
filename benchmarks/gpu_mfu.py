"""Model-FLOPs utilisation of a stage-2 training step at LLaVA-1.5-7B shapes (random weights).

    python benchmarks/gpu_mfu.py [--steps 8] [--seq-len 4096] [--rows 2] [--no-checkpointing] [--attn segment]
    torchrun --nproc-per-node 8 benchmarks/gpu_mfu.py          # FSDP2 (fully_shard per decoder layer)
    python benchmarks/gpu_mfu.py --toy                          # tiny shapes on CPU (what the test runs)

The model is vistune's `VisionLanguageModel`: a CLIP ViT-L/14 tower at 336 px (576 image tokens), the
two-layer GELU projector and a Llama-shaped 7B LLM (4096 wide, 32 layers, 11008 MLP, 32000 words), all random,
bf16 weights, fused AdamW on the projector and the LLM. Samples (576 image tokens + 40-600 text tokens, half
of the text supervised) are packed into rows of `--seq-len` tokens (`collate(pack=...)`: positions restart per
sample, so the LLM's packed-sequence attention keeps them apart: with flash-attention the rows go to the
variable-length kernel; without it, to vistune's span-wise attention, causal SDPA per sample, what
`vistune train` uses). The model is built on the device in bf16 (no 7B initialisation on the host). The
tower's features are computed once before timing, as the feature cache does.

MFU = model FLOPs per second / the device's dense bf16 peak. Model FLOPs per step: 6 x (linear-layer
parameters) x tokens + 6 x 2 x T^2 x d x layers per sample for causal attention + 6 x d x V per supervised
token for the LM head + the projector; recomputation under gradient checkpointing is not counted. The peak is
the datasheet figure for known GPUs (H100/H200 SXM 989 TFLOP/s, A100 312), else a measured 8192^3 matmul.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch

from vistune.model.llm import compile_decoder_layers, enable_checkpointing

DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "GH200": 989e12}


def shapes(toy: bool) -> dict:
    if toy:
        return {"vision": dict(image_size=56, patch_size=14, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4),
                "llm": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, vocab_size=1000, max_position_embeddings=1024)}
    return {"vision": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, projection_dim=768),
            "llm": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)}


def build(toy: bool, dtype: torch.dtype, attn: str, device: torch.device | str = "cpu",
          tokenizer: str = "smollm2-135m-instruct"):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from vistune.config import ModelConfig
    from vistune.model.llm import load_tokenizer
    from vistune.model.packed_attention import use_segment_attention
    from vistune.model.vision import HFVisionTower
    from vistune.model.vlm import VisionLanguageModel

    s = shapes(toy)
    tokenizer = load_tokenizer(tokenizer)  # a name or a directory: only its pad id and template are used
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            tower = HFVisionTower(CLIPVisionModel(CLIPVisionConfig(**s["vision"])), layer=-2, select="patch")
            llm = LlamaForCausalLM(LlamaConfig(**s["llm"], tie_word_embeddings=False,
                                               attn_implementation="sdpa" if attn == "segment" else attn,
                                               pad_token_id=0))
            cfg = ModelConfig(vision_tower="clip-vit-l-336-shapes", projector="mlp2x_gelu", llm="llama-7b-shapes")
            model = VisionLanguageModel.from_parts(cfg, tower, llm, tokenizer)
    finally:
        torch.set_default_dtype(default_dtype)
    if attn == "segment":
        use_segment_attention(model.llm)
    return model.to(device=device, dtype=dtype)


def make_rows(model, n_samples: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """`n_samples` image + text samples packed into rows of `seq_len` tokens (image positions marked)."""
    from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID
    from vistune.data.dataset import Sample, collate

    rng = random.Random(seed)
    n_img = model.num_image_tokens
    samples = []
    for i in range(n_samples):
        text = rng.randint(40, min(600, max(41, seq_len - n_img - 8)))
        ids = torch.tensor([1] + [IMAGE_TOKEN_ID] * n_img + [rng.randrange(3, vocab) for _ in range(text)])
        labels = ids.clone()
        labels[: 1 + n_img + text // 2] = IGNORE_INDEX
        samples.append(Sample(str(i), ids, labels, None, features=torch.zeros(0), image_key=str(i)))
    batch = collate(samples, pad_id=0, pack=seq_len)
    batch["lengths"] = [len(s.input_ids) for s in samples]
    batch["supervised"] = [int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples]
    return batch


def step_flops(model, lengths: list[int], supervised: list[int]) -> float:
    """Model FLOPs of one forward + backward over these samples (`vistune.train.flops`, stage 2)."""
    from vistune.train.flops import FlopCounter

    image_tokens = model.num_image_tokens * len(lengths)
    return FlopCounter.of(model).step(lengths, sum(supervised), image_tokens, stage=2)


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in DATASHEET_BF16.items():
            if key in name:
                return value, f"{name} (datasheet dense bf16)"
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        return 10 * 2 * 8192**3 / (time.perf_counter() - t), f"{name} (measured 8192^3 bf16 matmul)"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from matmul_peak import measure

    res = measure(tokens=256, hidden=64, intermediate=172, vocab=1000, seconds=0.1, bf16=False)
    return res["peak"]["fp32"], "CPU (measured fp32 matmul)"


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="tiny shapes, CPU, fp32 (seconds)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--seq-len", type=int, default=4096, help="tokens per packed row")
    ap.add_argument("--rows", type=int, default=2, help="packed rows per micro-batch (per process)")
    ap.add_argument("--no-checkpointing", action="store_true", help="keep activations (needs more memory)")
    ap.add_argument("--attn", default=None,
                    help="segment (causal SDPA per packed sample) | sdpa (one block-diagonal mask per row) | "
                         "flash_attention_2 | flex_attention (default: flash if installed, else segment)")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct",
                    help="tokenizer name or directory (only its pad id and template are used)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (as train.compile)")
    ap.add_argument("--profile", help="after the timed steps, profile one more step and write the operators "
                                      "sorted by device time to this file")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() and not args.toy else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cpu") if args.toy or not torch.cuda.is_available() else \
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    attn = args.attn or ("flash_attention_2" if device.type == "cuda" and _has_flash() else "segment")
    seq_len = min(args.seq_len, 128) if args.toy else args.seq_len
    torch.manual_seed(rank)
    model = build(args.toy, dtype, attn, device, args.tokenizer)
    model.vision_tower.requires_grad_(False)
    if not args.no_checkpointing:
        enable_checkpointing(model.llm)
    if args.compile:
        compile_decoder_layers(model.llm)  # what `train.compile` does: dynamic shapes, so span lengths reuse graphs
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.llm.model.layers:
            fully_shard(layer)
        fully_shard(model.llm)
    trainable = [p for n, p in model.named_parameters() if not n.startswith("vision_tower")]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True if device.type == "cuda" else None)

    # samples per micro-batch: about `rows` rows of `seq_len` tokens
    n_img = model.num_image_tokens
    mean_len = 1 + n_img + (40 + min(600, max(41, seq_len - n_img - 8))) / 2
    per_batch = max(1, int(args.rows * seq_len / mean_len * 0.95))
    pixels = torch.randn(1, 3, model.vision_tower.image_size, model.vision_tower.image_size, device=device,
                         dtype=dtype)
    with torch.no_grad():
        features = model.vision_tower(pixels)  # (1, N, D_v): the cached features of every image
    times, flops, tokens, losses = [], 0.0, 0, []

    def train_step(batch: dict) -> float:
        out = model(batch["input_ids"].to(device), labels=batch["labels"].to(device),
                    position_ids=batch["position_ids"].to(device),
                    image_features=features.expand(len(batch["image_features"]), -1, -1))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(out.loss.detach())

    for step in range(args.steps + 2):
        batch = make_rows(model, per_batch, seq_len, model.llm.config.vocab_size, seed=step * 1000 + rank)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(train_step(batch))
        if step >= 2:
            times.append(time.perf_counter() - t0)
            flops += step_flops(model, batch["lengths"], batch["supervised"])
            tokens += int(batch["attention_mask"].sum())
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            train_step(batch)
        sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
        with open(args.profile, "w", encoding="utf-8") as f:
            f.write(prof.key_averages().table(sort_by=sort, row_limit=40))
    seconds = sum(times)
    peak, peak_name = peak_flops(device)
    result = {"device": peak_name, "world_size": world, "attn": attn, "checkpointing": not args.no_checkpointing,
              "seq_len": seq_len, "rows_per_step": int(batch["input_ids"].shape[0]), "samples_per_step": per_batch,
              "tokens_per_s": tokens / seconds * world, "model_flops_per_s": flops / seconds * world,
              "mfu": flops / seconds / peak, "step_s": seconds / len(times), "step_times_s": times, "loss": losses[-1],
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    if rank == 0:
        print(f"{peak_name}; {world} process(es); attention {attn}; checkpointing {result['checkpointing']}; "
              f"{result['rows_per_step']} row(s) x {seq_len} tokens ({per_batch} samples) per step and process")
        print(f"step {result['step_s']:.3f} s, {result['tokens_per_s']:.0f} tokens/s, "
              f"{result['model_flops_per_s'] / 1e12:.3f} TFLOP/s, MFU {result['mfu'] * 100:.1f} %"
              + (f", peak memory {result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] else ""))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if not math.isfinite(result["loss"]):
        raise SystemExit(f"non-finite loss {result['loss']}")
    return result


def _has_flash() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    run()
