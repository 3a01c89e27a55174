"""The training loop: one optimiser step after another, validation, checkpoints, stopping.

One call, ``train(config)``, runs a whole job in one process or, under ``torchrun``, in each of
several. A run lives in ``config.out``::

    config.json        the resolved settings (a resumed run must agree on what matters)
    checkpoints/       resumable checkpoints (see ``training.state``)
    best.pt            the model with the best validation mIoU so far
    final.pt           the model after the last step
    history.json       every validation result
    summary.json       timing, throughput and results of the finished run
    tb/                TensorBoard scalars and validation pictures

The parts live elsewhere, one job each: settings and the factories that turn them into a
transform, a data set, a sampler and the losses (``training.config``), parameter groups and the
schedule (``training.optim``), the state a checkpoint restores (``training.run_state``),
evaluation (``training.evaluate``), pictures (``training.overlays``), signals
(``training.interrupt``) and processes (``training.distributed``).

Exact resume. The data stream is a pure function of the step (``SeededBatchSampler``), the
schedule of the step count, and model, optimiser, scheduler, grad scaler, the loss's own
weights and every RNG are restored from the checkpoint, so an interrupted and resumed run ends
with the same weights as an uninterrupted one — also after SIGTERM or Ctrl-C, which write a
checkpoint at the step they interrupt, and after ``stop_at``; a run always ends on a committed
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ccnet.model import CCNet, CCNet3D, build_model, save_checkpoint
from ccnet.model.checkpoint import default_palette, read_checkpoint
from ccnet.model.files import write_json_atomic
from ccnet.training import distributed
from ccnet.training.config import TrainConfig, command_line
from ccnet.training.datasets import SplitIndex, check_split, load_split
from ccnet.training.distributed import DistributedContext
from ccnet.training.evaluate import InferenceSettings, build_eval_dataset, predictions
from ccnet.training.interrupt import Interrupted, StopRequest, ignore_interrupts
from ccnet.training.metrics import ConfusionMatrix
from ccnet.training.objective import TrainingObjective
from ccnet.training.optim import build_optimizer, build_scheduler
from ccnet.training.overlays import overlay_strip
from ccnet.training.provenance import provenance, run_summary
from ccnet.training.run_state import RunState
from ccnet.training.scalars import ScalarLog
from ccnet.training.state import (
    capture_rng,
    checkpoint_dir,
    commit_checkpoint,
    latest_checkpoint,
    load_state,
    save_state,
)
from ccnet.training.textlog import TextLog, percent
from ccnet.training.warmstart import load_matching_weights

__all__ = ["RESUMABLE_CHANGES", "VAL_PICTURES", "train"]

RESUMABLE_CHANGES = frozenset(
    {
        "val_every", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard",
        "progress", "workers", "threads", "device", "backend",
    }
)  # fmt: skip
"""Settings a resumed run may change; any other difference would change the result."""

VAL_PICTURES = 4
"""Validation samples shown in TensorBoard (input | truth | prediction) at each evaluation."""


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


def _prepare_run_dir(config: TrainConfig, resume: bool, main: bool) -> bool:
    """Check the run folder; True when a checkpoint is to be restored. The settings are
    recorded (``config.json``) only once the setup has succeeded, so a start that fails (a
    bad data set, a bad ``--init``) leaves no run folder behind.

    ``--resume`` on a folder that holds the run's settings but no checkpoint yet (the run was
    killed during setup, or with SIGKILL before its first checkpoint) starts from step 0: with
    nothing trained, that *is* continuing exactly.
    """
    run_dir = Path(config.out)
    pointer = run_dir / "checkpoints" / "latest"
    saved = run_dir / "config.json"
    restore = False
    if resume:
        if saved.is_file():
            _check_resume_config(json.loads(saved.read_text()), config, run_dir)
        if pointer.exists() or not saved.is_file():
            latest_checkpoint(run_dir)  # fails early when there is nothing to resume
            restore = True
        elif main:
            print(f"note: {run_dir} has no checkpoint yet; starting at step 0", file=sys.stderr)
    elif pointer.exists():
        raise ValueError(
            f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out"
        )
    return restore


@dataclass(frozen=True)
class _Data:
    """The checked splits and the classes they share."""

    train: SplitIndex
    val: SplitIndex | None
    classes: list[str]
    palette: list[list[int]]


def _load_data(config: TrainConfig, show: bool, main: bool) -> _Data:
    """Both splits, every file checked; a warning when the crop exceeds the images."""
    train = load_split(config.data, config.train_split, config.layout, progress=show)
    height, width = check_split(train, progress=show)
    if main and config.crop_size > min(height, width):
        print(
            f"warning: --crop-size {config.crop_size} is larger than the training images "
            f"(at most {height}×{width}): crops are mostly padding and steps cost more; "
            f"consider --crop-size {min(height, width)}",
            file=sys.stderr,
        )
    val = None
    if config.val_split:
        val = load_split(config.data, config.val_split, config.layout, progress=show)
        check_split(val, progress=show)
    classes = list(train.classes)
    if val is not None and val.num_classes != len(classes):
        raise ValueError(
            f"{config.data}: {config.val_split} has {val.num_classes} classes, "
            f"{config.train_split} has {len(classes)}"
        )
    palette = [list(c) for c in train.palette] if train.palette else default_palette(classes)
    return _Data(train, val, classes, palette)


class _Trainer:
    """One training job in this process (built by ``train``).

    Names: ``network`` is the CCNet, ``objective`` the network with its losses (what a step
    differentiates), ``replica`` the module a step calls — ``objective`` itself, or its
    ``DistributedDataParallel`` wrapper under ``torchrun``.
    """

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
        restore = _prepare_run_dir(config, resume, self.main)
        _seed_everything(config.seed + ctx.rank)

        self.data = _load_data(config, self.show, self.main)
        num_classes = len(self.data.classes)
        self.network, self.init_report = self._network()
        model_config = self.network.config
        assert model_config is not None
        self.model_config = model_config
        video = isinstance(self.network, CCNet3D)
        self.clip_length = (config.clip_length or model_config.clip_length) if video else None
        self.train_dataset: Dataset = config.train_dataset(
            self.data.train, model_config.normalization, self.clip_length
        )
        self.val_dataset = (
            build_eval_dataset(self.data.val, self.network, self.clip_length)
            if self.data.val is not None
            else None
        )

        cc_loss = config.category_consistent_loss(self.network.head.cca.in_channels, num_classes)
        if cc_loss is not None:
            cc_loss.to(ctx.device)
        self.objective = TrainingObjective(self.network, config.segmentation_loss(), cc_loss)
        self.replica: nn.Module = distributed.wrap(self.objective, ctx)
        optimizer = build_optimizer(self.objective, self.network, config)
        cuda = ctx.device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.state = RunState(
            optimizer,
            build_scheduler(optimizer, config),
            torch.amp.GradScaler("cuda", enabled=config.amp and cuda),
            cc_loss,
        )
        self.counters = self.state.counters
        self.committed = -1  # the step of the newest checkpoint on disk
        if restore:
            self._restore()
        if self.main:  # the setup succeeded: now the run folder is a run
            write_json_atomic(self.run_dir / "config.json", config.to_dict())
        self.log = ScalarLog(self.run_dir / "tb", config.tensorboard and self.main)
        self.text = TextLog(self.run_dir / "train.log", echo=not self.show, enabled=self.main)
        self.text.line(
            f"{'resuming' if restore else 'training'} {self.model_config.name} on {config.data}: "
            f"{len(self.data.train.frames)} train, "
            f"{len(self.data.val.frames) if self.data.val is not None else 0} val images, "
            f"{num_classes} classes; {config.iterations} steps of {config.batch_size}, "
            f"lr {config.lr:g}, crop {config.crop_size}"
        )

    # ------------------------------------------------------------------ setup

    def _network(self) -> tuple[CCNet, str]:
        """The model on its device (SyncBN across GPUs), optionally from ``--init`` weights."""
        config = self.config
        network = build_model(config.model, num_classes=len(self.data.classes))
        report = ""
        if config.init:
            loaded, skipped = load_matching_weights(network, config.init)
            report = f"initialised {len(loaded)} tensors from {config.init}"
            if skipped:
                shown = ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else "")
                report += f", kept {len(skipped)} fresh ({shown})"
        if config.attention_gamma_init is not None:
            with torch.no_grad():  # a resumed run restores its own gamma after this
                network.head.cca.gamma.fill_(config.attention_gamma_init)
            report += f"; attention gamma set to {config.attention_gamma_init:g}"
        network.to(self.ctx.device)
        if self.ctx.distributed and self.ctx.device.type == "cuda" and config.sync_bn:
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return network, report

    def _restore(self) -> None:
        folder = latest_checkpoint(self.run_dir)
        self.network.load_state_dict(read_checkpoint(folder / "model.pt")["state_dict"])
        where = folder / "state.pt"
        self.state.load_state_dict(load_state(where), self.ctx.rank, self.ctx.world_size, where)
        self.committed = self.counters.iteration

    # ------------------------------------------------------------------ saving

    def _meta(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = provenance(
            self.config,
            self.command,
            self.counters,
            layout=self.data.train.layout,
            world_size=self.ctx.world_size,
            extra=extra,
        )
        return {"classes": self.data.classes, "palette": self.data.palette, "provenance": entry}

    def _save_model(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        save_checkpoint(self.network, self._meta(extra), path)

    def _checkpoint(self) -> Path:
        """Write and commit a resumable checkpoint at this step (every process takes part)."""
        iteration = self.counters.iteration
        folder = checkpoint_dir(self.run_dir, iteration)
        rng = distributed.all_gather_objects(capture_rng())
        if self.main:
            self._save_model(folder / "model.pt")
            save_state(folder / "state.pt", self.state.state_dict(rng))
            commit_checkpoint(self.run_dir, iteration, self.config.keep_checkpoints)
        distributed.barrier()
        self.committed = iteration
        return folder

    # ------------------------------------------------------------------ validation

    def _validate(self) -> dict[str, Any]:
        assert self.val_dataset is not None
        counters = self.counters
        matrix = ConfusionMatrix(len(self.data.classes))
        pictures: list[np.ndarray] = []
        for predicted in predictions(
            self.network,
            self.val_dataset,
            InferenceSettings("whole"),
            device=self.ctx.device,
            shard=(self.ctx.rank, self.ctx.world_size),
            progress=self.show,
        ):
            matrix.update(predicted.labels, predicted.target)
            if self.main and len(pictures) < VAL_PICTURES and self.log.enabled:
                normalization = self.model_config.normalization
                pictures.append(overlay_strip(predicted, normalization, self.data.palette))
        self.network.train()
        distributed.all_reduce_sum(matrix.matrix)
        result = {"iteration": counters.iteration, **matrix.summary(self.data.classes)}
        counters.history.append(result)
        miou = result["mIoU"] if result["mIoU"] is not None else -math.inf
        if self.main:
            step = counters.iteration
            self.log.add("val/mIoU", miou, step)
            self.log.add("val/pixel_acc", result["pixel_acc"] or 0.0, step)
            for name, iou in result["per_class_iou"].items():
                if iou is not None:
                    self.log.add(f"val/iou/{name}", iou, step)
            for n, picture in enumerate(pictures):
                self.log.add_image(f"val/picture_{n}", picture, step)
            write_json_atomic(self.run_dir / "history.json", counters.history)
        if miou > counters.best_miou:
            counters.best_miou = miou
            if self.main:
                self._save_model(self.run_dir / "best.pt", {"selected_by": "best val mIoU"})
        distributed.barrier()
        return result

    # ------------------------------------------------------------------ the loop

    def _batches(self) -> Iterator[dict[str, Any]]:
        sampler = self.config.batch_sampler(
            len(self.train_dataset),  # type: ignore[arg-type]
            self.ctx.rank,
            self.ctx.world_size,
            self.counters.iteration,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.ctx.device.type == "cuda",
            # the loader's own seed source, so creating it never draws from the global RNG
            generator=torch.Generator().manual_seed(self.config.seed),
            worker_init_fn=ignore_interrupts,
        )
        return iter(loader)

    def _step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], int]:
        """One optimiser step over ``accumulate`` micro-batches; returns mean terms and frames."""
        config = self.config
        state = self.state
        sums: dict[str, float] = {}
        frames = 0
        for micro in range(config.accumulate):
            batch = next(batches)
            images = batch["image"].to(self.ctx.device, non_blocking=True)
            target = batch["mask"].to(self.ctx.device, non_blocking=True)
            frames += images.shape[0] * (images.shape[2] if images.dim() == 5 else 1)
            last = micro == config.accumulate - 1
            sync = (
                self.replica.no_sync()  # type: ignore[operator]
                if self.replica is not self.objective and not last
                else contextlib.nullcontext()
            )
            with sync:
                with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=config.amp):
                    terms = self.replica(images, target)
                state.scaler.scale(terms["total"] / config.accumulate).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / config.accumulate
        if not math.isfinite(sums["total"]):
            raise FloatingPointError(
                f"loss is {sums['total']} at step {self.counters.iteration + 1}; "
                "lower --lr or check the data"
            )
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()
        return sums, frames

    def _timed_step(self, batches: Iterator[dict[str, Any]], bar: tqdm) -> None:
        """One step with its bookkeeping: counters, progress bar, TensorBoard scalars."""
        counters = self.counters
        began = time.perf_counter()
        lr = self.state.optimizer.param_groups[0]["lr"]
        terms, frames = self._step(batches)
        counters.iteration += 1
        counters.train_seconds += time.perf_counter() - began
        counters.frames_seen += frames * self.ctx.world_size
        throughput = counters.frames_seen / max(counters.train_seconds, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.3f}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
        step = counters.iteration
        if self.main and step % max(self.config.log_every, 1) == 0:
            for name, value in terms.items():
                self.log.add(f"train/loss/{name}", value, step)
            self.log.add("train/lr", lr, step)
            self.log.add("train/images_per_s", throughput, step)
            losses = ", ".join(f"{name} {value:.4f}" for name, value in terms.items())
            self.text.line(
                f"step {step}/{self.config.iterations}: loss {losses}; lr {lr:.3e}; "
                f"{throughput:.1f} img/s"
            )

    def _due(self, every: int) -> bool:
        """Whether this step is on an ``every``-step grid, or the last one (0: only the last)."""
        step = self.counters.iteration
        return step == self.config.iterations or bool(every and step % every == 0)

    def _stop_on_signal(self, stop: StopRequest) -> None:
        """Raise ``Interrupted`` at a committed checkpoint if any process got a signal; every
        process stops at the same step, whichever received it."""
        signum = distributed.all_reduce_max(stop.signum or 0, self.ctx.device)
        if not signum:
            return
        step = self.counters.iteration
        folder = (
            self._checkpoint() if self.committed != step else checkpoint_dir(self.run_dir, step)
        )
        self.log.close()
        raise Interrupted(signum, step, str(folder))

    def run(self, stop_at: int | None) -> dict[str, Any]:
        config = self.config
        counters = self.counters
        finished = self.run_dir / "summary.json"
        if counters.iteration >= config.iterations and finished.is_file():
            if self.show:
                print(f"{self.run_dir}: already finished, nothing to do", file=sys.stderr)
            return json.loads(finished.read_text())
        if self.main and self.init_report:
            print(self.init_report, file=sys.stderr)
        self.network.train()
        batches = self._batches()
        start = counters.iteration
        validated_at = -1
        bar = tqdm(
            total=config.iterations,
            initial=start,
            desc=f"training {self.model_config.name}",
            unit="step",
            disable=not self.show,
            dynamic_ncols=True,
        )
        with bar, StopRequest(announce=self.main) as stop:
            while counters.iteration < config.iterations:
                if stop_at is not None and counters.iteration >= stop_at:
                    break
                self._timed_step(batches, bar)
                if self.val_dataset is not None and self._due(config.val_every):
                    result = self._validate()
                    validated_at = counters.iteration
                    line = (
                        f"step {counters.iteration}: val mIoU {percent(result['mIoU'])}, "
                        f"pixel accuracy {percent(result['pixel_acc'])}"
                    )
                    self.text.line(line)
                    if self.show:
                        tqdm.write(line, file=sys.stderr)
                if self._due(config.checkpoint_every):
                    self._checkpoint()
                self._stop_on_signal(stop)
        if self.committed != counters.iteration:  # stopped early: the run ends on a checkpoint
            self._checkpoint()
        summary = self._summary(start, validated_at)
        if counters.iteration == config.iterations and self.main:
            self._save_model(self.run_dir / "final.pt")
            write_json_atomic(self.run_dir / "summary.json", summary)
        best = counters.best_miou if counters.best_miou > -math.inf else None
        self.text.line(
            f"stopped at step {counters.iteration}/{config.iterations} after "
            f"{counters.train_seconds:.0f} s of training; best val mIoU {percent(best)}"
        )
        self.text.close()
        self.log.close()
        distributed.barrier()
        return summary

    def _summary(self, start: int, validated_at: int) -> dict[str, Any]:
        return run_summary(
            self.counters,
            model=self.model_config.name,
            classes=self.data.classes,
            start=start,
            validated_at=validated_at,
            started=self.started,
            world_size=self.ctx.world_size,
            device=self.ctx.device,
            command=self.command,
        )


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
            tests and time-boxed sessions), writing a checkpoint there to resume from.
        command: recorded in the checkpoints' provenance (default: the ``ccnet train`` command
            that reproduces ``config``).

    Raises:
        training.interrupt.Interrupted: SIGTERM or SIGINT arrived; the checkpoint of the step
            it interrupted is committed.
    """
    threads = torch.get_num_threads()
    ctx = distributed.setup(config.device, config.backend)
    try:
        trainer = _Trainer(config, ctx, resume, command or command_line(config))
        return trainer.run(stop_at)
    finally:
        distributed.teardown()
        torch.set_num_threads(threads)  # a library call must not change the caller's setting
