"""The criss-cross attention op on the ONNX side: its node, its schema and its local function.

In an exported graph every criss-cross attention is ONE node ``CrissCrossAttention`` (2D) or
``CrissCrossAttention3d`` (3D) in domain ``ccnet``, inputs ``q, k, v``, output ``out`` (same
shape and type as ``v``), attributes ``plugin_version="1"`` and ``plugin_namespace=""``. The node
computes the op only: no gamma, no residual (those stay ordinary Mul/Add nodes around it).

The model also carries an ONNX *local function* of the same name and domain whose body is
standard ops, so that

* ONNX Runtime (and any tool that inlines functions, e.g. ``onnx.inliner``) runs the file as is;
* TensorRT's ONNX parser maps the node to our plugin: a node with a ``plugin_namespace``
  attribute is imported as the registered plugin of that name, version and namespace when one is
  loaded, else as the function body (standard TensorRT layers). ``export.engine`` goes further
  and strips the functions when it loads the plugin, so older parsers that always preferred the
  local function cannot silently bypass it.

The body mirrors ``model.axial.axial_attention_reference`` for any number of spatial axes: per
axis a batched MatMul on transposed views, self-loops masked on all but the last axis, one joint
softmax (computed in float32, as the PyTorch op does for half precision) and a MatMul with the
values. The self mask is ``Equal(Unsqueeze(Range(L)), Range(L))`` fed to ``Where``: TensorRT
rejects ``EyeLike`` with dynamic dims and ``aten::diag`` does not export. The softmax is written
out (ReduceMax/Exp/ReduceSum/Div over each axis' keys, maxima and sums combined across axes)
rather than concatenated and split, so no split sizes are computed from dynamic shapes. Only the
small ``(B, *spatial, 1)`` statistics are transposed between the axes' layouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is imported where it is used: `import export` stays light
    import onnx

__all__ = [
    "OP_DOMAIN",
    "OP_DOMAIN_VERSION",
    "OP_TYPES",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "attach_functions",
    "attention_function",
    "attention_nodes",
    "attention_op_schema",
    "detach_functions",
    "op_type",
]

OP_DOMAIN = "ccnet"
OP_DOMAIN_VERSION = 1
OP_TYPES: dict[int, str] = {2: "CrissCrossAttention", 3: "CrissCrossAttention3d"}
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
_ATTRIBUTES = ("plugin_version", "plugin_namespace")


def op_type(spatial_dims: int) -> str:
    """The node's op_type for 2 (images) or 3 (clips) spatial dims."""
    try:
        return OP_TYPES[spatial_dims]
    except KeyError:
        raise ValueError(
            f"criss-cross attention has 2 or 3 spatial dims, not {spatial_dims}"
        ) from None


def attention_op_schema(spatial_dims: int) -> onnx.defs.OpSchema:
    """An (unregistered) schema for the node, so onnxscript can emit it during export.

    It is handed to the exporter only; it is never registered globally, so the checker and
    ONNX Runtime see the node through its local function, as every other consumer will.
    """
    import onnx

    param = onnx.defs.OpSchema.FormalParameter
    string = onnx.defs.OpSchema.AttrType.STRING
    return onnx.defs.OpSchema(
        op_type(spatial_dims),
        OP_DOMAIN,
        OP_DOMAIN_VERSION,
        doc=f"Criss-cross attention over {spatial_dims} spatial axes (see export.onnx_functions)",
        inputs=[param("q", "T"), param("k", "T"), param("v", "T")],
        outputs=[param("out", "T")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "floating point")
        ],
        attributes=[
            onnx.defs.OpSchema.Attribute("plugin_version", string, "TensorRT plugin version"),
            onnx.defs.OpSchema.Attribute("plugin_namespace", string, "TensorRT plugin namespace"),
        ],
    )


