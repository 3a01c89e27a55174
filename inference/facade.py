"""From a model file (or a bundled demo name) to a ready backend, for the Python API.

This is the one place in the inference library that reaches the export *build* side: a
checkpoint asked to run on onnxruntime or tensorrt needs its ONNX export (and engine) made
first, as ``ccnet serve`` makes it before its workers start. The service and the commands
prepare in their own entry points and call ``load_backend`` directly; the import contract
(``.importlinter``) allows this module alone.
"""

from __future__ import annotations

import os

from ccnet.inference.backends.base import BackendError, InferenceBackend
from ccnet.inference.backends.loading import load_backend
from ccnet.inference.demo import resolve_model_file
from ccnet.inference.options import LoadOptions

__all__ = ["open_backend"]


def open_backend(
    source: str | os.PathLike[str],
    options: LoadOptions | None = None,
    *,
    name: str | None = None,
) -> InferenceBackend:
    """The inference backend for a model file, prepared (exported, built) if it needs to be.

    Args:
        source: a checkpoint, ONNX export or TensorRT engine, or a bundled demo name
            (``ccnet-tiny``, ``ccnet3d-tiny``).
        options: how to load it (default: the file's own backend, auto precision).
        name: the model's name in results (default: its own).

    Raises:
        FileNotFoundError: no such file, and not a bundled name.
        ValueError: the file or the backend cannot be used; the message names the file.
    """
    options = options or LoadOptions()
    path = resolve_model_file(source)
    backend = options.backend_for(path)
    if backend != "torch":
        from ccnet.export.prepare import prepare_served  # as `ccnet serve` does, once, cached

        prepare_served(path, backend, options)
    try:
        return load_backend(name, path, options)
    except BackendError as error:
        raise ValueError(str(error)) from None
