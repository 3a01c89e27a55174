"""Model export: ONNX with a criss-cross attention node, TensorRT plugin and engines, Triton."""
