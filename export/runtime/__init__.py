"""The runtime side of ``export``: what a process that only *runs* exported models needs.

The service imports this package and nothing else of ``export``; the build side
(``export.onnx``, ``export.parity``, ``export.engine``, ``export.triton``, ``export.prepare``)
imports it too, so both sides agree on one implementation of each piece:

* ``export.runtime.availability`` — whether TensorRT (full or lean runtime) and a GPU are here;
* ``export.runtime.plugins`` — the plugin library: where it is, and one process-wide loader;
* ``export.runtime.runner`` — ``EngineRunner``: deserialise an engine and run it on a batch;
* ``export.runtime.sidecar`` — the JSON sidecars (ONNX and engine), read and validated;
* ``export.runtime.artifacts`` — where a prepared artifact lives in the cache (its cache key);
* ``export.runtime.image_interface`` — the tensors /v2 and the exported Triton model speak, and
  the stride both pad to.

Nothing heavy is imported at package import time.
"""

__all__: list[str] = []
