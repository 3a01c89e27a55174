"""``ccnet serve``: check the settings and models, prepare every artifact once, start uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ccnet.inference.cli import positive_int
from ccnet.inference.options import PRECISIONS

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    _register_serve(commands)


# ---------------------------------------------------------------------------- serve


def _register_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="start the HTTP segmentation service",
        description="Serve image (CCNet) and clip (CCNet3D) segmentation over HTTP. With "
        "neither --model nor --model-dir the bundled demo models ccnet-tiny and ccnet3d-tiny "
        "are served. Every flag has a CCNET_* environment variable (CCNET_API_KEY sets the "
        "API key); flags win.",
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="a checkpoint (.pt), ONNX export (.onnx) or TensorRT engine (.engine/.plan); "
        "repeat for several models (default: the bundled demo models)",
    )
    serve.add_argument(
        "--model-dir",
        help="a models folder (it must exist): every model file in it is served under its "
        "file's stem (mine.pt -> mine) and followed while serving (default: none)",
    )
    serve.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="default: each file's own (.pt torch, .onnx onnxruntime, .engine tensorrt)",
    )
    serve.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to run (default auto)"
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, help="port, 0..65535 (default 8000)")
    serve.add_argument("--workers", type=positive_int, help="worker processes (default 1)")
    serve.add_argument(
        "--inference-workers",
        type=int,
        help="forward passes in parallel per image model (default 0 = one per CPU core; 1 on "
        "a GPU)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="intra-op threads per forward pass (default 0 = cores / workers)",
    )
    serve.add_argument(
        "--max-batch-size", type=positive_int, help="images per forward pass at most (default 8)"
    )
    serve.add_argument(
        "--max-batch-wait-ms",
        type=float,
        help="how long a batch's first image waits for company (default 2)",
    )
    serve.add_argument(
        "--queue-size",
        type=positive_int,
        help="image requests waiting per model before new ones get 503 (default 64)",
    )
    serve.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default): the fastest path passing the parity gate on this machine; "
        "fp32, bf16 (torch, CPU), int8 (onnxruntime, CPU), fp16 (CUDA)",
    )
    serve.add_argument(
        "--cache-dir",
        help="where ONNX exports and TensorRT engines are cached (default ~/.cache/ccnet)",
    )
    serve.add_argument(
        "--log-format", choices=("json", "text"), help="log lines as JSON or text (default json)"
    )
    serve.set_defaults(handler=_cmd_serve)


def port_number(text: str) -> int:
    """A TCP port (0: the system picks one), for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)")
    return value


def _describe_invalid(error: Any, overrides: dict[str, str]) -> str:
    """A pydantic ``ValidationError`` of the settings as one line: each bad setting by the
    flag that set it (or its ``CCNET_*`` variable), its value and what is wrong."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item.get("loc") else "?"
        variable = f"CCNET_{field.upper()}"
        where = f"--{field.replace('_', '-')}" if variable in overrides else variable
        parts.append(f"{where}={item.get('input')!s}: {item.get('msg', 'invalid')}")
    return "invalid setting " + "; ".join(parts)


def _settings_env(args: argparse.Namespace) -> dict[str, str]:
    """The CCNET_* variables that carry the flags to every worker process."""
    env = {}
    if args.model:
        env["CCNET_MODELS"] = ",".join(args.model)
    for flag in (
        "model_dir",
        "backend",
        "device",
        "host",
        "port",
        "workers",
        "threads",
        "inference_workers",
        "max_batch_size",
        "max_batch_wait_ms",
        "queue_size",
        "precision",
        "cache_dir",
        "log_format",
    ):
        value = getattr(args, flag)
        if value is not None:
            env[f"CCNET_{flag.upper()}"] = str(value)
    return env


def _cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn
    from pydantic import ValidationError

    from ccnet.service.core.config import Settings

    overrides = _settings_env(args)
    environment = {**os.environ, **overrides}
    try:
        settings = Settings(_env_file=None, **_from_environment(environment))
    except ValidationError as error:
        raise ValueError(_describe_invalid(error, overrides)) from None
    exposure = settings.exposure_problem()
    if exposure is not None:
        raise ValueError(exposure)
    for _, path in settings.model_sources():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
    _check_port_free(settings.host, settings.port)
    _prepare_models(settings)
    _check_models_load(settings)
    # only now, when the settings are known to be good: every worker reads them from here
    os.environ.update(overrides)
    uvicorn.run(
        "ccnet.service.cli:serving_app",  # the app, with a preparer for hot reloads
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # the app configures structured logging itself
        access_log=False,
        timeout_graceful_shutdown=30,
        # connection limits (header/body timeouts, cap): service/core/http_protocol.py
        http="ccnet.service.core.http_protocol:GuardedH11Protocol",
        timeout_keep_alive=settings.keepalive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def _prepare_models(settings: Any) -> None:
    """Export and build every model's artifact once, here, before uvicorn starts the workers:
    they only look it up in the cache (``export.runtime.artifacts``) and load it."""
    from ccnet.export.prepare import prepare_served

    for _, path in settings.model_sources():
        prepare_served(
            path,
            settings.load_options().backend_for(path),
            settings,
            progress=lambda line: print(f"ccnet serve: {line}", file=sys.stderr, flush=True),
        )


def serving_app() -> Any:
    """The uvicorn factory of ``ccnet serve``: the app, given ``_prepare_for_reload`` so a
    checkpoint copied into the models folder later is exported (and its engine built) as
    ``ccnet serve`` did for the first ones. The app never imports the export build side
    itself; this command does, in each worker, only when a reload needs it."""
    from ccnet.service.main import create_app

    return create_app(preparer=_prepare_for_reload)


def _prepare_for_reload(path: Path, settings: Any) -> None:
    """``export.prepare.prepare_served`` for one reloaded file, under a lock in the cache, so
    the uvicorn workers (each with its own watcher) export and build once: the first holds
    the lock while it works, the others then find the artifact cached."""
    import fcntl

    from ccnet.export.prepare import prepare_served

    backend = settings.load_options().backend_for(path)
    if backend == "torch":
        return
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with (settings.cache_dir / ".reload-prepare.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare_served(path, backend, settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_models_load(settings: Any) -> None:
    """Load (and release) every model once here, so a file that cannot be served fails the
    command with exit status 2 and one line, before a worker starts and logs "ready"."""
    from ccnet.inference.backends import BackendError, load_backend

    for name, path in settings.model_sources():
        try:
            load_backend(name, path, settings.load_options()).close()
        except BackendError as error:
            raise ValueError(str(error)) from None
        except (RuntimeError, KeyError, TypeError) as error:  # a library's own load error
            raise ValueError(f"{path}: cannot be loaded: {error}") from None


def _check_port_free(host: str, port: int) -> None:
    """Fail now, with one line, if ``host:port`` cannot be listened on (in use, no such
    address), rather than after the workers have loaded the models."""
    import socket

    if port == 0:
        return  # the system picks a free port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None


def _from_environment(environment: dict[str, str]) -> dict[str, str]:
    """Settings fields from CCNET_* variables, for validating before they are exported."""
    prefix = "CCNET_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in environment.items()
        if key.startswith(prefix)
    }
