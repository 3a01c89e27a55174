"""TensorRT backend: an engine built by ``ccnet export tensorrt`` (or the serve prepare step).

Everything TensorRT-specific lives on the runtime side of ``export``: the plugin library goes
through the process-wide loader (a second model, or an engine built earlier in the same
process, reuses the loaded library instead of failing a second ``loadLibrary``), and the engine
runs in ``export.runtime.runner.EngineRunner``, the same code that checked it at build time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo

__all__ = ["TensorRTBackend"]


class TensorRTBackend(InferenceBackend):
    """A serialized TensorRT engine (``engine.plan`` + ``engine.json``).

    Args:
        info: the model's description (from the engine sidecar).
        path: the engine file.
        plugin: the criss-cross attention plugin library (loaded before deserializing).
        sidecar: the engine's validated sidecar (``read_engine_sidecar``); its ``custom_ops``
            must be registered once the plugin is loaded.
    """

    name = "tensorrt"
    thread_safe = False  # one execution context and stream

    def __init__(
        self,
        info: ModelInfo,
        path: str | Path,
        *,
        plugin: Path | None,
        sidecar: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(info)
        from ccnet.export.runtime.availability import require_tensorrt
        from ccnet.export.runtime.plugins import load_plugin
        from ccnet.export.runtime.runner import EngineRunner

        try:
            trt = require_tensorrt()
            if plugin is not None:
                load_plugin(plugin, runtime=trt, required=(sidecar or {}).get("custom_ops", []))
            elif (sidecar or {}).get("plugin_layers"):
                raise ValueError(
                    f"{path} uses the criss-cross attention plugin: set CCNET_TRT_PLUGIN "
                    "to libccnet_trt_plugin.so"
                )
            self.runner = EngineRunner(trt, Path(path).read_bytes(), label=str(path))
        except (OSError, ImportError, ValueError) as error:
            raise BackendError(str(error)) from error
        self.min_shape, self.max_shape = self.runner.min_shape, self.runner.max_shape

    @property
    def device(self) -> str:
        return "cuda"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` lies inside the engine's optimisation profile."""
        return self.runner.accepts(shape)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.runner.run(batch)
        except ValueError as error:
            raise BackendError(str(error)) from error
