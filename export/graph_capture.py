"""From a CCNet to an ONNX graph: criss-cross attention as one custom node, normalisation baked in.

Exporter. We use the dynamo-based ``torch.onnx.export(..., dynamo=True)``: in torch 2.13 it is the
default and maintained path, while the TorchScript exporter is deprecated (it warns on every call)
and frozen at opset 20. Criss-cross attention reaches it as a ``torch.library`` custom op
(``ccnet_export::criss_cross_attention_2d`` / ``_3d``, an opaque node to ``torch.export``) and
leaves it through ``custom_translation_table`` as a single ``ccnet::CrissCrossAttention[3d]``
node emitted by onnxscript.

Why a bare node and not an onnxscript *function* in the translation table: the exporter always
runs onnxscript's version converter, which inlines every model-local function first, so a
function emitted during translation would be dissolved into standard ops before we ever see the
model. The bare node survives; ``export.onnx_functions.attach_functions`` then adds the local
function afterwards, against the model's final opset.

Nothing here changes the caller's model: a deep copy is cast to the export dtype and its
attention blocks are swapped for ``_ExportAttention``, which runs the same
``attention_block_forward`` (projections, ``gamma * op + x``) with the custom op in place of the
attention function.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ccnet.export.onnx_functions import PLUGIN_NAMESPACE, PLUGIN_VERSION, attention_op_schema
from ccnet.model import CCNet, CCNet3D, Normalization
from ccnet.model.axial import attention_block_forward, axial_attention_reference
from ccnet.model.cca import CrissCrossAttention
from ccnet.model.cca3d import CrissCrossAttention3d

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DTYPES",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "ExportableModel",
    "capture_onnx",
    "dynamic_axes",
]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
INPUT_NAMES = {False: "image", True: "clip"}  # keyed by "is a video model"
OUTPUT_NAME = "logits"
_EXPORTING_OP_NAMESPACE = "ccnet_export"


# ---------------------------------------------------------------------------- custom ops
# The eager implementations only serve calls outside export (they are the reference path);
# during torch.export the fake implementations give shapes and dtypes.


@torch.library.custom_op(f"{_EXPORTING_OP_NAMESPACE}::criss_cross_attention_2d", mutates_args=())
def _cca_2d(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return axial_attention_reference(q, k, v).contiguous()


@torch.library.custom_op(f"{_EXPORTING_OP_NAMESPACE}::criss_cross_attention_3d", mutates_args=())
def _cca_3d(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return axial_attention_reference(q, k, v).contiguous()


@_cca_2d.register_fake
def _cca_2d_fake(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.empty_like(v)


@_cca_3d.register_fake
def _cca_3d_fake(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.empty_like(v)


def _translation_table() -> dict[object, object]:
    """torch custom op -> onnxscript callable emitting the bare ``ccnet`` node."""
    from onnxscript.values import Op, Opset

    table: dict[object, object] = {}
    for dims, torch_op in (
        (2, torch.ops.ccnet_export.criss_cross_attention_2d),
        (3, torch.ops.ccnet_export.criss_cross_attention_3d),
    ):
        schema = attention_op_schema(dims)
        onnx_op = Op(Opset(schema.domain, schema.since_version), schema.name, schema)

        def translate(q: object, k: object, v: object, onnx_op: Op = onnx_op) -> object:
            return onnx_op(
                q, k, v, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE
            )

        table[torch_op.default] = translate
    return table


# ---------------------------------------------------------------------------- modules


class _ExportAttention(nn.Module):
    """A criss-cross attention block whose attention is the custom op (shares the weights)."""

    def __init__(self, block: CrissCrossAttention | CrissCrossAttention3d) -> None:
        super().__init__()
        self.query_conv = block.query_conv
        self.key_conv = block.key_conv
        self.value_conv = block.value_conv
        self.gamma = block.gamma
        is_3d = isinstance(block, CrissCrossAttention3d)
        ops = torch.ops.ccnet_export
        self._op = ops.criss_cross_attention_3d if is_3d else ops.criss_cross_attention_2d

    def forward(self, x: Tensor) -> Tensor:
        projections = (self.query_conv, self.key_conv, self.value_conv)
        return attention_block_forward(x, projections, self.gamma, self._op)


def _swap_attention(model: nn.Module) -> int:
    """Replace every criss-cross attention block in ``model`` (in place); returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CrissCrossAttention | CrissCrossAttention3d):
                setattr(parent, name, _ExportAttention(child))
                swapped += 1
    return swapped


class ExportableModel(nn.Module):
    """What the ONNX file computes: RGB 0..255 float32 in, float32 logits out.

    The input normalisation of the checkpoint (scale, channel order, mean/std) is applied in the
    graph, in float32, before the cast to the export dtype; the logits are cast back to
    float32. So every backend sees the same contract whatever ``--dtype`` was, and a client
    sends plain RGB values.

    Args:
        model: a CCNet or CCNet3D (left untouched; a copy is used).
        normalization: the checkpoint's input normalisation.
        dtype: the precision of the network itself (float32 or float16).
    """

    def __init__(self, model: CCNet, normalization: Normalization, dtype: torch.dtype) -> None:
        super().__init__()
        network = copy.deepcopy(model).eval().to(dtype)
        if _swap_attention(network) == 0:
            raise ValueError("the model has no criss-cross attention block to export")
        self.network = network
        self.normalization = normalization
        self.dtype = dtype
        self.video = isinstance(model, CCNet3D)
        self.eval()

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.normalization.normalize(pixels, channel_dim=1)  # float32
        return self.network(x.to(self.dtype)).float()


# ---------------------------------------------------------------------------- export


def dynamic_axes(video: bool) -> dict[int, str]:
    """Dynamic axes of input and output (axis -> name): batch, [frames,] height, width."""
    if video:
        return {0: "batch", 2: "frames", 3: "height", 4: "width"}
    return {0: "batch", 2: "height", 3: "width"}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter chatter that says nothing about this model (missing torchvision ops,
    deprecations inside torch.export); real errors still raise."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        registration.setLevel(level)


def capture_onnx(exportable: ExportableModel, opset: int) -> onnx.ModelProto:
    """Trace ``exportable`` with dynamic batch/[frames/]height/width and translate it to ONNX.

    The graph is optimised by the exporter (BatchNorm folded into the convolutions, constants
    folded); the attention nodes are bare (no local function yet, see the module docstring).
    """
    video = exportable.video
    example_shape = (2, 3, 3, 64, 96) if video else (2, 3, 64, 96)  # distinct sizes per axis
    example = torch.rand(example_shape) * 255
    dims = {
        axis: torch.export.Dim(name, min=1 if name in ("batch", "frames") else 8)
        for axis, name in dynamic_axes(video).items()
    }
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            exportable,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAMES[video]],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dims,),
            custom_translation_table=_translation_table(),
            optimize=True,
            verbose=False,
        )
    return program.model_proto
