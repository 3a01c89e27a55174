"""The image interface inside the ONNX graph: UINT8 pixels in, the class-id mask out.

``ccnet export onnx`` writes the network alone: float32 ``(N, 3, H, W)`` RGB 0..255 in, logits
out, with a height and width the client must pad to the stride. ``wrap_image_graph`` puts the
steps ``ccnet serve`` runs around it (``export.runtime.image_interface``) into the graph, so
a Triton model (or any ONNX Runtime user) speaks the server's ``/v2`` language:

    image  UINT8 (N, H, W, 3)
      -> Cast float32 -> Transpose to (N, 3, H, W)
      -> Pad at the bottom and right by edge replication to a multiple of 8 (``mode="edge"``,
         the values ``numpy.pad(mode="edge")`` gives the server's pipeline)
      -> the network, unchanged (the graph ``ccnet export onnx`` checked against PyTorch)
      -> Slice back to (N, K, H, W)                                   -> logits (on request)
      -> ArgMax over classes (the first largest, as numpy's argmax) -> Cast uint8 -> mask

Why compose graphs instead of exporting a wrapped PyTorch module again: the network's graph
is the one whose parity with PyTorch was measured, and the steps added are exact (no float
arithmetic besides the uint8 -> float32 cast), so they are checked for exact equality.

The graph does not scale. ``ccnet serve`` scales an image whose long side exceeds its
``max_side`` (1024 by default) down before inference and the mask back up after (PIL
bilinear, then nearest); an exported model runs such an image at its full size instead (more
memory and time, finer masks). Up to ``max_side`` the two give the same mask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ccnet.export.runtime.image_interface import (
    IMAGE_INPUT,
    LOGITS_OUTPUT,
    MASK_OUTPUT,
    STRIDE,
)

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ImageGraphError",
    "check_image_graph",
    "image_model",
    "reference_masks",
    "wrap_image_graph",
]

_PREFIX = "ccnet_io/"  # names of the added tensors and nodes: no clash with the network's


class ImageGraphError(ValueError):
    """The wrapped graph does not give what the network plus the pipeline's steps give."""


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename tensors wherever the graph's nodes and value infos use them."""
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


def wrap_image_graph(model: onnx.ModelProto, *, logits: bool = False) -> onnx.ModelProto:
    """A copy of the network ``model`` (one float32 ``(N, 3, H, W)`` input, one logits output)
    that takes ``image`` UINT8 ``(N, H, W, 3)`` and returns ``mask`` UINT8 ``(N, H, W)``, and
    ``logits`` FP32 ``(N, K, H, W)`` too with ``logits=True``.

    Raises:
        ValueError: ``model`` is not an image network of that form, or has over 256 classes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError("the image interface wraps a graph with one input and one output")
    pixels, scores = inputs[0], graph.output[0]
    if len(pixels.type.tensor_type.shape.dim) != 4:
        raise ValueError(f"input {pixels.name!r} is not (N, 3, H, W): clip models keep theirs")
    if pixels.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"input {pixels.name!r} is not float32")
    classes = scores.type.tensor_type.shape.dim[1]
    if classes.HasField("dim_value") and classes.dim_value > 256:
        raise ValueError(f"{classes.dim_value} classes do not fit a uint8 mask")

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    padded, padded_scores = f"{_PREFIX}padded", f"{_PREFIX}padded_logits"
    _rename(graph, {pixels.name: padded, scores.name: padded_scores})
    network = list(graph.node)

    def name(part: str) -> str:
        return f"{_PREFIX}{part}"

    constants = {
        name("hw_axes"): np.array([1, 2], dtype=np.int64),
        name("stride"): np.array([STRIDE], dtype=np.int64),
        name("no_pads"): np.zeros(6, dtype=np.int64),  # N, C, H, W before; N, C after
        name("crop_starts"): np.zeros(2, dtype=np.int64),
        name("crop_axes"): np.array([2, 3], dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    node = helper.make_node
    before = [
        node("Cast", [IMAGE_INPUT], [name("float")], to=TensorProto.FLOAT, name=name("cast")),
        node("Transpose", [name("float")], [name("nchw")], perm=[0, 3, 1, 2], name=name("nchw")),
        node("Shape", [IMAGE_INPUT], [name("shape")], name=name("shape")),
        node("Gather", [name("shape"), name("hw_axes")], [name("hw")], axis=0, name=name("hw")),
        node("Neg", [name("hw")], [name("minus_hw")], name=name("minus_hw")),
        # integer Mod with fmod=0 takes the divisor's sign: (-h) mod 8 is the padding, 0..7
        node("Mod", [name("minus_hw"), name("stride")], [name("pad_hw")], name=name("pad_hw")),
        node("Concat", [name("no_pads"), name("pad_hw")], [name("pads")], axis=0),
        node("Pad", [name("nchw"), name("pads")], [padded], mode="edge", name=name("pad")),
    ]
    cropped = LOGITS_OUTPUT if logits else name("logits")
    after = [
        node(
            "Slice",
            [padded_scores, name("crop_starts"), name("hw"), name("crop_axes")],
            [cropped],
            name=name("crop"),
        ),
        # select_last_index=0: ties go to the lowest class id, as numpy's argmax
        node("ArgMax", [cropped], [name("ids")], axis=1, keepdims=0, select_last_index=0),
        node("Cast", [name("ids")], [MASK_OUTPUT], to=TensorProto.UINT8, name=name("mask")),
    ]
    del graph.node[:]
    graph.node.extend([*before, *network, *after])

    # the network's own value infos call its padded sizes "height" and "width"
    batch, height, width = "batch", "image_height", "image_width"
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, [batch, height, width, 3])
    )
    graph.input.extend(v for v in model.graph.input if v.name in initializers)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(MASK_OUTPUT, TensorProto.UINT8, [batch, height, width])
    )
    if logits:
        count = classes.dim_value if classes.HasField("dim_value") else classes.dim_param
        graph.output.append(
            helper.make_tensor_value_info(
                LOGITS_OUTPUT, TensorProto.FLOAT, [batch, count, height, width]
            )
        )
    wrapped.metadata_props.add(key="ccnet.interface", value="image")
    onnx.checker.check_model(wrapped, full_check=True)
    return wrapped


def reference_masks(network: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masks, cropped logits) of ``images`` (N, H, W, 3) uint8 by the network graph alone,
    with the padding, crop and argmax done in numpy as ``ccnet serve``'s pipeline does them."""
    from ccnet.export.parity import onnxruntime_session

    session = onnxruntime_session(network)
    height, width = images.shape[1:3]
    pad = ((0, 0), (0, -height % STRIDE), (0, -width % STRIDE), (0, 0))
    pixels = np.pad(images, pad, mode="edge").astype(np.float32).transpose(0, 3, 1, 2)
    (scores,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(pixels)})
    cropped = scores[:, :, :height, :width]
    return cropped.argmax(axis=1).astype(np.uint8), cropped


