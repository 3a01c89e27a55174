"""Inference modes agree where they must; clips are scored frame by frame or in windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ccnet.cli import main
from ccnet.model import build_model, save_checkpoint
from ccnet.training.datasets import ClipDataset, FrameDataset, load_split
from ccnet.training.evaluate import (
    InferenceSettings,
    build_eval_dataset,
    default_tile,
    evaluate_model,
    predict_scores,
)
from ccnet.training.synth import CORRUPTION_GROUPS, corruption_groups, generate
from ccnet.training.temporal import score_clips
from tests.training.conftest import SIZE


class _Pointwise(nn.Module):
    """A per-pixel classifier: every inference mode must give it the same answer."""

    align_corners = False  # read by multi-scale resizing, as from a CCNet

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


def test_corruption_breakdown_counts_every_frame_once(tmp_path: Path, capsys) -> None:
    generate(tmp_path, "clips", 1, n_val=2, seed=0, size=32, frames=6, progress=False)
    for name in ("ccnet-tiny", "ccnet3d-tiny"):
        model = build_model(name, num_classes=6)
        save_checkpoint(model, {}, tmp_path / f"{name}.pt")
        argv = ["evaluate", str(tmp_path / f"{name}.pt"), "--data", str(tmp_path),
                "--corruptions", "--json", "--threads", "1"]  # fmt: skip
        assert main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        frames = result["corruptions"]["frames"]
        assert frames["all"] == 12 == frames["clean"] + frames["corrupted"]
        assert frames["corrupted"] == frames["occlusion"] + frames["noise"] + frames["blur"] > 0
        # the breakdown's "all" is the same pass as the headline number
        assert result["corruptions"]["mIoU"]["all"] == result["mIoU"]
        assert result["unit"] == ("frames" if name == "ccnet-tiny" else "clip windows")
        # the temporal stability figure comes with it, equal to the bench's scoring
        index = load_split(tmp_path, "val")
        scores = score_clips(
            model.eval(), index, CORRUPTION_GROUPS, corruption_groups(index), progress=False
        )
        assert result["temporal"]["flicker"] == scores.summary()["flicker"], name


def test_corruptions_need_clip_data(tmp_path: Path, capsys) -> None:
    generate(tmp_path, "images", 2, n_val=1, seed=0, size=32, progress=False)
    save_checkpoint(build_model("ccnet-tiny", num_classes=6), {}, tmp_path / "m.pt")
    argv = ["evaluate", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--corruptions"]
    assert main(argv) == 2
    assert "not a clip data set" in capsys.readouterr().err


def test_default_tile_is_the_training_crop_else_the_recipes() -> None:
    trained = {"config": {"name": "ccnet-tiny"}, "provenance": {"train_config": {"crop_size": 96}}}
    assert default_tile(trained) == 96
    converted = {"config": {"name": "ccnet-r101-official"}, "provenance": {"source": "convert"}}
    assert default_tile(converted) == 769  # the paper's Cityscapes crop
    assert default_tile({"config": {"name": "someone-elses"}}) is None


def test_clip_data_without_corruptions_still_reports_flicker(tmp_path: Path, capsys) -> None:
    generate(tmp_path, "clips", 1, n_val=1, seed=0, size=32, frames=5, progress=False)
    save_checkpoint(build_model("ccnet-tiny", num_classes=6), {}, tmp_path / "m.pt")
    argv = ["evaluate", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--threads", "1"]
    assert main(argv) == 0
    assert "label flicker by frame pair" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    temporal = json.loads(capsys.readouterr().out)["temporal"]
    assert set(temporal["flicker"]) == {"all"} and temporal["stable_pixels"]["all"] > 0
