"""CCNet3D one frame at a time: per-frame work cached, only the newest frame's last pass run.

A CCNet3D window's logits for one frame depend on the other frames only through the 3D
criss-cross attention. Everything before the first attention pass is per frame (the backbone,
``conva``, the first pass's 1×1 projections), so each frame's share is computed once, when it
arrives (``encode``), and kept in a ring buffer by the caller. Per window (``decode``):

- passes 1 … R-1 run over the whole window (each frame's time line sees the other frames, so
  their results change with the window and cannot be cached);
- the last pass runs for the target frame's queries only (``criss_cross_attention_at``): its
  keys and values still come from every frame, but only one frame's outputs are needed;
- ``convb``, the bottleneck, the classifier and the upsampling run for the target frame only.

The result equals ``CCNet3D(window)[:, :, target]`` up to float rounding (the projections run
as 2D convolutions per frame instead of one 3D convolution over the window).

The attention of passes 1 … R-1 is injectable (``op``) so the ONNX export can swap in its custom
node; the last pass is plain tensor ops, which every exporter understands.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ccnet.model.cca3d import criss_cross_attention_3d
from ccnet.model.ccnet import CCNet3D

__all__ = [
    "STREAM_FORMAT",
    "STREAM_SIDECAR",
    "FrameEncoder",
    "WindowDecoder",
    "criss_cross_attention_at",
    "frame_state_names",
]

# the stream export's sidecar: written by ``export.stream_onnx``, read by ``inference``
STREAM_FORMAT = "ccnet-stream"
STREAM_SIDECAR = "stream.json"

AttentionOp = Callable[[Tensor, Tensor, Tensor], Tensor]


def frame_state_names(recurrence: int) -> tuple[str, ...]:
    """What ``FrameEncoder`` returns per frame, in order (the ONNX graphs' tensor names)."""
    return ("features", "reduced", "query", "key", "value")[: 2 if recurrence == 0 else 5]


def _pointwise(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """A 1×1×1 Conv3d applied to one frame (B, C, H, W) as the equivalent 1×1 Conv2d."""
    return nn.functional.conv2d(x, conv.weight[:, :, 0], conv.bias)


def _mask_where(energies: Tensor, mask: Tensor) -> Tensor:
    # -inf from the energies' own dtype (a float32 constant would break half precision)
    return energies.masked_fill(mask, float("-inf"))


def criss_cross_attention_at(q: Tensor, k: Tensor, v: Tensor, target: Tensor) -> Tensor:
    """The 3D criss-cross attention's output at one frame of the window.

    Args:
        q: the target frame's queries (B, Cq, H, W).
        k: keys of every frame (B, Cq, T, H, W).
        v: values of every frame (B, C, T, H, W).
        target: the target frame's index in the window, an int64 tensor of shape (1,).

    Returns:
        (B, C, H, W), equal to ``criss_cross_attention_3d(q_all, k, v)[:, :, target]``: each
        pixel attends to its time line (the other frames at that pixel), its column and its
        row in the target frame, itself counted once (on the row, as the 3D op counts it).
    """
    frames = k.shape[2]
    k_t = k.index_select(2, target).squeeze(2)  # (B, Cq, H, W)
    v_t = v.index_select(2, target).squeeze(2)  # (B, C, H, W)
    qc = q.permute(0, 2, 3, 1)  # (B, H, W, Cq)
    # time: (B, H, W, 1, Cq) @ (B, H, W, Cq, T) -> (B, H, W, T), the target itself masked
    e_time = (qc.unsqueeze(-2) @ k.permute(0, 3, 4, 1, 2)).squeeze(-2)
    e_time = _mask_where(e_time, torch.arange(frames, device=k.device) == target)
    # column: (B, W, H, Cq) @ (B, W, Cq, H') -> (B, W, H, H'), the pixel itself masked
    e_col = qc.transpose(1, 2) @ k_t.permute(0, 3, 1, 2)
    rows = torch.arange(e_col.shape[-1], device=k.device)
    e_col = _mask_where(e_col, rows.unsqueeze(1) == rows.unsqueeze(0)).transpose(1, 2)
    # row: (B, H, W, Cq) @ (B, H, Cq, W') -> (B, H, W, W'), the pixel itself kept
    e_row = qc @ k_t.permute(0, 2, 1, 3)
    # one softmax over the three lines' keys, written out (no split sizes from shapes)
    low = e_row.dtype in (torch.float16, torch.bfloat16)
    energies = [e.float() if low else e for e in (e_time, e_col, e_row)]
    peak = torch.maximum(
        torch.maximum(energies[0].amax(-1, keepdim=True), energies[1].amax(-1, keepdim=True)),
        energies[2].amax(-1, keepdim=True),
    )
    exps = [torch.exp(e - peak) for e in energies]
    total = exps[0].sum(-1, keepdim=True) + exps[1].sum(-1, keepdim=True)
    total = total + exps[2].sum(-1, keepdim=True)
    a_time, a_col, a_row = (p.div(total).to(v.dtype) for p in exps)
    # (B, H, W, 1, T) @ (B, H, W, T, C) -> (B, H, W, C)
    out = (a_time.unsqueeze(-2) @ v.permute(0, 3, 4, 2, 1)).squeeze(-2)
    # (B, W, H, H') @ (B, W, H', C) -> (B, W, H, C)
    out = out + (a_col.transpose(1, 2) @ v_t.permute(0, 3, 2, 1)).transpose(1, 2)
    # (B, H, W, W') @ (B, H, W', C) -> (B, H, W, C)
    out = out + a_row @ v_t.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2)


class FrameEncoder(nn.Module):
    """Per frame, once: normalised pixels (B, 3, H, W) -> the tensors of ``frame_state_names``.

    ``features`` is the backbone's layer4 (B, C, h, w), ``reduced`` the head's ``conva``
    output (B, inter, h, w), and with R >= 1 the first attention pass's ``query``, ``key``,
    ``value`` projections of it. Shares the model's weights.
    """

    def __init__(self, model: CCNet3D) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(x)["layer4"]
        reduced = self.head.conva(features)
        if self.head.recurrence == 0:
            return features, reduced
        cca = self.head.cca
        projections = (cca.query_conv, cca.key_conv, cca.value_conv)
        return (features, reduced, *(_pointwise(p, reduced) for p in projections))


class WindowDecoder(nn.Module):
    """Per window: the buffered frames' states -> the target frame's logits (B, K, 8h, 8w).

    Args:
        model: the CCNet3D (weights shared).
        op: the 3D attention of passes 1 … R-1 (default the model's dispatcher).

    ``forward(features, reduced[, query, key, value], target)`` takes the target frame's
    ``features`` (B, C, h, w), every frame's other states stacked on a time axis
    (B, ·, T, h, w), and the target's index as an int64 tensor of shape (1,).
    """

    def __init__(self, model: CCNet3D, op: AttentionOp = criss_cross_attention_3d) -> None:
        super().__init__()
        self.head = model.head
        self.resize_logits = model.resize_logits
        self.op = op

    def forward(self, features: Tensor, *states: Tensor) -> Tensor:
        *stacked, target = states
        head, cca = self.head, self.head.cca
        x = stacked[0]  # (B, inter, T, h, w): conva per frame
        if head.recurrence == 0:
            context = x.index_select(2, target).squeeze(2)
        else:
            q, k, v = stacked[1:]
            for _ in range(head.recurrence - 1):  # passes whose every frame is needed
                x = cca.gamma * self.op(q, k, v) + x
                q, k, v = (p(x) for p in (cca.query_conv, cca.key_conv, cca.value_conv))
            x_t = x.index_select(2, target).squeeze(2)
            q_t = q.index_select(2, target).squeeze(2)
            context = cca.gamma * criss_cross_attention_at(q_t, k, v, target) + x_t
        fused = head.bottleneck(torch.cat([features, head.convb(context)], dim=1))
        logits = head.classifier(head.dropout(fused))
        # the input's size: frames are padded to the output stride, 8 (``StreamSegmenter``)
        return self.resize_logits(logits, (logits.shape[-2] * 8, logits.shape[-1] * 8))
