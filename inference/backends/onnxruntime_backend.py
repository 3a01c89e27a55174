"""ONNX Runtime backend: an exported ``model.onnx`` (+ ``model.json``) on the best provider.

Provider order is TensorRT, CUDA, CPU, keeping only those this onnxruntime build offers, so
the same code serves the CPU wheel and onnxruntime-gpu. The criss-cross attention nodes run
through the ONNX local function stored in the model on every provider.

On the CPU it runs fp32 or int8 (a static QDQ model of the same export, see ``quantize``),
and, with a ``ThreadPolicy``, one session per thread count the policy hands out: a session's
intra-op pool is fixed when it is built, so a lone request (every core) and concurrent ones
(one core each) run on different sessions of the same model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo, Runner
from ccnet.inference.backends.threads import ThreadPolicy

__all__ = ["OnnxRuntimeBackend", "available_providers"]

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    """The providers this onnxruntime build offers, in the order we prefer them."""
    import onnxruntime

    offered = set(onnxruntime.get_available_providers())
    return [p for p in _PREFERRED if p in offered]


class OnnxRuntimeBackend(InferenceBackend):
    """An ONNX export run by ONNX Runtime.

    Args:
        info: the model's description (from the sidecar).
        path: the ``.onnx`` file.
        device: "cpu" keeps to the CPU provider; "auto"/"cuda" try GPU providers first.
        threads: intra-op threads (0 = ONNX Runtime's default) when there is no policy.
        providers: explicit provider list, overriding ``device``.
        int8: makes (or finds in a cache) the int8 model of ``path`` when it is first needed.
        thread_policy: intra-op threads per pass from the load (CPU provider only).
    """

    name = "onnxruntime"

    def __init__(
        self,
        info: ModelInfo,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        providers: Sequence[str] | None = None,
        int8: Callable[[], Path] | None = None,
        thread_policy: ThreadPolicy | None = None,
    ) -> None:
        super().__init__(info)
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError(
                "the onnxruntime backend needs onnxruntime (pip install 'ccnet-stack[export]')"
            ) from error
        self._ort = onnxruntime
        chosen = list(providers) if providers else available_providers()
        if device == "cpu":
            chosen = ["CPUExecutionProvider"]
        elif device == "cuda" and not any(p != "CPUExecutionProvider" for p in chosen):
            raise BackendError("device 'cuda' was asked for, but onnxruntime has no GPU provider")
        self._chosen = chosen
        self._paths: dict[str, Path | Callable[[], Path]] = {"fp32": Path(path)}
        if int8 is not None:
            self._paths["int8"] = int8
        self._threads = threads
        # sessions by (precision, intra-op threads); 0 threads = ONNX Runtime's default
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()  # workers may ask for a missing session at once
        self.session = self._session("fp32", threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._providers = self.session.get_providers()
        on_cpu = self._providers[0] == "CPUExecutionProvider"
        self.thread_policy = thread_policy if on_cpu else None

    @property
    def device(self) -> str:
        return "cuda" if self._providers[0] != "CPUExecutionProvider" else "cpu"

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses, best first."""
        return list(self._providers)

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32, and int8 when an int8 model can be made (CPU provider only)."""
        return tuple(self._paths) if self.device == "cpu" else ("fp32",)

    def _path(self, precision: str) -> Path:
        source = self._paths[precision]
        if callable(source):  # made on first use, then remembered
            source = self._paths[precision] = source()
        return source

    def _session(self, precision: str, threads: int) -> Any:
        key = (precision, threads)
        with self._lock:
            return self._sessions.get(key) or self._new_session(key)

    def _new_session(self, key: tuple[str, int]) -> Any:
        precision, threads = key
        if key not in self._sessions:
            path = self._path(precision)
            options = self._ort.SessionOptions()
            options.log_severity_level = 3  # provider fallbacks are reported by us, not noise
            if threads:
                options.intra_op_num_threads = threads
            try:
                self._sessions[key] = self._ort.InferenceSession(
                    str(path), sess_options=options, providers=self._chosen
                )
            except Exception as error:  # onnxruntime raises its own exception types
                raise BackendError(f"{path}: ONNX Runtime cannot load it: {error}") from error
        return self._sessions[key]

    def _widths(self) -> tuple[int, ...]:
        return self.thread_policy.widths if self.thread_policy else (self._threads,)

    def use_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise BackendError(
                f"the onnxruntime backend here runs {', '.join(self.precisions)}, not {precision}"
            )
        for width in self._widths():
            self._session(precision, width)  # built now, not on the first request
        # the gate's sessions of other precisions are dropped: each holds a copy of weights
        for key in [k for k in self._sessions if k[0] != precision]:
            del self._sessions[key]
        self.session = self._sessions[(precision, max(self._widths()))]
        self.precision = precision

    def precision_runners(self, precisions: Sequence[str]) -> tuple[Runner, dict[str, Runner]]:
        unknown = [p for p in precisions if p not in self.precisions]
        if unknown:
            raise BackendError(f"no onnxruntime path for {unknown} here")
        wide = max(self._widths())  # as a lone request runs

        def runner(precision: str) -> Runner:
            return lambda batch: self._run(self._session(precision, wide), batch)

        return runner("fp32"), {p: runner(p) for p in precisions}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.thread_policy is None:
            return self._run(self.session, batch)
        with self.thread_policy.slot() as threads:
            return self._run(self._session(self.precision, threads), batch)

    def _run(self, session: Any, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        (logits,) = session.run([self.output_name], feed)
        return np.asarray(logits, dtype=np.float32)

    def close(self) -> None:
        self._sessions.clear()
