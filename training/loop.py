"""The training loop: data, model, optimiser, schedule, AMP, DDP, validation, checkpoints.

One call, ``train(config)``, runs a whole job in one process or, under ``torchrun``, in each of
several. A run lives in ``config.out``::

    config.json        the resolved settings (a resumed run must agree on what matters)
    checkpoints/       resumable checkpoints (see ``training.state``)
    best.pt            the model with the best validation mIoU so far
    final.pt           the model after the last step
    history.json       every validation result
    summary.json       timing, throughput and results of the finished run
    tb/                TensorBoard scalars

Exact resume. The data stream is a pure function of the step (``SeededBatchSampler``), the
schedule of the step count, and model, optimiser, scheduler, grad scaler, the loss's own
weights and every RNG are restored from the checkpoint, so an interrupted and resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model import CCNet, CCNet3D, build_model, save_checkpoint
from model.checkpoint import default_palette, read_checkpoint
from model.files import write_json_atomic
from training import distributed
from training.config import TrainConfig, command_line
from training.datasets import ClipDataset, FrameDataset, SplitIndex, check_split, load_split
from training.distributed import DistributedContext
from training.evaluate import InferenceSettings, build_eval_dataset, evaluate_model
from training.losses import CategoryConsistentLoss, SegmentationLoss
from training.objective import TrainingObjective
from training.sampler import SeededBatchSampler
from training.scalars import ScalarLog
from training.schedule import PolyWarmupLR
from training.state import (
    capture_rng,
    checkpoint_dir,
    commit_checkpoint,
    latest_checkpoint,
    load_state,
    restore_rng,
    save_state,
)
from training.transforms import TrainTransform
from training.warmstart import load_matching_weights

__all__ = ["RESUMABLE_CHANGES", "train"]

RESUMABLE_CHANGES = frozenset(
    {
        "val_every", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard",
        "progress", "workers", "threads", "device", "backend",
    }
)  # fmt: skip
"""Settings a resumed run may change; any other difference would change the result."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_resume_config(saved: dict[str, Any], config: TrainConfig, run_dir: Path) -> None:
    current = config.to_dict()
    changed = sorted(
        name
        for name in current
        if name not in RESUMABLE_CHANGES and saved.get(name, current[name]) != current[name]
    )
    if changed:
        details = ", ".join(f"{n}: {saved.get(n)!r} -> {current[n]!r}" for n in changed)
        raise ValueError(f"{run_dir}: cannot resume with changed settings ({details})")


