"""Inference modes agree where they must; clips are scored frame by frame or in windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model import build_model, save_checkpoint
from training.corruption_report import main
from training.datasets import ClipDataset, FrameDataset, load_split
from training.evaluate import InferenceSettings, build_eval_dataset, evaluate_model, predict_scores
from training.synth import generate

from .conftest import SIZE


class _Pointwise(nn.Module):
    """A per-pixel classifier: every inference mode must give it the same answer."""

    def __init__(self, dims: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1) if dims == 4 else nn.Conv3d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (1, 3, 2, 37, 53)])
def test_slide_equals_whole_for_a_pointwise_model(shape: tuple[int, ...]) -> None:
    model = _Pointwise(len(shape))
    x = torch.randn(shape)
    whole = predict_scores(model, x, InferenceSettings("whole"))
    for tile, stride in ((16, 8), (16, 16), (64, 10), (37, 5)):
        slide = predict_scores(model, x, InferenceSettings("slide", tile=tile, stride=stride))
        assert torch.allclose(slide, whole, atol=1e-5), (tile, stride)


def test_multiscale_at_scale_one_is_the_softmax_of_whole() -> None:
    model = _Pointwise(4)
    x = torch.randn(1, 3, 20, 30)
    whole = predict_scores(model, x, InferenceSettings("whole")).softmax(dim=1)
    single = predict_scores(model, x, InferenceSettings("multiscale", scales=(1.0,), flip=False))
    assert torch.allclose(single, whole, atol=1e-6)
    flipped = predict_scores(model, x, InferenceSettings("multiscale", scales=(1.0,), flip=True))
    assert torch.allclose(flipped, 2 * whole, atol=1e-5)  # sums probabilities: flip is exact
    several = predict_scores(model, x, InferenceSettings("multiscale", scales=(0.5, 1.0, 1.5)))
    assert several.shape == (1, 4, 20, 30)
    assert torch.allclose(several.sum(dim=1), torch.full((1, 20, 30), 6.0), atol=1e-4)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="tile"):
        InferenceSettings("slide")
    with pytest.raises(ValueError, match="mode"):
        InferenceSettings("tiles")  # type: ignore[arg-type]


def test_ccnet3d_scores_every_clip_frame_once(clip_tree: Path) -> None:
    index = load_split(clip_tree, "val")  # one clip of 5 frames
    model = build_model("ccnet3d-tiny", num_classes=3)
    dataset = build_eval_dataset(index, model, clip_length=2)
    assert isinstance(dataset, ClipDataset) and len(dataset) == 3  # [0,1] [2,3] [3,4]
    matrix = evaluate_model(model, dataset, 3, progress=False)
    frames = FrameDataset(index, dataset.transform)
    valid = sum(int((frames[i]["mask"] != 255).sum()) for i in range(len(frames)))
    assert matrix.matrix.sum().item() == valid
    assert valid == 5 * SIZE[0] * 22  # the last of three bands is ignore


def test_2d_model_scores_clip_data_frame_by_frame(clip_tree: Path) -> None:
    index = load_split(clip_tree, "val")
    model = build_model("ccnet-tiny", num_classes=3)
    dataset = build_eval_dataset(index, model)
    assert isinstance(dataset, FrameDataset) and len(dataset) == 5
    slide = InferenceSettings("slide", tile=16, stride=12)
    matrix = evaluate_model(model, dataset, 3, slide, progress=False)
    assert (
        matrix.matrix.sum().item()
        == evaluate_model(model, dataset, 3, progress=False).matrix.sum().item()
    )


def test_shards_partition_the_data(clip_tree: Path) -> None:
    index = load_split(clip_tree, "val")
    model = build_model("ccnet-tiny", num_classes=3)
    dataset = build_eval_dataset(index, model)
    whole = evaluate_model(model, dataset, 3, progress=False)
    parts = [evaluate_model(model, dataset, 3, shard=(r, 2), progress=False) for r in range(2)]
    assert torch.equal(parts[0].matrix + parts[1].matrix, whole.matrix)


def test_corruption_report_counts_every_frame_once(tmp_path: Path, capsys) -> None:
    generate(tmp_path, "clips", 1, n_val=2, seed=0, size=32, frames=6, progress=False)
    for name in ("ccnet-tiny", "ccnet3d-tiny"):
        model = build_model(name, num_classes=6)
        save_checkpoint(model, {}, tmp_path / f"{name}.pt")
        assert main([str(tmp_path / f"{name}.pt"), "--data", str(tmp_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        frames = report["frames"]
        assert frames["all"] == 12 == frames["clean"] + frames["corrupted"]
        assert frames["corrupted"] == frames["occlusion"] + frames["noise"] + frames["blur"] > 0
