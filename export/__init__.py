"""Model export: ONNX with a criss-cross attention node, TensorRT plugin and engines, Triton.

Modules (import the one you need; this package imports nothing heavy itself):

* ``export.onnx`` — ``export_onnx``: checkpoint -> verified ``model.onnx`` + ``model.json``;
* ``export.graph_capture`` — the torch side: custom ops, exportable copy, ``torch.onnx`` call;
* ``export.onnx_functions`` — the ``ccnet::CrissCrossAttention[3d]`` node and local function;
* ``export.parity`` — check inputs (noise, real photographs), ONNX Runtime vs PyTorch verdicts;
* ``export.sidecar`` — the JSON beside an export; ``read_sidecar`` needs only the stdlib;
* ``export.engine`` — ``build_engine``: ONNX -> TensorRT engine with the plugin, checked;
* ``export.triton`` — ``write_triton_repository``: Triton model repository;
* ``export.cli`` — the ``ccnet export`` subcommands;
* ``export.tensorrt/``, ``export.cuda_ext`` — the plugin and CUDA kernels (C++/CUDA sources).
"""

__all__: list[str] = []
