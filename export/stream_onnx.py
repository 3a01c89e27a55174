"""``ccnet export stream``: a CCNet3D as the two ONNX graphs live streaming runs.

``stream_frame.onnx`` takes one frame, RGB float32 0..255 ``(1, 3, H, W)`` (normalisation in
the graph, as in ``model.onnx``), and returns that frame's cached state (``model.streaming``:
``features``, ``reduced`` and, with R >= 1, the first attention pass's ``query``, ``key``,
``value``). ``stream_window.onnx`` takes the target frame's ``features``, every other state
stacked over the window's frames ``(1, C, T, h, w)`` and the target's index ``target``
(int64, shape (1,)), and returns that frame's float32 ``logits`` ``(1, K, 8h, 8w)``. Frames,
height and width are dynamic; ``stream.json`` beside them says what is in them.

Parity is checked before anything is written: ONNX Runtime's frame graph against PyTorch's
encoder, and the window graph against the full CCNet3D's logits of the same frame, on a
synthetic clip at two sizes and every target position. TensorRT can take the same two graphs
(the attention of the full passes is the same ``ccnet`` node as in ``model.onnx``); that is not
checked here without a GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    import torch

    from ccnet.model import CCNet3D

__all__ = ["FRAME_FILE", "WINDOW_FILE", "export_stream", "export_stream_model"]

FRAME_FILE = "stream_frame.onnx"
WINDOW_FILE = "stream_window.onnx"
_CHECK_SIZES = ((64, 96), (40, 56))
_MAX_ABS = 1e-3  # logits of an fp32 graph against eager fp32
_MIN_AGREEMENT = 0.999


def _capture(module: torch.nn.Module, example: tuple, dims: tuple, names: tuple, opset: int):
    import torch

    from ccnet.export.graph_capture import _quiet_exporter, _translation_table

    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=list(names[0]),
            output_names=list(names[1]),
            dynamic_shapes=dims,
            custom_translation_table=_translation_table(),
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _fixed_arity(decoder: Any) -> Any:
    """``decoder`` behind a forward of one tuple argument: torch.export needs the structure of
    the inputs to match ``dynamic_shapes``, which a ``*states`` signature does not give."""
    import torch

    class FixedArity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return self.decoder(*inputs)

    return FixedArity()


def _graphs(model: CCNet3D, normalization: Any, opset: int) -> tuple[onnx.ModelProto, ...]:
    """(frame graph, window graph) of ``model`` (a copy; the caller's model is untouched)."""
    import copy

    import torch

    from ccnet.export.onnx_functions import attach_functions
    from ccnet.model.streaming import FrameEncoder, WindowDecoder, frame_state_names

    network = copy.deepcopy(model).eval().float()
    states = frame_state_names(network.head.recurrence)

    class Frame(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = FrameEncoder(network)

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.encoder(normalization.normalize(pixels, channel_dim=1))

    height, width = torch.export.Dim("height", min=1), torch.export.Dim("width", min=1)
    frames = torch.export.Dim("frames", min=1, max=64)
    image = torch.rand(1, 3, 64, 96) * 255
    frame_graph = _capture(
        Frame().eval(),
        (image,),
        ({2: height * 8, 3: width * 8},),
        (("image",), states),
        opset,
    )
    with torch.no_grad():
        example_states = Frame().eval()(image)
    stacked = tuple(s.unsqueeze(2).expand(-1, -1, 3, -1, -1).contiguous() for s in example_states)
    op = torch.ops.ccnet_export.criss_cross_attention_3d
    stacked_dims = {2: frames, 3: height, 4: width}
    window_dims = ({2: height, 3: width}, *(stacked_dims for _ in states[1:]))
    window_graph = _capture(
        _fixed_arity(WindowDecoder(network, op=op)).eval(),
        ((example_states[0], *stacked[1:], torch.tensor([1])),),
        ((*window_dims, None),),
        (("features", *states[1:], "target"), ("logits",)),
        opset,
    )
    attach_functions(window_graph)
    return frame_graph, window_graph


def _check(model: CCNet3D, normalization: Any, frame: bytes, window: bytes) -> dict[str, Any]:
    """Run both graphs on ONNX Runtime against the full CCNet3D; the worst figures seen."""
    import numpy as np
    import onnxruntime
    import torch

    from ccnet.model.samples import sample_photograph
    from ccnet.model.streaming import frame_state_names

    states = frame_state_names(model.head.recurrence)
    sessions = [
        onnxruntime.InferenceSession(g, providers=["CPUExecutionProvider"]) for g in (frame, window)
    ]
    worst_diff, worst_agree = 0.0, 1.0
    # a real photograph panning by 6 pixels a frame: three frames of a moving scene
    photo = np.asarray(sample_photograph("astronaut"))[100:200, 100:220]
    images = [photo[:, 6 * t : 6 * t + 96] for t in range(3)]
    for height, width in _CHECK_SIZES:
        clip = np.stack([im[:height, :width] for im in images]).astype(np.float32)  # (T, H, W, 3)
        pixels = clip.transpose(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
        with torch.no_grad():
            x = normalization.normalize(torch.from_numpy(pixels), channel_dim=1)
            reference = model.eval()(x).numpy()  # (1, K, T, H, W)
        encoded = [
            sessions[0].run(list(states), {"image": np.ascontiguousarray(pixels[:, :, t])})
            for t in range(clip.shape[0])
        ]
        for target in range(clip.shape[0]):
            feed = {"features": encoded[target][0], "target": np.array([target], np.int64)}
            for i, name in enumerate(states[1:], start=1):
                feed[name] = np.stack([e[i] for e in encoded], axis=2)
            (logits,) = sessions[1].run(["logits"], feed)
            expected = reference[:, :, target]
            worst_diff = max(worst_diff, float(np.abs(logits - expected).max()))
            agree = float((logits.argmax(1) == expected.argmax(1)).mean())
            worst_agree = min(worst_agree, agree)
    if worst_diff > _MAX_ABS or worst_agree < _MIN_AGREEMENT:
        raise ValueError(
            f"the stream graphs disagree with PyTorch: max |Δlogit| {worst_diff:.2e}, "
            f"{worst_agree:.4%} of labels equal; nothing was written"
        )
    return {"max_abs_diff": worst_diff, "label_agreement": worst_agree, "sizes": _CHECK_SIZES}


def export_stream_model(
    model: CCNet3D,
    meta: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    opset: int = 18,
    source: str = "in-memory model",
) -> Path:
    """Export, check and write the two graphs and ``stream.json``; returns the sidecar's path.

    Raises:
        ValueError: not a CCNet3D, or the graphs fail the parity check (nothing written).
    """
    from ccnet.model import Normalization
    from ccnet.model.files import ensure_writable_dir, write_files_atomic
    from ccnet.model.streaming import STREAM_FORMAT, STREAM_SIDECAR, frame_state_names

    if not meta["config"].get("video"):
        raise ValueError(f"{source}: an image model; the stream export is for CCNet3D")
    out = ensure_writable_dir(output_dir)
    normalization = Normalization(**meta["normalization"])
    frame_graph, window_graph = _graphs(model, normalization, opset)
    frame, window = frame_graph.SerializeToString(), window_graph.SerializeToString()
    report = _check(model, normalization, frame, window)
    head = model.head
    inter = head.conva.conv.out_channels
    channels = [model.backbone.stage_channels["layer4"], inter]
    if head.recurrence:
        channels += [max(inter // 8, 1), max(inter // 8, 1), inter]
    sidecar = {
        "format": STREAM_FORMAT,
        "version": 1,
        "graphs": {"frame": FRAME_FILE, "window": WINDOW_FILE},
        "states": list(frame_state_names(head.recurrence)),
        "state_channels": channels,
        "config": dict(meta["config"]),
        "classes": list(meta["classes"]),
        "palette": [list(c) for c in meta["palette"]],
        "normalization": dict(meta["normalization"]),
        "opset": opset,
        "source": source,
        "parity": report,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    write_files_atomic(
        {
            out / FRAME_FILE: frame,
            out / WINDOW_FILE: window,
            out / STREAM_SIDECAR: text.encode("utf-8"),
        }
    )
    return out / STREAM_SIDECAR


def export_stream(checkpoint: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """``ccnet export stream CKPT -o DIR``: a CCNet3D checkpoint to the graphs."""
    from ccnet.model import load_checkpoint

    path = Path(checkpoint)
    model, meta = load_checkpoint(path)
    return export_stream_model(model, meta, output_dir, source=str(path))
