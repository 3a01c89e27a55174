"""Model export: ONNX with a criss-cross attention node, TensorRT plugin and engines, Triton.

Two sides (import the module you need; this package imports nothing heavy itself).

Build side, used by the commands (``ccnet export``, and ``ccnet serve``'s prepare step):

* ``export.onnx`` — ``export_onnx``: checkpoint -> verified ``model.onnx`` + ``model.json``;
* ``export.graph_capture`` — the torch side: custom ops, exportable copy, ``torch.onnx`` call;
* ``export.onnx_functions`` — the ``ccnet::CrissCrossAttention[3d]`` node and local function;
* ``export.parity`` — check inputs (noise, real photographs), ONNX Runtime vs PyTorch verdicts;
* ``export.engine`` — ``build_engine``: ONNX -> TensorRT engine with the plugin, checked;
* ``export.triton`` — ``write_triton_repository``: Triton model repository;
* ``export.image_graph`` — the image interface in the graph (UINT8 in, pad, crop, argmax, mask);
* ``export.prepare`` — ``prepare_artifact``: a served model file -> the artifact its backend runs;
* ``export.cli`` — the ``ccnet export`` subcommands;

Runtime side, all the service imports: ``export.runtime`` (TensorRT availability, the
process-wide plugin loader, the engine runner, the validated sidecar readers, the cache keys of
prepared artifacts, the image interface /v2 and the Triton export share).

* ``export.tensorrt/``, ``export.cuda_ext`` — the plugin and CUDA kernels (C++/CUDA sources).
"""

__all__: list[str] = []
