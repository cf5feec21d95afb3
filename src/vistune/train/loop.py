"""One training loop for both stages; what differs between stages is configuration.

    train(run) -> output_dir/final

Each optimizer step takes one global batch (`train.global_batch_size` samples) as micro-batches x
gradient-accumulation steps x processes. The loss is the summed cross-entropy of the supervised tokens divided
by their count over the whole global batch (counted before the forward passes and summed over processes), so
the update does not depend on how the batch is split. Run directory:

    config.yaml        the resolved run config
    metrics.jsonl      one record per logged step
    loss.png           loss and learning rate (written at the end)
    checkpoints/step-N/   resumable checkpoints (model + trainer state), the last `train.keep_last`
    final/             the trained model (`vistune.load` opens it)
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from vistune.config import ConfigError, RunConfig, check_matches_checkpoint, dump_yaml, to_dict
from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID
from vistune.data.dataset import REASONS, LlavaDataset, collate
from vistune.data.feature_cache import FeatureCache
from vistune.model.checkpoint import write_checkpoint_files
from vistune.model.llm import compile_decoder_layers, enable_checkpointing, is_peft_model
from vistune.model.packed_attention import use_segment_attention
from vistune.train import distributed as D
from vistune.train import state as S
from vistune.train.flops import FlopCounter
from vistune.train.optim import build_optimizer, lr_factor, set_lr, set_trainable, warmup_steps
from vistune.train.sampler import epoch_batches, rank_micro_batches, steps_per_epoch
from vistune.train.step_timer import StepTimer
from vistune.utils.io import (
    atomic_write_jsonl,
    atomic_write_text,
    commit_dir,
    read_json_or_jsonl,
    repair_jsonl_tail,
)

log = logging.getLogger(__name__)

# Keys that may change when a run is resumed: bookkeeping (checkpoints, logs, data workers), which never changes
# the weights, and the time budget, which decides only where the run stops. `train.max_steps` and `train.epochs`
# are not among them: they set the length of the learning-rate schedule, so the steps after the resume would
# follow another schedule than the steps before it.
RESUMABLE_CHANGES = {"train.save_every", "train.keep_last", "train.log_every", "train.tensorboard",
                     "train.max_minutes", "train.sync_timing", "data.num_workers"}


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, too little data, nothing to resume)."""


@dataclass
class TrainHooks:
    """Callbacks for tests and tools, run on every process."""

    after_step: Callable[[int, torch.nn.Module], None] | None = None
    """After optimizer step `step` (1-based) is applied, before it is logged or saved; gets the model."""
    at_compute: Callable[[int, float, torch.nn.Module], None] | None = None
    """After optimizer step `step`, with the model FLOPs spent so far (`vistune.train.flops`) and the model."""
    before_commit: Callable[[int, Path], None] | None = None
    """A resumable checkpoint's files are all written into this temporary directory, not yet renamed."""


# --------------------------------------------------------------------------------------------------
# model


def build_model(run: RunConfig, resume_from: Path | None):
    """The model to train: a resumable checkpoint, else `init_from`, else fresh parts named in `run.model`."""
    from vistune.model.checkpoint import load_checkpoint
    from vistune.model.vlm import VisionLanguageModel
    from vistune.train.lora import add_lora, merge_lora

    cfg = run.train
    lora = cfg.stage == 2 and cfg.lora
    if resume_from is not None:
        model = load_checkpoint(resume_from, dtype=torch.float32, trainable_lora=lora)
    elif run.init_from is not None:
        check_matches_checkpoint(run.model, run.init_from)  # load_run_config made them match; RunConfig(...) may not
        model = load_checkpoint(run.init_from, dtype=torch.float32, trainable_lora=lora)
        if (model.config.template, model.config.system_prompt) != (run.model.template, run.model.system_prompt):
            model.set_conversation(run.model.template, run.model.system_prompt)
    else:
        model = VisionLanguageModel.build(run.model, dtype=torch.float32)
    if is_peft_model(model.llm) and cfg.stage == 2 and not cfg.lora:
        merge_lora(model)  # full fine-tuning from an unmerged LoRA checkpoint
    if lora:
        add_lora(model, cfg)
    set_trainable(model, cfg.stage, lora)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model.llm)
    return model


