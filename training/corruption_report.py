"""mIoU of a checkpoint on ``ccnet synth`` clips, split by how each frame was corrupted.

``ccnet evaluate`` gives one number per split; this breaks it down into clean frames and each
corruption (occlusion, noise, blur) using the ``corruptions.json`` that ``ccnet synth`` writes
in every clip folder — the figure that shows whether a model uses temporal context. A 2D model
is scored frame by frame, a CCNet3D in windows that cover every frame once (as ``evaluate``)::

    python -m training.corruption_report CKPT --data runs/synth-clips [--split val] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from model import CCNet, load_checkpoint
from training.datasets import ClipDataset, SplitIndex, check_split, load_split
from training.evaluate import InferenceSettings, build_eval_dataset, predict_scores
from training.metrics import ConfusionMatrix
from training.synth import CORRUPTIONS

__all__ = ["corruption_report", "main"]

GROUPS = ("all", "clean", "corrupted", *CORRUPTIONS)


def _frame_kinds(index: SplitIndex) -> dict[int, str]:
    """Frame index -> ``clean`` or the corruption ``ccnet synth`` applied to it."""
    if index.clips is None:
        raise ValueError(f"{index.root}: not a clip data set (use --layout clips data)")
    kinds: dict[int, str] = {}
    for name, clip in zip(index.clip_names, index.clips, strict=True):
        path = index.root / index.split / name / "corruptions.json"
        try:
            corrupted = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable corruption record ({e})") from e
        for i in clip:
            kinds[i] = corrupted.get(index.frames[i].image.stem, "clean")
    return kinds


@torch.no_grad()
def corruption_report(model: CCNet, index: SplitIndex, num_classes: int) -> dict[str, Any]:
    """``{group: mIoU}`` and ``{group: frames}`` for the groups in ``GROUPS``."""
    kinds = _frame_kinds(index)
    matrices = {group: ConfusionMatrix(num_classes) for group in GROUPS}
    frames = dict.fromkeys(GROUPS, 0)
    dataset = build_eval_dataset(index, model)
    model.eval()
    for n in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[n]
        prediction = predict_scores(model, sample["image"][None], InferenceSettings())
        prediction = prediction.argmax(dim=1)[0]
        if isinstance(dataset, ClipDataset):
            frame_ids, counted = dataset.windows[n]
            labels = sample["mask"]
        else:
            frame_ids, counted = (n,), [True]
            prediction, labels = prediction[None], sample["mask"][None]
        for t, (frame, count) in enumerate(zip(frame_ids, counted, strict=True)):
            if not count:
                continue
            kind = kinds[frame]
            groups = ["all", kind] + ([] if kind == "clean" else ["corrupted"])
            for group in groups:
                matrices[group].update(prediction[t], labels[t])
                frames[group] += 1
    return {"mIoU": {g: m.summary()["mIoU"] for g, m in matrices.items()}, "frames": frames}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.corruption_report")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--data", required=True, help="a `ccnet synth --kind clips` folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        index = load_split(Path(args.data), args.split, "clips", progress=False)
        check_split(index, progress=False)
        report = corruption_report(model, index, len(meta["classes"]))
    except (ValueError, OSError) as error:
        print(f"corruption_report: error: {error}", file=sys.stderr)
        return 2
    report = {"checkpoint": str(args.checkpoint), "model": meta["config"]["name"], **report}
    if args.json:
        print(json.dumps(report))
    else:
        for group in GROUPS:
            miou = report["mIoU"][group]
            shown = "n/a" if miou is None else f"{100 * miou:.2f}"
            print(f"{group:<10} mIoU {shown:>6}  ({report['frames'][group]} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