class _Body:
    """Collects the nodes of a function body; every value gets a unique, readable name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: list[str], name: str, **attributes: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        return name

    def constant(self, name: str, value: float | int | list[int]) -> str:
        from onnx import TensorProto, helper

        if isinstance(value, list):
            tensor = helper.make_tensor(name, TensorProto.INT64, [len(value)], value)
        elif isinstance(value, float):
            tensor = helper.make_tensor(name, TensorProto.FLOAT, [], [value])
        else:
            tensor = helper.make_tensor(name, TensorProto.INT64, [], [value])
        return self.add("Constant", [], name, value=tensor)


def _inverse(perm: list[int]) -> list[int]:
    """The Transpose perm that undoes ``perm`` (equivalently: brings a tensor whose axes are
    ``perm``, in the source's numbering, back to the source's order)."""
    return [perm.index(i) for i in range(len(perm))]


def attention_function(spatial_dims: int, opset: int) -> onnx.FunctionProto:
    """The local function ``ccnet::CrissCrossAttention[3d]``: standard ops, any input sizes.

    Args:
        spatial_dims: 2 for ``(B, C, H, W)`` inputs, 3 for ``(B, C, T, H, W)``.
        opset: the default-domain opset the body is written against (the model's; >= 18).
    """
    from onnx import TensorProto, helper

    if opset < 18:
        raise ValueError(f"the attention function needs opset >= 18, got {opset}")
    body = _Body()
    spatial = list(range(2, 2 + spatial_dims))  # axes of q/k/v holding T, H, W
    zero, one = body.constant("zero", 0), body.constant("one", 1)
    keys_axis = body.constant("keys_axis", [-1])
    minus_inf = body.constant("minus_inf", float("-inf"))

    canonical = [0, *spatial]  # the statistics' shared layout (B, *spatial, 1)
    energies, to_canonical = [], []
    for d, axis in enumerate(spatial):
        others = [s for s in spatial if s != axis]
        query_order = [0, *others, axis]  # energies' query dims in q's axis numbering
        # (B, *others, L, Cq) @ (B, *others, Cq, L') -> (B, *others, L, L')
        q_axis = body.add("Transpose", ["q"], f"q_{d}", perm=[*query_order, 1])
        k_axis = body.add("Transpose", ["k"], f"k_{d}", perm=[0, *others, 1, axis])
        energy = body.add("MatMul", [q_axis, k_axis], f"energy_{d}")
        if d < spatial_dims - 1:  # the position itself is counted once: on the last axis
            length = body.add("Shape", ["q"], f"length_{d}", start=axis, end=axis + 1)
            length = body.add("Squeeze", [length], f"length_scalar_{d}")
            index = body.add("Range", [zero, length, one], f"index_{d}")
            column = body.add("Unsqueeze", [index, keys_axis], f"column_{d}")
            self_mask = body.add("Equal", [column, index], f"self_{d}")  # (L, L) diagonal
            fill = body.add("CastLike", [minus_inf, energy], f"minus_inf_{d}")
            energy = body.add("Where", [self_mask, fill, energy], f"energy_masked_{d}")
        energies.append(body.add("Cast", [energy], f"energy_f32_{d}", to=TensorProto.FLOAT))
        # (B, *others, L, 1) -> (B, *spatial, 1); the keys axis stays last
        to_canonical.append([query_order.index(c) for c in canonical] + [len(query_order)])

    def canonical_stat(op: str, tensor: str, d: int, name: str) -> str:
        stat = body.add(op, [tensor, keys_axis], f"{name}_{d}", keepdims=1)
        return body.add("Transpose", [stat], f"{name}_canonical_{d}", perm=to_canonical[d])

    peak = canonical_stat("ReduceMax", energies[0], 0, "peak")
    for d in range(1, spatial_dims):
        peak_d = canonical_stat("ReduceMax", energies[d], d, "peak")
        peak = body.add("Max", [peak, peak_d], f"peak_joint_{d}")
    exps, partial_sums = [], []
    for d in range(spatial_dims):
        peak_d = body.add("Transpose", [peak], f"peak_axis_{d}", perm=_inverse(to_canonical[d]))
        shifted = body.add("Sub", [energies[d], peak_d], f"shifted_{d}")
        exps.append(body.add("Exp", [shifted], f"exp_{d}"))
        partial_sums.append(canonical_stat("ReduceSum", exps[d], d, "sum"))
    total = partial_sums[0]
    for d in range(1, spatial_dims):
        total = body.add("Add", [total, partial_sums[d]], f"total_{d}")

    out = None
    for d, axis in enumerate(spatial):
        others = [s for s in spatial if s != axis]
        total_d = body.add("Transpose", [total], f"total_axis_{d}", perm=_inverse(to_canonical[d]))
        weights = body.add("Div", [exps[d], total_d], f"attention_f32_{d}")
        weights = body.add("CastLike", [weights, "v"], f"attention_{d}")
        # (B, *others, L, L') @ (B, *others, L', C) -> (B, *others, L, C)
        v_axis = body.add("Transpose", ["v"], f"v_{d}", perm=[0, *others, axis, 1])
        part = body.add("MatMul", [weights, v_axis], f"context_{d}")
        layout = [0, *others, axis, 1]
        part = body.add("Transpose", [part], f"context_nc_{d}", perm=_inverse(layout))
        out = part if out is None else body.add("Add", [out, part], f"out_{d}")
    body.nodes[-1].output[0] = "out"
    return helper.make_function(
        OP_DOMAIN,
        op_type(spatial_dims),
        ["q", "k", "v"],
        ["out"],
        body.nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(_ATTRIBUTES),
        doc_string=f"Criss-cross attention over {spatial_dims} spatial axes in standard ops; "
        "TensorRT maps the calling node to the plugin of the same name when it is loaded.",
    )


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The criss-cross attention nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.domain == OP_DOMAIN and n.op_type in OP_TYPES.values()]


def detach_functions(model: onnx.ModelProto) -> int:
    """Remove the criss-cross attention local functions (nodes stay); returns how many.

    What the engine builder parses when the plugin is loaded: the nodes can then only become
    plugin layers.
    """
    kept = [f for f in model.functions if f.domain != OP_DOMAIN]
    removed = len(model.functions) - len(kept)
    del model.functions[:]
    model.functions.extend(kept)
    return removed


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Give ``model`` the local function of every criss-cross attention op its graph calls.

    The functions are written against the model's default-domain opset; the ``ccnet`` domain is
    imported at version 1. Existing attention functions are replaced.

    Returns:
        The op types that got a function.
    """
    from onnx import helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used = sorted({n.op_type for n in attention_nodes(model)})
    spatial_of = {name: dims for dims, name in OP_TYPES.items()}
    detach_functions(model)
    model.functions.extend(attention_function(spatial_of[name], opset) for name in used)
    if used and not any(o.domain == OP_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION))
    return used