# --------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, progress: bool = True, resume: bool | None = None,
          hooks: TrainHooks | None = None) -> Path:
    """Train as `run` says and return the final checkpoint directory (`output_dir/final`).

    resume: None resumes when `output_dir/checkpoints` has a checkpoint, True requires one, False starts over
    (deleting earlier checkpoints, metrics and final model of this output directory). A run that fails before
    it saved anything leaves no output directory behind (when it created it).
    """
    hooks = hooks or TrainHooks()
    cfg = run.train
    if cfg.malloc_tuning:
        keep_freed_memory()
    out = Path(run.output_dir)
    created = not out.exists()
    world = D.init_world(cfg.device)
    try:
        return _Trainer(run, world, progress, hooks).run(resume)
    except BaseException:
        if created and world.is_main and not S.list_checkpoints(out / "checkpoints") and not (out / "final").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        D.close_world(world)


class _Trainer:
    def __init__(self, run: RunConfig, world: D.World, progress: bool, hooks: TrainHooks) -> None:
        self.run_cfg, self.cfg, self.world, self.hooks = run, run.train, world, hooks
        self.accum = self.cfg.check_batch(world.size)
        self.out = Path(run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        self.show_progress = progress and world.is_main
        self.skipped: Counter[str] = Counter()
        self.flops = 0.0
        """Model FLOPs of the steps taken so far (`vistune.train.flops`), all processes together."""

    # -------------------------------------------------------------------------------------------
    def run(self, resume: bool | None) -> Path:
        world, cfg = self.world, self.cfg
        resume_from = self._prepare_dir(resume)
        _seed_everything(cfg.seed)
        model = build_model(self.run_cfg, resume_from)
        model.to(world.device).train()
        self.model = model
        data = self.run_cfg.data
        bf16 = self.bf16 = D.resolve_precision(cfg.precision, world.device)
        self.feature_cache = self._feature_cache(model)
        ds = LlavaDataset(data.path, data.image_folder, model.renderer, model.image_processor,
                          max_length=data.max_length, seed=cfg.seed, placement=data.placement,
                          feature_cache=self.feature_cache, max_image_tokens=model.config.max_image_tokens)
        if len(ds) < cfg.global_batch_size:
            raise TrainingError(f"{data.path} has {len(ds)} usable record(s) ({sum(ds.skipped.values())} invalid), "
                                f"fewer than one global batch of {cfg.global_batch_size}")
        self.ds = ds
        if resume_from is None and cfg.projector_init == "ridge":
            self._warm_start_projector(model, ds)
        self.lengths = ds.lengths
        self.has_image = [ds.has_image(i) for i in range(len(ds))]
        self.spe = steps_per_epoch(len(ds), cfg.global_batch_size)
        self.total = cfg.max_steps or math.ceil(cfg.epochs * self.spe)
        self.warmup = warmup_steps(cfg, self.total)

        self.skeleton = D.meta_skeleton(model) if world.distributed and cfg.strategy == "fsdp" else None
        self.pack_length = self._pack_length(model)
        if cfg.compile:
            log.info("compiling %d decoder module(s) of the LLM (the first steps are slower)",
                     compile_decoder_layers(model.llm))
        self.wrapped = D.wrap(D.TrainStep(model), world, cfg.strategy, bf16)
        self.optimizer = build_optimizer(model, cfg)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.flop_counter = FlopCounter.of(model)

        step = 0
        if resume_from is not None:
            step = self._restore(resume_from)
        if world.is_main:
            log.info("stage %d: %d trainable / %d parameters; %d samples, %d steps/epoch, %d steps, "
                     "global batch %d = %d x %d accumulation x %d process(es); %s", cfg.stage,
                     sum(p.numel() for p in self.trainable), sum(p.numel() for p in model.parameters()), len(ds),
                     self.spe, self.total, cfg.global_batch_size, cfg.micro_batch_size, self.accum, world.size,
                     "bf16 autocast" if self.bf16 else "fp32")
        self._loop(step)
        return self.out / "final"

    def _pack_length(self, model) -> int | None:
        """Tokens per packed row (None: no packing). Where attention runs per sample (span-wise SDPA on CPU,
        variable-length flash attention), a row's length costs nothing, so a micro-batch becomes one row with no
        padding at all; elsewhere (a masked row costs its full square) rows hold up to `data.max_length`."""
        if not self.cfg.packing:
            return None
        span_wise = use_segment_attention(model.llm) or str(model.llm.config._attn_implementation).startswith("flash")
        return self.run_cfg.data.max_length * (self.cfg.micro_batch_size if span_wise else 1)

    def _feature_cache(self, model) -> FeatureCache | None:
        cfg = self.cfg
        if not cfg.feature_cache:
            return None
        if self.world.distributed and cfg.strategy == "fsdp":
            log.info("train.feature_cache is off under FSDP (the tower is sharded)")
            return None
        directory = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else self.out / "feature_cache"
        return FeatureCache(directory, model.feature_fingerprint("bf16" if self.bf16 else "fp32"))

    def _image_features(self, batch: dict) -> torch.Tensor | None:
        """The tower's features of a batch's images (I, N, D_v): from the cache, else computed (under the step's
        autocast, as the model would) and stored. None without a cache (the model runs the tower itself).
        Each image goes through the tower alone, so its features do not depend on which images share its batch
        (a resumed run computes exactly what the uninterrupted one did)."""
        if "image_features" not in batch:
            return None
        features, keys = list(batch["image_features"]), batch["image_keys"]
        missing = [i for i, f in enumerate(features) if f is None]
        if "image_sizes" in batch:  # anyres: (P, N, D_v) per image, every tile an entry of its own
            return self._tile_features(batch, features, keys, missing)
        if missing:
            pixels = batch["pixel_values"].to(self.world.device)  # (I_missing, 3, H, W)
            with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                for j, i in enumerate(missing):
                    features[i] = self.model.vision_tower(pixels[j: j + 1])[0]  # (N, D_v)
                    self.feature_cache.store(keys[i], features[i])
        return torch.stack([f.to(self.world.device) for f in features])

    def _tile_features(self, batch: dict, features: list, keys: list, missing: list[int]) -> torch.Tensor:
        """`_image_features` for anyres: every tile's features (sum of P, N, D_v), image after image."""
        sizes = batch["image_sizes"]
        counts = self.model.tiles_per_image([sizes[i] for i in missing])
        tiles = torch.split(batch["pixel_values"], counts) if missing else []  # per missing image: (P, 3, H, W)
        with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for i, pixels in zip(missing, tiles):
                features[i] = torch.cat([self.model.vision_tower(t[None].to(self.world.device)) for t in pixels])
                self.feature_cache.store_tiles(keys[i], features[i])
        return torch.cat([f.to(self.world.device) for f in features])

    def _warm_start_projector(self, model, ds: LlavaDataset) -> None:
        from vistune.train.projector_init import ridge_warm_start

        cfg = self.cfg
        try:
            fit = ridge_warm_start(model, ds, cfg.projector_init_ridge, cfg.projector_init_images, seed=cfg.seed,
                                   world=self.world, progress=self.show_progress,
                                   captions=cfg.projector_init_captions)
        except (OSError, ValueError) as e:
            raise TrainingError(f"projector warm start: {e}") from e
        if self.world.is_main:
            log.info("projector warm start (ridge %g) over %d images (%d unreadable): captions' embedding "
                     "variance explained %.2f", cfg.projector_init_ridge, fit.images, fit.skipped, fit.fit_r2)

    def _prepare_dir(self, resume: bool | None) -> Path | None:
        world = self.world
        existing = S.list_checkpoints(self.ckpt_dir)
        if resume is True and not existing:
            raise TrainingError(f"--resume: no checkpoint in {self.ckpt_dir}")
        resume_from = existing[-1] if existing and resume is not False else None
        if world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if resume is False:
                for p in (self.ckpt_dir, self.out / "final", self.out / "tensorboard", self.out / "loss.png"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                self.metrics_path.unlink(missing_ok=True)
            S.remove_partial(self.ckpt_dir)
            shutil.rmtree(self.out / ".final.tmp", ignore_errors=True)
            if resume_from is not None:
                self._check_resumed_config(resume_from)
            atomic_write_text(self.out / "config.yaml", dump_yaml(self.run_cfg))
        D.barrier(world)
        return resume_from

    def _check_resumed_config(self, ckpt: Path) -> None:
        saved = json.loads((ckpt / S.STATE_NAME).read_text()).get("run_config", {})
        now = to_dict(self.run_cfg)
        changed = [f"{section}.{k}" for section in ("model", "data", "train") for k in now[section]
                   if saved.get(section, {}).get(k) != now[section][k]]
        changed += [k for k in ("init_from",) if saved.get(k) != now[k]]
        changed = [k for k in changed if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"cannot resume {ckpt}: the config changed in {', '.join(changed)} (use --no-resume "
                              f"to start over, or a new output_dir)")

    def _restore(self, ckpt: Path) -> int:
        state = json.loads((ckpt / S.STATE_NAME).read_text())
        schedule = {"name": self.cfg.schedule, "warmup_steps": self.warmup, "total_steps": self.total}
        saved = {k: state.get("scheduler", {}).get(k) for k in schedule}
        if saved != schedule:  # e.g. the data file changed length under the same config
            raise ConfigError(f"cannot resume {ckpt}: its learning-rate schedule {saved} differs from this run's "
                              f"{schedule} (use --no-resume to start over, or a new output_dir)")
        optim_sd = S.load_optimizer(ckpt, state["optimizer"]) if self.world.is_main else {}
        D.load_full_state(self.wrapped, self.optimizer, self.world, optim_sd)
        if not S.load_rng(ckpt, self.world.rank):
            log.warning("checkpoint %s has no RNG state for rank %d (different process count?)", ckpt,
                        self.world.rank)
        self.skipped = Counter(state.get("skipped", {}))
        self.flops = float(state.get("flops", 0.0))
        step = int(state["step"])
        if self.world.is_main:
            kept = [r for r in _read_metrics(self.metrics_path) if r.get("step", 0) <= step]
            atomic_write_jsonl(self.metrics_path, kept)
            log.info("resumed from %s at step %d", ckpt, step)
        return step

    # -------------------------------------------------------------------------------------------
    def _loop(self, step: int) -> None:
        cfg, world = self.cfg, self.world
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=step, desc=f"stage {cfg.stage}", unit="step", dynamic_ncols=True)
        writer = self._tensorboard()
        metrics = open(self.metrics_path, "a", encoding="utf-8") if world.is_main else None
        start = time.monotonic()
        window = {"tokens": 0.0, "t": time.monotonic()}
        self.timer = StepTimer(world.device, sync=cfg.sync_timing)
        try:
            stopped_early = False
            while step < self.total and not stopped_early:
                epoch, pos = divmod(step, self.spe)
                for micro in self._epoch_micro_batches(epoch, pos):
                    self.timer.lap("data")
                    stats = self._step(step, micro)
                    self.timer.step_done()
                    step += 1
                    if self.hooks.after_step:
                        self.hooks.after_step(step, self.model)
                    if self.hooks.at_compute:
                        self.hooks.at_compute(step, self.flops, self.model)
                    window["tokens"] += stats["tokens"]
                    last = step == self.total
                    over_time = cfg.max_minutes is not None and time.monotonic() - start > cfg.max_minutes * 60
                    if step % cfg.log_every == 0 or last or over_time:
                        now = time.monotonic()
                        record = self._record(step, stats, window["tokens"] / max(now - window["t"], 1e-9),
                                              now - start)
                        window = {"tokens": 0.0, "t": now}
                        if metrics is not None:
                            metrics.write(json.dumps(record) + "\n")
                            metrics.flush()
                        if writer is not None:
                            for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                                writer.add_scalar(f"train/{k}", record[k], step)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                            tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
                    if cfg.save_every and step % cfg.save_every == 0 and not last and not over_time:
                        self._save_resumable(step)
                    if last or over_time:
                        stopped_early = over_time and not last
                        if stopped_early and world.is_main:
                            log.info("time budget of %.1f min reached after step %d of %d", cfg.max_minutes, step,
                                     self.total)
                        break
                    self.timer.lap("bookkeeping")
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
            if writer is not None:
                writer.close()
        self._save_resumable(step)
        self._save_final(step)

    def _epoch_micro_batches(self, epoch: int, pos: int):
        """Yield, per remaining global batch of `epoch` (from position `pos`), this process's micro-batches."""
        cfg, world, ds = self.cfg, self.world, self.ds
        batches = epoch_batches(self.lengths, self.has_image, cfg.global_batch_size, cfg.seed, epoch,
                                self.run_cfg.data.group_by_length)[pos:]
        ds.set_epoch(epoch)
        plan = [mb for b in batches for mb in rank_micro_batches(b, cfg.micro_batch_size, world.size, world.rank)]
        workers = self.run_cfg.data.num_workers
        loader = DataLoader(ds, batch_sampler=plan, num_workers=workers,
                            collate_fn=partial(collate, pad_id=self.model.tokenizer.pad_token_id,
                                               pack=self.pack_length),
                            generator=torch.Generator().manual_seed(cfg.seed + epoch),  # leaves the global RNG alone
                            persistent_workers=False, prefetch_factor=4 if workers else None)
        it = iter(loader)
        for _ in batches:
            yield [next(it) for _ in range(self.accum)]

    def _step(self, step: int, micro: list[dict]) -> dict:
        cfg, world = self.cfg, self.world
        local_skipped = Counter()
        sup = tokens = padded = samples = 0
        flops = 0.0
        for mb in micro:
            local_skipped.update(mb["skipped"])
            if mb["input_ids"] is not None:
                mb_sup = int((mb["labels"][:, 1:] != IGNORE_INDEX).sum())
                sup += mb_sup
                tokens += int(mb["attention_mask"].sum())
                padded += mb["input_ids"].numel()
                samples += len(mb["ids"])
                flops += self.flop_counter.step(mb["sample_lengths"], mb_sup,
                                                int((mb["input_ids"] == IMAGE_TOKEN_ID).sum()), cfg.stage)
        reasons = sorted(REASONS)
        totals = D.all_sum(world, [sup, tokens, padded, samples, flops]
                           + [local_skipped.get(r, 0) for r in reasons])
        n_sup, n_tok, n_pad, n_samples, step_flops = totals[:5]
        step_skipped = {r: int(v) for r, v in zip(reasons, totals[5:]) if v}
        self.skipped.update(step_skipped)
        factor = lr_factor(step, self.total, self.warmup, cfg.schedule)
        set_lr(self.optimizer, factor)
        stats = {"supervised_tokens": int(n_sup), "tokens": n_tok, "padded_tokens": n_pad, "samples": int(n_samples),
                 "step_skipped": step_skipped, "loss": float("nan"), "grad_norm": float("nan")}
        self.flops += step_flops
        if n_sup == 0:
            log.warning("step %d: no supervised token in the global batch (all samples skipped?); no update", step + 1)
            return stats
        scale = world.size / n_sup  # DDP/FSDP average over processes; this turns it into a global token mean
        autocast = torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        loss_total = torch.zeros((), dtype=torch.float64)
        timer = self.timer
        for i, mb in enumerate(micro):
            timer.lap("bookkeeping")
            batch = mb if mb["input_ids"] is not None else self._empty_batch()
            features = self._image_features(batch)
            timer.lap("data")
            position_ids = batch.get("position_ids")  # (R, T) when packed
            if position_ids is not None:
                position_ids = position_ids.to(world.device)
            with D.set_grad_sync(self.wrapped, world, cfg.strategy, sync=i == len(micro) - 1):
                with autocast:
                    loss_sum = self.wrapped(input_ids=batch["input_ids"].to(world.device),
                                            attention_mask=batch["attention_mask"].to(world.device),
                                            pixel_values=None if batch["pixel_values"] is None or features is not None
                                            else batch["pixel_values"].to(world.device),
                                            labels=batch["labels"].to(world.device),
                                            position_ids=position_ids, image_features=features,
                                            image_sizes=batch.get("image_sizes"))
                timer.lap("forward")
                (loss_sum * scale).backward()
                timer.lap("backward")
            loss_total += loss_sum.detach().double().cpu()
        loss = D.all_sum(world, [float(loss_total)])[0] / n_sup
        if not math.isfinite(loss):
            raise TrainingError(self._nonfinite("loss", loss, step + 1))
        timer.lap("bookkeeping")
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            raise TrainingError(self._nonfinite("gradient norm", grad_norm, step + 1))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timer.lap("optimizer")
        stats.update(loss=loss, grad_norm=grad_norm)
        return stats

    def _nonfinite(self, what: str, value: float, step: int) -> str:
        kept = S.list_checkpoints(self.ckpt_dir)
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
        return f"non-finite {what} ({value}) at step {step}; stopping without saving ({where})"

    def _empty_batch(self) -> dict:
        """A one-token, unsupervised batch for a process whose micro-batch was skipped entirely: it still takes
        part in the gradient reduction, contributing zero."""
        pad = self.model.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([[pad]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
                "labels": torch.tensor([[IGNORE_INDEX]]), "pixel_values": None}

    def _record(self, step: int, stats: dict, tokens_per_s: float, elapsed: float) -> dict:
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        record = {
            "step": step, "epoch": round(step / self.spe, 4), "loss": stats["loss"],
            "lr": lrs.get("llm", lrs.get("projector")), "projector_lr": lrs.get("projector"),
            "grad_norm": stats["grad_norm"], "tokens_per_s": round(tokens_per_s, 2), "tokens": int(stats["tokens"]),
            "supervised_tokens": stats["supervised_tokens"], "samples": stats["samples"],
            "padding": round(1 - stats["tokens"] / max(stats["padded_tokens"], 1), 4),
            "skipped": dict(self.skipped), "invalid_records": dict(self.ds.skipped), "elapsed_s": round(elapsed, 2),
            "train_flops": self.flops, "step_time_s": self.timer.split(),
        }
        return record

    def _tensorboard(self):
        if not (self.cfg.tensorboard and self.world.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.tensorboard needs the `tensorboard` package (pip install "
                              "'vistune[tensorboard]')") from e
        return SummaryWriter(str(self.out / "tensorboard"))

    # -------------------------------------------------------------------------------------------
    def _training_extra(self, step: int) -> dict:
        """What a checkpoint's config.json says of its training: stage, steps, LoRA and the model FLOPs spent."""
        return {"training": {"stage": self.cfg.stage, "step": step, "lora": self.cfg.lora, "flops": self.flops}}

    def _full_model(self):
        """A plain (unsharded) model for writing checkpoints, on rank 0 (None elsewhere); collective under FSDP."""
        if self.skeleton is None:
            return self.model if self.world.is_main else None
        state = D.full_model_state(self.wrapped)
        return D.fill_skeleton(self.skeleton, state) if self.world.is_main else None

    def _save_resumable(self, step: int) -> None:
        world = self.world
        _, optim_sd = D.full_state(self.wrapped, self.optimizer, world)
        full = self._full_model()
        tmp = S.temp_dir(self.ckpt_dir, step)
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        D.barrier(world)
        S.save_rng(tmp, world.rank)
        D.barrier(world)
        if world.is_main:
            write_checkpoint_files(full, tmp, self._training_extra(step))
            optim_meta = S.save_optimizer(optim_sd, tmp)
            state = {"step": step, "epoch": step // self.spe, "position_in_epoch": step % self.spe,
                     "total_steps": self.total, "world_size": world.size, "skipped": dict(self.skipped),
                     "flops": self.flops,
                     "scheduler": {"name": self.cfg.schedule, "step": step, "warmup_steps": self.warmup,
                                   "total_steps": self.total},
                     "run_config": to_dict(self.run_cfg), "optimizer": optim_meta}
            (tmp / S.STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
            if self.hooks.before_commit:
                self.hooks.before_commit(step, tmp)
            commit_dir(tmp, self.ckpt_dir / S.step_dir_name(step))
            S.prune(self.ckpt_dir, self.cfg.keep_last)
        elif self.hooks.before_commit:
            self.hooks.before_commit(step, tmp)
        D.barrier(world)

    def _save_final(self, step: int) -> None:
        from vistune.train.plots import plot_metrics

        full = self._full_model()
        if self.world.is_main:
            tmp = self.out / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_checkpoint_files(full, tmp, self._training_extra(step))
            commit_dir(tmp, self.out / "final")
            plot_metrics(_read_metrics(self.metrics_path), self.out / "loss.png",
                         title=f"stage {self.cfg.stage}: {self.run_cfg.data.path}")
            log.info("final model: %s", self.out / "final")
        D.barrier(self.world)


def keep_freed_memory() -> bool:
    """glibc only: serve large blocks from the heap instead of fresh mmaps and never trim it, so a step's
    buffers are not returned to the system and faulted in again by the next step. False elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records, after cutting off a torn last line (a kill mid-write)."""
    if not path.is_file():
        return []
    repair_jsonl_tail(path)
    return read_json_or_jsonl(path)
