"""The image interface: what ``ccnet serve``'s ``/v2`` and an exported Triton model take and give.

One description, read by both sides, so a client written against one works against the other:

* input ``image``: UINT8 ``[N, H, W, 3]``, RGB values 0..255, any height and width (the
  server's ``/v2`` also takes ``image_bytes``, encoded files, which an ONNX graph cannot decode);
* output ``mask``: UINT8 ``[N, H, W]``, class ids at the input's size;
* output ``logits`` (on request): FP32 ``[N, K, H, W]``, the network's scores at the input's size.

Between them the same steps run on both sides: padding by edge replication at the bottom and
the right to a multiple of ``STRIDE`` (feature cells then line up with pixels), the network
(normalisation is inside it), the scores cropped back to ``H × W``, and the first largest
class per pixel. The server also scales images whose long side exceeds its ``max_side`` down
before this and the mask back up after (``inference.pipeline``); the exported graph does not
scale (see ``export.image_graph``), so the two agree exactly up to ``max_side``.

Tensors are described in the protocol's datatypes (``"UINT8"``); ``TRITON_TYPES`` maps them to
Triton's model-configuration names (``"TYPE_UINT8"``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ENCODED_INPUT",
    "IMAGE_INPUT",
    "LOGITS_OUTPUT",
    "MASK_OUTPUT",
    "STRIDE",
    "TRITON_TYPES",
    "InterfaceTensor",
    "image_inputs",
    "image_outputs",
]

STRIDE = 8  # inputs are padded to a multiple of the networks' output stride
IMAGE_INPUT = "image"
ENCODED_INPUT = "image_bytes"
MASK_OUTPUT = "mask"
LOGITS_OUTPUT = "logits"
# the protocol's datatype -> Triton's config data_type (BYTES is TYPE_STRING there)
TRITON_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


@dataclass(frozen=True)
class InterfaceTensor:
    """One tensor of the interface: ``dims`` without the batch axis, -1 for any size."""

    name: str
    datatype: str  # the protocol's name: "UINT8", "FP32", "BYTES"
    dims: tuple[int, ...]

    @property
    def triton_type(self) -> str:
        return TRITON_TYPES[self.datatype]

    def shape(self) -> list[int]:
        """The protocol's shape, batch axis (-1) first."""
        return [-1, *self.dims]


def image_inputs(*, encoded: bool) -> list[InterfaceTensor]:
    """``image`` (and ``image_bytes`` where encoded files can be decoded: the server)."""
    inputs = [InterfaceTensor(IMAGE_INPUT, "UINT8", (-1, -1, 3))]
    if encoded:
        inputs.append(InterfaceTensor(ENCODED_INPUT, "BYTES", (1,)))
    return inputs


def image_outputs(num_classes: int, *, logits: bool) -> list[InterfaceTensor]:
    """``mask`` (and ``logits`` with ``num_classes`` scores per pixel)."""
    outputs = [InterfaceTensor(MASK_OUTPUT, "UINT8", (-1, -1))]
    if logits:
        outputs.append(InterfaceTensor(LOGITS_OUTPUT, "FP32", (num_classes, -1, -1)))
    return outputs