class _Run:
    """State of one training job in this process (built by ``train``)."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext, resume: bool, command: str):
        self.started = time.perf_counter()  # wall clock of this session, setup included
        self.config = config
        self.ctx = ctx
        self.command = command
        self.run_dir = Path(config.out)
        self.main = ctx.is_main
        self.show = self.main and config.progress
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self._prepare_run_dir(resume)
        _seed_everything(config.seed + ctx.rank)

        self.train_index = self._load_index(config.train_split)
        self.val_index = self._load_index(config.val_split) if config.val_split else None
        self.classes = list(self.train_index.classes)
        if self.val_index is not None and self.val_index.num_classes != len(self.classes):
            raise ValueError(
                f"{config.data}: {config.val_split} has {self.val_index.num_classes} classes, "
                f"{config.train_split} has {len(self.classes)}"
            )
        palette = self.train_index.palette
        self.palette = [list(c) for c in palette] if palette else default_palette(self.classes)

        self.model = build_model(config.model, num_classes=len(self.classes))
        assert self.model.config is not None
        self.model_config = self.model.config
        self.init_report = ""
        if config.init:
            loaded, skipped = load_matching_weights(self.model, config.init)
            self.init_report = f"initialised {len(loaded)} tensors from {config.init}"
            if skipped:
                shown = ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else "")
                self.init_report += f", kept {len(skipped)} fresh ({shown})"
        self.model.to(ctx.device)
        if ctx.distributed and ctx.device.type == "cuda" and config.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

        self.video = isinstance(self.model, CCNet3D)
        self.clip_length = config.clip_length or self.model_config.clip_length
        self.train_dataset = self._train_dataset()
        self.val_dataset = (
            build_eval_dataset(self.val_index, self.model, self.clip_length)
            if self.val_index is not None
            else None
        )

        self.objective = self._objective()
        self.engine: nn.Module = self.objective
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.engine = DistributedDataParallel(self.objective, device_ids=device_ids)
        self.optimizer = self._optimizer()
        self.scheduler = PolyWarmupLR(
            self.optimizer,
            config.iterations,
            config.power,
            config.warmup_iterations,
            config.warmup_factor,
        )
        cuda = ctx.device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and cuda)

        self.iteration = 0
        self.train_seconds = 0.0  # optimiser-step time over all sessions of this run
        self.frames_seen = 0
        self.best_miou = -math.inf
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume()
        self.log = ScalarLog(self.run_dir / "tb", config.tensorboard and self.main)

    # ------------------------------------------------------------------ setup helpers

    def _prepare_run_dir(self, resume: bool) -> None:
        pointer = self.run_dir / "checkpoints" / "latest"
        saved = self.run_dir / "config.json"
        if resume:
            if saved.is_file():
                _check_resume_config(json.loads(saved.read_text()), self.config, self.run_dir)
            latest_checkpoint(self.run_dir)  # fails early when there is nothing to resume
        elif pointer.exists():
            raise ValueError(
                f"{self.run_dir}: already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        if self.main:
            write_json_atomic(saved, self.config.to_dict())

    def _load_index(self, split: str) -> SplitIndex:
        index = load_split(self.config.data, split, self.config.layout, progress=self.show)
        check_split(index, progress=self.show)
        return index

    def _train_dataset(self) -> Dataset:
        config = self.config
        transform = TrainTransform(
            self.model_config.normalization,
            (config.crop_size, config.crop_size),
            (config.scale_min, config.scale_max),
            config.flip,
            config.jitter,
        )
        if self.video:
            return ClipDataset(self.train_index, self.clip_length, transform, config.clip_stride)
        return FrameDataset(self.train_index, transform)

    def _objective(self) -> TrainingObjective:
        config = self.config
        cc_loss = None
        if config.cc_loss:
            cc_loss = CategoryConsistentLoss(
                self.model.head.cca.in_channels,
                len(self.classes),
                embed_dim=config.cc_dim,
                delta_v=config.cc_delta_v,
                delta_d=config.cc_delta_d,
                alpha=config.cc_alpha,
                beta=config.cc_beta,
                gamma=config.cc_gamma,
            ).to(self.ctx.device)
        segmentation = SegmentationLoss(
            config.loss,
            aux_weight=config.aux_weight,
            ohem_threshold=config.ohem_threshold,
            ohem_min_kept=config.ohem_min_kept,
        )
        return TrainingObjective(self.model, segmentation, cc_loss)

    def _optimizer(self) -> torch.optim.SGD:
        """SGD over three groups: the rest (backbone, auxiliary head, loss weights), the RCCA
        head (``head_lr_mult``) and its attention block (× ``attention_lr_mult`` on top)."""
        config = self.config
        attention = list(self.model.head.cca.parameters())
        in_attention = {id(p) for p in attention}
        head = [p for p in self.model.head.parameters() if id(p) not in in_attention]
        in_head = {id(p) for p in head} | in_attention
        rest = [p for p in self.objective.parameters() if id(p) not in in_head]
        head_lr = config.lr * config.head_lr_mult
        return torch.optim.SGD(
            [
                {"params": rest, "lr": config.lr},
                {"params": head, "lr": head_lr},
                {"params": attention, "lr": head_lr * config.attention_lr_mult},
            ],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )

    def _resume(self) -> None:
        folder = latest_checkpoint(self.run_dir)
        payload = read_checkpoint(folder / "model.pt")
        self._unwrapped().load_state_dict(payload["state_dict"])
        state = load_state(folder / "state.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.objective.category_consistent is not None:
            if "category_consistent" not in state:
                raise ValueError(f"{folder / 'state.pt'}: has no category-consistent loss state")
            self.objective.category_consistent.load_state_dict(state["category_consistent"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng(rng[self.ctx.rank])
        elif self.main:
            print(
                f"note: {folder} was written by {len(rng)} processes, this run has "
                f"{self.ctx.world_size}: random streams restart (not bit-exact)",
                file=sys.stderr,
            )
        self.iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.frames_seen = int(state.get("frames_seen", 0))

    def _unwrapped(self) -> CCNet:
        return self.objective.model

    # ------------------------------------------------------------------ saving

    def _meta(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        provenance = {
            "source": "ccnet train",
            "command": self.command,
            "iteration": self.iteration,
            "iterations": self.config.iterations,
            "data": str(self.config.data),
            "layout": self.train_index.layout,
            "world_size": self.ctx.world_size,
            "train_seconds": round(self.train_seconds, 1),
            "images_per_second": round(self.frames_seen / self.train_seconds, 2)
            if self.train_seconds
            else None,
            "train_config": self.config.to_dict(),
            **(extra or {}),
        }
        generator = _data_generator(Path(self.config.data))
        if generator is not None:
            provenance["data_generator"] = generator
        if self.history:
            provenance["val_mIoU"] = self.history[-1]["mIoU"]
            provenance["best_val_mIoU"] = max(
                (h["mIoU"] for h in self.history if h["mIoU"] is not None), default=None
            )
        return {"classes": self.classes, "palette": self.palette, "provenance": provenance}

    def _save_model(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        model = self._unwrapped()
        save_checkpoint(model, self._meta(extra), path)

    def _checkpoint(self) -> None:
        rng = distributed.all_gather_objects(capture_rng())
        if self.main:
            folder = checkpoint_dir(self.run_dir, self.iteration)
            self._save_model(folder / "model.pt")
            state: dict[str, Any] = {
                "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "best_miou": self.best_miou,
                "history": self.history,
                "train_seconds": self.train_seconds,
                "frames_seen": self.frames_seen,
            }
            if self.objective.category_consistent is not None:
                state["category_consistent"] = self.objective.category_consistent.state_dict()
            save_state(folder / "state.pt", state)
            commit_checkpoint(self.run_dir, self.iteration, self.config.keep_checkpoints)
        distributed.barrier()

    # ------------------------------------------------------------------ validation

    def _validate(self) -> dict[str, Any]:
        assert self.val_dataset is not None
        model = self._unwrapped()
        matrix = evaluate_model(
            model,
            self.val_dataset,
            len(self.classes),
            InferenceSettings("whole"),
            device=self.ctx.device,
            shard=(self.ctx.rank, self.ctx.world_size),
            progress=self.show,
        )
        model.train()
        distributed.all_reduce_sum(matrix.matrix)
        result = {"iteration": self.iteration, **matrix.summary(self.classes)}
        self.history.append(result)
        miou = result["mIoU"] if result["mIoU"] is not None else -math.inf
        if self.main:
            self.log.add("val/mIoU", miou, self.iteration)
            self.log.add("val/pixel_acc", result["pixel_acc"] or 0.0, self.iteration)
            for name, iou in result["per_class_iou"].items():
                if iou is not None:
                    self.log.add(f"val/iou/{name}", iou, self.iteration)
            write_json_atomic(self.run_dir / "history.json", self.history)
        if miou > self.best_miou:
            self.best_miou = miou
            if self.main:
                self._save_model(self.run_dir / "best.pt", {"selected_by": "best val mIoU"})
        distributed.barrier()
        return result

    # ------------------------------------------------------------------ the loop

    def _batches(self) -> Iterator[dict[str, Any]]:
        sampler = SeededBatchSampler(
            len(self.train_dataset),  # type: ignore[arg-type]
            self.config.batch_size,
            seed=self.config.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            start_batch=self.iteration * self.config.accumulate,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.ctx.device.type == "cuda",
            # the loader's own seed source, so creating it never draws from the global RNG
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return iter(loader)

    def _step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], int]:
        """One optimiser step over ``accumulate`` micro-batches; returns mean terms and frames."""
        config = self.config
        sums: dict[str, float] = {}
        frames = 0
        for micro in range(config.accumulate):
            batch = next(batches)
            images = batch["image"].to(self.ctx.device, non_blocking=True)
            target = batch["mask"].to(self.ctx.device, non_blocking=True)
            frames += images.shape[0] * (images.shape[2] if images.dim() == 5 else 1)
            last = micro == config.accumulate - 1
            sync = (
                self.engine.no_sync()  # type: ignore[operator]
                if isinstance(self.engine, DistributedDataParallel) and not last
                else contextlib.nullcontext()
            )
            with sync:
                with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=config.amp):
                    terms = self.engine(images, target)
                self.scaler.scale(terms["total"] / config.accumulate).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / config.accumulate
        if not math.isfinite(sums["total"]):
            raise FloatingPointError(
                f"loss is {sums['total']} at step {self.iteration + 1}; "
                "lower --lr or check the data"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return sums, frames

    def run(self, stop_at: int | None) -> dict[str, Any]:
        config = self.config
        finished = self.run_dir / "summary.json"
        if self.iteration >= config.iterations and finished.is_file():
            if self.show:
                print(f"{self.run_dir}: already finished, nothing to do", file=sys.stderr)
            return json.loads(finished.read_text())
        if self.main and self.init_report:
            print(self.init_report, file=sys.stderr)
        self._unwrapped().train()
        batches = self._batches()
        start = self.iteration
        bar = tqdm(
            total=config.iterations,
            initial=start,
            desc=f"training {self.model_config.name}",
            unit="step",
            disable=not self.show,
            dynamic_ncols=True,
        )
        validated_at = -1
        while self.iteration < config.iterations:
            if stop_at is not None and self.iteration >= stop_at:
                break
            began = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            terms, frames = self._step(batches)
            self.iteration += 1
            elapsed = time.perf_counter() - began
            self.train_seconds += elapsed
            self.frames_seen += frames * self.ctx.world_size
            throughput = self.frames_seen / max(self.train_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['total']:.3f}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
            if self.main and (self.iteration % max(config.log_every, 1) == 0):
                for name, value in terms.items():
                    self.log.add(f"train/loss/{name}", value, self.iteration)
                self.log.add("train/lr", lr, self.iteration)
                self.log.add("train/images_per_s", throughput, self.iteration)
            done = self.iteration == config.iterations
            if self.val_dataset is not None and (
                done or (config.val_every and self.iteration % config.val_every == 0)
            ):
                result = self._validate()
                validated_at = self.iteration
                if self.show:
                    tqdm.write(
                        f"step {self.iteration}: val mIoU {result['mIoU']}, "
                        f"pixel acc {result['pixel_acc']}",
                        file=sys.stderr,
                    )
            if done or (config.checkpoint_every and self.iteration % config.checkpoint_every == 0):
                self._checkpoint()
        bar.close()
        summary = self._summary(start, validated_at)
        if self.iteration == config.iterations and self.main:
            self._save_model(self.run_dir / "final.pt")
            write_json_atomic(self.run_dir / "summary.json", summary)
        self.log.close()
        distributed.barrier()
        return summary

    def _summary(self, start: int, validated_at: int) -> dict[str, Any]:
        """Results of the run; time and throughput cover every session of a resumed run."""
        seconds = self.train_seconds
        last = self.history[-1] if self.history else None
        return {
            "model": self.model_config.name,
            "classes": self.classes,
            "iterations": self.iteration,
            "resumed_from": start or None,
            "steps_this_run": self.iteration - start,
            "train_seconds": round(seconds, 2),
            "session_wall_seconds": round(time.perf_counter() - self.started, 1),
            "images_per_second": round(self.frames_seen / seconds, 2) if seconds else None,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "threads": torch.get_num_threads(),
            "val": last if last and validated_at == self.iteration else None,
            "best_val_mIoU": self.best_miou if self.best_miou > -math.inf else None,
            "command": self.command,
        }


def _data_generator(root: Path) -> dict[str, Any] | None:
    """The ``generator`` entry of a ``ccnet synth`` data set's classes.json (provenance)."""
    try:
        data = json.loads((root / "classes.json").read_text())
    except (OSError, ValueError):
        return None
    generator = data.get("generator") if isinstance(data, dict) else None
    return generator if isinstance(generator, dict) else None


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a training job; returns its summary (also written to summary.json).

    Args:
        config: the run's settings.
        resume: continue from ``config.out``'s latest checkpoint.
        stop_at: stop after this many steps without finishing (as an interruption would; for
            tests and time-boxed sessions); the run can be resumed from its last checkpoint.
        command: recorded in the checkpoints' provenance (default: the ``ccnet train`` command
            that reproduces ``config``).
    """
    threads = torch.get_num_threads()
    ctx = distributed.setup(config.device, config.backend)
    try:
        run = _Run(config, ctx, resume, command or command_line(config))
        return run.run(stop_at)
    finally:
        distributed.teardown()
        torch.set_num_threads(threads)  # a library call must not change the caller's setting
