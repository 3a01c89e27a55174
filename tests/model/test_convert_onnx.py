"""A converted official checkpoint exported to ONNX still computes the official network.

The exported graph must carry the checkpoint's upsampling grid (a ``Resize`` node with
``coordinate_transformation_mode="align_corners"``) and ONNX Runtime must agree with PyTorch,
and both with the restated official network, at input size and at a size the export never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccnet.model import Normalization, convert_checkpoint
from tests.model.peers import fabricate, fidelity, official_keys, peer_logits

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _resize_modes(model: onnx.ModelProto) -> set[str]:
    """coordinate_transformation_mode of every Resize node (its default is half_pixel)."""
    modes = set()
    for node in model.graph.node:
        if node.op_type == "Resize":
            attrs = {a.name: a.s.decode() for a in node.attribute if a.type == a.STRING}
            modes.add(attrs.get("coordinate_transformation_mode", "half_pixel"))
    return modes


def test_exported_official_conversion_agrees_at_input_size(tmp_path: Path) -> None:
    from ccnet.export.onnx import export_onnx_model

    recurrence = 1  # the official R=1 release (every export test already covers R=2)

    source = fabricate(official_keys(50, 5, width=8, head=24, aux=16), seed=5)
    model, meta = convert_checkpoint(
        source, "official", classes=list("abcde"), recurrence=recurrence
    )
    result = export_onnx_model(
        model, meta, tmp_path, check_sizes=[(41, 57), (33, 49)], progress=None
    )
    assert result.sidecar is not None
    proto = onnx.load(result.model_path)
    assert _resize_modes(proto) == {"align_corners"}

    rng = np.random.default_rng(0)
    pixels = (rng.random((1, 3, 43, 61)) * 255).astype(np.float32)  # 43×61: not seen in export
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: pixels})
    x = Normalization(**meta["normalization"]).normalize(torch.from_numpy(pixels), channel_dim=1)
    with torch.no_grad():
        torch_logits = model(x)
        official = peer_logits(source, "official", 50, x, recurrence=recurrence, align_corners=True)
    assert onnx_logits.shape == (1, 5, 43, 61)
    error, agreement = fidelity(torch.from_numpy(onnx_logits), torch_logits)
    assert error < 1e-4 and agreement == 1.0, ("onnx vs torch", error, agreement)
    error, agreement = fidelity(torch.from_numpy(onnx_logits), official)
    assert error < 1e-4 and agreement == 1.0, ("onnx vs official", error, agreement)


def test_our_models_export_the_half_pixel_grid() -> None:
    """The default (False) keeps its Resize mode: the flag, not a constant, drives the graph."""
    from ccnet.export.graph_capture import ExportableModel, capture_onnx
    from ccnet.model import build_model

    model = build_model("ccnet-tiny", num_classes=3).eval()
    assert model.config is not None
    exportable = ExportableModel(model, model.config.normalization, torch.float32)
    assert _resize_modes(capture_onnx(exportable, opset=18)) == {"half_pixel"}