def check_image_graph(
    wrapped: bytes, network: bytes, sizes: Sequence[tuple[int, int]], *, logits: bool
) -> None:
    """The wrapped graph gives exactly the masks (and logits) of the network run on the
    numpy-padded check batch at each size (sizes off the stride exercise the pad and crop).

    Raises:
        ImageGraphError: a mask or logit differs (the message says where and by how much).
    """
    from ccnet.export.parity import onnxruntime_session, sample_batch

    session = onnxruntime_session(wrapped)
    wanted = [MASK_OUTPUT, LOGITS_OUTPUT] if logits else [MASK_OUTPUT]
    for height, width in sizes:
        batch, _ = sample_batch(height, width)
        images = np.ascontiguousarray(batch.transpose(0, 2, 3, 1).astype(np.uint8))
        masks, scores = reference_masks(network, images)
        got = session.run(wanted, {IMAGE_INPUT: images})
        if got[0].dtype != np.uint8 or not np.array_equal(got[0], masks):
            same = float((got[0] == masks).mean()) if got[0].shape == masks.shape else 0.0
            raise ImageGraphError(
                f"the image graph's mask differs from the network's at {height}×{width} "
                f"({same:.4%} equal)"
            )
        if logits and not np.array_equal(got[1], scores):
            worst = float(np.abs(got[1] - scores).max()) if got[1].shape == scores.shape else -1
            raise ImageGraphError(
                f"the image graph's logits differ from the network's at {height}×{width} "
                f"(largest difference {worst:g})"
            )


def _input_policy(network_policy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "interface": "image",
        "normalization": "in_graph",
        "layout": "NHWC",
        "channel_order": "RGB",
        "value_range": [0, 255],
        "dtype": "uint8",
        "padding": f"edge replication at the bottom and right to a multiple of {STRIDE}, "
        "in the graph; the outputs are cropped back to the input's size",
        "scaling": "none: images larger than the server's max_side run at full size",
        "applied_in_graph": network_policy.get("applied_in_graph"),
        "note": "send the decoded image's RGB bytes as they are (N, H, W, 3); the mask is "
        "the class id of every pixel (ties: the lowest id)",
    }


def image_model(
    network: bytes,
    meta: Mapping[str, Any],
    *,
    logits: bool = False,
    check_sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The network export ``network`` (with its sidecar ``meta``) wrapped in the image
    interface and checked (``check_image_graph``): the file's bytes and its sidecar, which
    describes the wrapped file and names the network's SHA-256.

    Raises:
        ValueError: not an image network of the exported form.
        ImageGraphError: the wrapped graph disagrees with the network (nothing to write).
    """
    import onnx

    from ccnet.export.parity import DEFAULT_CHECK_SIZES
    from ccnet.export.runtime.sidecar import io_specs

    if meta.get("output", "logits") != "logits":
        raise ValueError(
            "the image interface wraps a logits export (ccnet export onnx without --output mask)"
        )
    sizes = list(check_sizes or DEFAULT_CHECK_SIZES)
    proto = wrap_image_graph(onnx.load_from_string(network), logits=logits)
    data = proto.SerializeToString()
    check_image_graph(data, network, sizes, logits=logits)
    inputs, outputs = io_specs(proto)
    sidecar = {
        **meta,
        "sha256": hashlib.sha256(data).hexdigest(),
        "output": MASK_OUTPUT,
        "interface": "image",
        "network_sha256": meta["sha256"],
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "dynamic_axes": {
            s.name: {str(i): n for i, n in s.dynamic_axes.items()} for s in [*inputs, *outputs]
        },
        "input_policy": _input_policy(meta.get("input_policy", {})),
        "image_graph_check": {
            "sizes": [list(size) for size in sizes],
            "masks_equal": True,
            "logits_equal": True if logits else None,
        },
    }
    return data, sidecar
