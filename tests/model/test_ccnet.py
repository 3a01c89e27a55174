"""CCNet / CCNet3D: output shapes and types, the RCCA head's wiring, the zoo, the builder."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ccnet.model import CCNet, CCNet3D, ModelConfig, build_model, get_config, list_models
from ccnet.model.backbones import DilatedResNet
from ccnet.model.heads import FCNHead, RCCAHead, batch_to_frames, frames_to_batch
from ccnet.model.zoo import IMAGENET_NORMALIZATION, OFFICIAL_NORMALIZATION, Normalization

REQUIRED = {
    "ccnet-tiny",
    "ccnet-r18",
    "ccnet-r50",
    "ccnet-r101",
    "ccnet-r101-official",
    "ccnet-r50-mmseg",
    "ccnet-r101-mmseg",
    "ccnet3d-tiny",
    "ccnet3d-r18",
    "ccnet3d-r50",
}


def _tiny(**changes: object) -> ModelConfig:
    return dataclasses.replace(get_config("ccnet-tiny"), **changes)


def _with_gamma(model: nn.Module, value: float) -> nn.Module:
    """Attention starts as the identity (gamma = 0); give it weight so it can change outputs."""
    with torch.no_grad():
        model.head.cca.gamma.fill_(value)
    return model


def test_zoo_has_the_required_names() -> None:
    assert set(list_models()) >= REQUIRED


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_builds_and_runs(name: str) -> None:
    config = get_config(name)
    model = build_model(name, num_classes=5).eval()
    assert model.config == dataclasses.replace(config, num_classes=5)
    assert isinstance(model, CCNet3D if config.video else CCNet)
    backbone = model.backbone
    assert (backbone.depth, backbone.width, backbone.flavour) == (
        config.depth,
        config.width,
        config.flavour,
    )
    assert backbone.output_stride == config.output_stride
    assert model.head.classifier.out_channels == 5
    assert model.head.bottleneck.conv.out_channels == config.head_channels
    assert model.recurrence == config.recurrence
    assert (model.aux_head is None) == (config.aux_channels is None)
    shape = (1, 3, 2, 33, 45) if config.video else (1, 3, 33, 45)
    with torch.no_grad():
        out = model(torch.randn(shape))
    expected = (1, 5, 2, 33, 45) if config.video else (1, 5, 33, 45)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == expected, name
    assert torch.isfinite(out).all(), name


def test_tiny_is_small() -> None:
    model = build_model("ccnet-tiny")
    params = sum(p.numel() for p in model.parameters())
    assert params * 4 < 8 * 2**20, f"ccnet-tiny has {params} parameters"


@pytest.mark.parametrize("size", [(97, 131), (33, 45), (64, 64), (17, 9)])
def test_ccnet_output_size_equals_input_size(size: tuple[int, int]) -> None:
    model = build_model("ccnet-tiny", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 3, *size)


def test_training_mode_returns_out_and_aux() -> None:
    model = build_model("ccnet-tiny", num_classes=4).train()
    result = model(torch.randn(2, 3, 41, 57))
    assert isinstance(result, dict)
    assert set(result) == {"out", "aux"}
    assert result["out"].shape == result["aux"].shape == (2, 4, 41, 57)
    (result["out"].mean() + result["aux"].mean()).backward()
    assert model.head.cca.query_conv.weight.grad is not None
    assert model.aux_head.classifier.weight.grad is not None


def test_training_mode_without_aux_head() -> None:
    model = build_model(_tiny(aux_channels=None), num_classes=4).train()
    assert model.aux_head is None
    result = model(torch.randn(2, 3, 33, 45))
    assert set(result) == {"out"}


def test_eval_output_matches_training_output_path() -> None:
    model = build_model("ccnet-tiny", num_classes=4)
    model.eval()
    x = torch.randn(1, 3, 33, 45)
    with torch.no_grad():
        eval_out = model(x)
        # dropout/BN differ between modes; compare with eval-mode layers but the dict path
        model.training = True
        dict_out = model(x)["out"]
    assert torch.allclose(eval_out, dict_out)


def test_ccnet3d_shapes_and_training_outputs() -> None:
    model = build_model("ccnet3d-tiny", num_classes=3)
    x = torch.randn(2, 3, 3, 33, 45)
    result = model.train()(x)
    assert set(result) == {"out", "aux"}
    assert result["out"].shape == result["aux"].shape == (2, 3, 3, 33, 45)
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 3, 33, 45)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 97, 131)).shape == (1, 3, 1, 97, 131)


def test_wrong_rank_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_model("ccnet-tiny").eval()(torch.randn(1, 3, 2, 33, 33))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        build_model("ccnet3d-tiny").eval()(torch.randn(1, 3, 33, 33))


def _image_and_video_twins(num_classes: int = 3) -> tuple[CCNet, CCNet3D]:
    """A CCNet and a CCNet3D with the same weights (2D attention kernels get a time axis)."""
    torch.manual_seed(0)
    image = _with_gamma(build_model("ccnet-tiny", num_classes=num_classes), 0.7).eval()
    video = build_model("ccnet3d-tiny", num_classes=num_classes).eval()
    state = {
        k: v.unsqueeze(-1) if k.startswith("head.cca.") and v.dim() == 4 else v
        for k, v in image.state_dict().items()
    }
    video.load_state_dict(state)
    return image, video


def test_ccnet3d_with_one_frame_equals_ccnet() -> None:
    image, video = _image_and_video_twins()
    x = torch.randn(2, 3, 33, 45)
    with torch.no_grad():
        expected = image(x)
        out = video(x.unsqueeze(2))
    assert out.shape == (2, 3, 1, 33, 45)
    torch.testing.assert_close(out[:, :, 0], expected, rtol=1e-4, atol=1e-4)


def test_ccnet3d_without_attention_is_per_frame_ccnet() -> None:
    image, video = _image_and_video_twins()
    _with_gamma(image, 0.0)
    _with_gamma(video, 0.0)
    clip = torch.randn(2, 3, 4, 33, 45)
    with torch.no_grad():
        out = video(clip)
        for t in range(4):
            torch.testing.assert_close(out[:, :, t], image(clip[:, :, t]), rtol=1e-4, atol=1e-4)


def test_ccnet3d_attention_mixes_frames_of_a_clip_but_not_clips() -> None:
    _, video = _image_and_video_twins()
    clip = torch.randn(2, 3, 3, 33, 45)
    changed = clip.clone()
    changed[0, :, 2] = torch.randn(3, 33, 45)  # only the last frame of the first clip
    with torch.no_grad():
        before, after = video(clip), video(changed)
    assert not torch.allclose(before[0, :, 0], after[0, :, 0]), "time attention had no effect"
    torch.testing.assert_close(before[1], after[1])  # the other clip is untouched


def test_frames_fold_and_unfold_are_inverse() -> None:
    x = torch.randn(2, 5, 3, 4, 6)
    folded = frames_to_batch(x)
    assert folded.shape == (6, 5, 4, 6)
    torch.testing.assert_close(folded[1 * 3 + 2], x[1, :, 2])
    torch.testing.assert_close(batch_to_frames(folded, 2), x)


def test_rcca_head_shares_one_attention_block_across_recurrences() -> None:
    head = RCCAHead(64, 32, 5, recurrence=2).eval()
    attention_modules = [m for m in head.modules() if type(m).__name__ == "CrissCrossAttention"]
    assert len(attention_modules) == 1
    calls = []
    head.cca.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 64, 9, 11)
    outputs = {}
    with torch.no_grad():
        head.cca.gamma.fill_(0.5)
        for recurrence in (2, 1, 0):
            calls.clear()
            head.recurrence = recurrence
            outputs[recurrence] = head(x)
            assert len(calls) == recurrence
    assert outputs[2].shape == (1, 5, 9, 11)
    assert not torch.allclose(outputs[2], outputs[1])
    assert not torch.allclose(outputs[1], outputs[0])


def test_recurrence_can_be_changed_on_the_model() -> None:
    model = build_model("ccnet-tiny")
    assert model.recurrence == 2
    model.recurrence = 1
    assert model.head.recurrence == 1


def test_rcca_head_concatenates_input_first() -> None:
    head = RCCAHead(64, 32, 5).eval()
    seen = {}
    head.bottleneck.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
    features = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        head(features)
    assert seen["x"].shape == (2, 64 + 16, 9, 11)
    torch.testing.assert_close(seen["x"][:, :64], features)


def test_rcca_head_layers() -> None:
    head = RCCAHead(2048, 512, 19)
    assert head.conva.conv.in_channels == 2048 and head.conva.conv.out_channels == 512
    assert head.conva.conv.kernel_size == (3, 3) and head.conva.conv.bias is None
    assert head.cca.query_conv.out_channels == 64
    assert head.convb.conv.in_channels == head.convb.conv.out_channels == 512
    assert head.bottleneck.conv.in_channels == 2560 and head.bottleneck.conv.bias is None
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.classifier.kernel_size == (1, 1) and head.classifier.bias is not None


@pytest.mark.parametrize(
    ("name", "act", "aux_channels", "aux_bias"),
    [
        ("ccnet-r101-official", nn.LeakyReLU, 512, True),
        ("ccnet-r101-mmseg", nn.ReLU, 256, False),
        ("ccnet-r50-mmseg", nn.ReLU, 256, False),
    ],
)
def test_peer_layouts(name: str, act: type[nn.Module], aux_channels: int, aux_bias: bool) -> None:
    with torch.device("meta"):
        model = build_model(name)
    for part in (model.head.conva, model.head.convb, model.head.bottleneck, model.aux_head.conv):
        assert type(part.act) is act, name
        assert isinstance(part.norm, nn.BatchNorm2d)
    if act is nn.LeakyReLU:
        assert model.head.conva.act.negative_slope == 0.01
    assert not any(isinstance(m, nn.LeakyReLU) for m in model.backbone.modules())
    assert isinstance(model.aux_head, FCNHead)
    assert model.aux_head.conv.conv.in_channels == 1024
    assert model.aux_head.conv.conv.out_channels == aux_channels
    assert (model.aux_head.conv.conv.bias is not None) is aux_bias
    assert model.head.bottleneck.conv.out_channels == 512
    assert model.head.conva.conv.out_channels == 512


def test_ccnet_accepts_a_custom_backbone_and_head_settings() -> None:
    backbone = DilatedResNet(18, width=8, output_stride=16)
    model = CCNet(
        7, backbone, recurrence=1, head_channels=16, inter_channels=8, aux_channels=None
    ).eval()
    assert model.head.conva.conv.out_channels == 8
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 7, 50, 70)


def test_config_round_trip_and_validation() -> None:
    for name in list_models():
        config = get_config(name)
        data = config.to_dict()
        assert isinstance(data["normalization"]["mean"], list)
        assert ModelConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({**get_config("ccnet-tiny").to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="depth"):
        ModelConfig("x", depth=152)
    with pytest.raises(ValueError, match="ccnet-tiny"):
        get_config("ccnet-huge")


def test_zoo_normalisation() -> None:
    official = get_config("ccnet-r101-official").normalization
    assert official == OFFICIAL_NORMALIZATION
    assert official.channel_order == "BGR" and official.std == (1.0, 1.0, 1.0)
    assert official.mean == pytest.approx((104.00698793, 116.66876762, 122.67891434))
    mmseg = get_config("ccnet-r101-mmseg").normalization
    assert mmseg.channel_order == "RGB"
    assert mmseg.mean == (123.675, 116.28, 103.53) and mmseg.std == (58.395, 57.12, 57.375)
    assert get_config("ccnet-tiny").normalization == IMAGENET_NORMALIZATION
    for name in list_models():
        config = get_config(name)
        assert config.normalization.value_scale == 255.0
        assert (config.clip_length > 1) == config.video


def test_normalize_reorders_and_scales() -> None:
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    bgr = Normalization(mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 5.0), channel_order="BGR")
    out = bgr.normalize(rgb.to(torch.uint8))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([29.0, 9.0, 1.4]))
    clip = rgb.unsqueeze(2)  # (1, 3, 1, 2, 2)
    out = IMAGENET_NORMALIZATION.normalize(clip, channel_dim=1)
    torch.testing.assert_close(out[0, 0, 0, 0, 0], torch.tensor((10.0 - 123.675) / 58.395))


def test_build_model_is_keyword_only_beyond_the_name() -> None:
    with pytest.raises(TypeError):
        build_model("ccnet-tiny", 5)  # type: ignore[misc]
    assert build_model(get_config("ccnet-tiny"), num_classes=2).num_classes == 2


@pytest.mark.parametrize("name", ["ccnet-tiny", "ccnet3d-tiny"])
def test_return_context_exposes_the_rcca_output(name: str) -> None:
    """The category-consistent loss reads the attention path's output; logits are unchanged."""
    torch.manual_seed(0)
    model = _with_gamma(build_model(name, num_classes=3), 0.5).eval()
    video = model.config.video
    x = torch.randn((1, 3, 2, 33, 45) if video else (1, 3, 33, 45))
    inter = model.head.cca.in_channels
    with torch.no_grad():
        plain = model(x)
        result = model(x, return_context=True)
        features = model.backbone(frames_to_batch(x) if video else x)["layer4"]
        expected = model.head.conva(features)
        expected = model.head._attend(batch_to_frames(expected, 1) if video else expected)
    assert set(result) == {"out", "context"}
    assert torch.equal(result["out"], plain)
    assert result["context"].shape == ((1, inter, 2, 5, 6) if video else (1, inter, 5, 6))
    assert torch.allclose(result["context"], expected, atol=1e-6)
    train_result = model.train()(x, return_context=True)
    assert set(train_result) == {"out", "aux", "context"}


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("video", [False, True])
def test_forward_upsamples_on_the_configured_grid(align_corners: bool, video: bool) -> None:
    """Logits and aux logits at input size are the head outputs resized with the config's grid."""
    torch.manual_seed(0)
    config = _tiny(align_corners=align_corners, video=video, clip_length=2 if video else 1)
    model = _with_gamma(build_model(config, num_classes=3), 0.5).eval()
    assert model.align_corners is align_corners
    shape = (1, 3, 2, 37, 45) if video else (1, 3, 37, 45)
    x = torch.randn(shape)

    def up(t: torch.Tensor) -> torch.Tensor:  # independent of model.resize: per frame by hand
        if t.dim() == 5:
            frames = [up(t[:, :, i]) for i in range(t.shape[2])]
            return torch.stack(frames, dim=2)
        return torch.nn.functional.interpolate(
            t, size=(37, 45), mode="bilinear", align_corners=align_corners
        )

    with torch.no_grad():
        features = model.backbone(frames_to_batch(x) if video else x)
        top = batch_to_frames(features["layer4"], 1) if video else features["layer4"]
        torch.testing.assert_close(model(x), up(model.head(top)), rtol=1e-5, atol=1e-5)
        # training mode (batch statistics, dropout off so it is deterministic): aux too
        model.head.dropout.p = model.aux_head.dropout.p = 0.0
        model.train()
        outputs = model(x)
        features = model.backbone(frames_to_batch(x) if video else x)
        aux = model.aux_head(features["layer3"])
        expected_aux = up(batch_to_frames(aux, 1)) if video else up(aux)
    torch.testing.assert_close(outputs["aux"], expected_aux, rtol=1e-5, atol=1e-5)


def test_resize_logits_is_a_noop_at_size_and_rejects_other_ranks() -> None:
    from ccnet.model import resize_logits

    x = torch.randn(1, 2, 5, 7)
    assert resize_logits(x, (5, 7), True) is x
    with pytest.raises(ValueError, match="3-D"):
        resize_logits(torch.randn(2, 5, 7), (9, 9), False)
