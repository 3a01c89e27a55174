"""Service settings: one typed class, read from ``CCNET_*`` environment variables.

``ccnet serve`` turns its flags into these variables before uvicorn starts, so every worker
process (``--workers N``) builds the same settings from its environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ccnet.inference.codecs import DEFAULT_MAX_PIXELS
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.options import MODEL_SUFFIXES, LoadOptions

__all__ = ["BUNDLED_MODELS", "Settings", "folder_models", "get_settings"]

MiB = 1 << 20


class Settings(BaseSettings):
    """Everything an operator can set; defaults suit one CPU container."""

    model_config = SettingsConfigDict(env_prefix="CCNET_", extra="ignore")

    # what to serve and how
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="checkpoints (.pt), ONNX exports (.onnx) or TensorRT engines (.engine), "
        "optionally NAME=PATH; comma-separated in the environment",
    )
    model_dir: Path | None = Field(
        None,
        description="a models folder: every model file in it is served, named by its file's "
        "stem, and followed while serving (hot reload); it must exist",
    )
    model_poll_s: float = Field(
        10.0,
        ge=0,
        description="seconds between checks of model_dir for new, replaced or removed models "
        "(hot reload); 0 = only on POST /v1/models/reload",
    )
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = Field(True, description="half precision on CUDA (torch backend)")
    precision: Literal["auto", "fp32", "bf16", "int8", "fp16"] = Field(
        "auto",
        description="auto: the fastest path that passes the parity gate on this machine "
        "(inference/precision/); bf16 (torch, CPU), int8 (onnxruntime, CPU), fp16 (CUDA)",
    )
    threads: int = Field(
        0, ge=0, description="intra-op threads; 0 = the CPU cores shared among the workers"
    )
    inference_workers: int = Field(
        0, ge=0, description="forward passes in parallel per image model; 0 = auto"
    )
    cache_dir: Path = Field(
        Path("~/.cache/ccnet").expanduser(),
        description="ONNX exports and TensorRT engines made at start are cached here",
    )
    trt_plugin: Path | None = Field(None, description="the criss-cross attention plugin library")

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    api_key: SecretStr | None = None
    allow_anonymous: bool = Field(
        False,
        description="serve on a non-loopback address without CCNET_API_KEY (refused by default: "
        "anyone who can reach the port could use the service)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For "
        "names the client (per-client limits); comma-separated in the environment",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # input limits
    max_image_bytes: int = Field(20 * MiB, ge=1)
    max_video_bytes: int = Field(100 * MiB, ge=1)
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="per image, checked before decoding"
    )
    max_video_pixels: int = Field(1920 * 1088, ge=1, description="per frame of a clip")
    max_frames: int = Field(300, ge=1)
    max_clip_pixels: int = Field(
        100_000_000, ge=1, description="frames × width × height of a clip (its decoded memory)"
    )
    max_side: int = Field(1024, ge=8, description="images are scaled down to this long side")
    max_video_side: int = Field(512, ge=8, description="clip frames are scaled down to this")
    jpeg_draft: bool = Field(
        True,
        description="decode a JPEG larger than max_side at a coarser DCT scale for mask and "
        "json outputs (several times faster and smaller; the mask may differ from a full "
        "decode's on a few % of pixels); false decodes every image at full resolution",
    )
    video_overlap: int | None = Field(
        None, ge=0, description="frames shared by neighbouring windows; default half a window"
    )

    # batching and back-pressure
    max_batch_size: int = Field(8, ge=1)
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="how long a batch's first request waits for company"
    )
    queue_size: int = Field(64, ge=1, description="image requests waiting before 503")
    video_queue_size: int = Field(
        16, ge=1, description="clips waiting or running per clip model before 503"
    )
    client_queue_size: int = Field(
        16, ge=1, description="image requests one client may have waiting or running"
    )
    client_video_queue_size: int = Field(
        1, ge=1, description="clips one client may have waiting or running per clip model"
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="one deadline per request: decode, queue, inference and encode"
    )
    retry_after_s: int = Field(1, ge=1)

    # memory: what requests may hold at once (see service/costs.py for one request's cost)
    memory_budget_mb: int = Field(
        896,
        ge=16,
        description="MiB of uploads and decoded/inference/output buffers in flight across "
        "requests; a request that would pass it is refused 503, one that alone would is 413",
    )
    decode_workers: int = Field(2, ge=1, description="uploads decoded at the same time")
    max_upload_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="fraction of the memory budget one upload may hold while it arrives; body "
        "limits are lowered to fit it",
    )
    max_client_upload_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="fraction of the memory budget one client's uploads may hold together",
    )
    v2_json_max_bytes: int = Field(
        8 * MiB,
        ge=1024,
        description="/v2 JSON: the request's JSON header, and each output sent as JSON; larger "
        "tensors go as binary data (tritonclient's default)",
    )

    # connections (enforced by service.core.http_protocol, the HTTP protocol `ccnet serve` runs)
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this, from its first byte"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="window in which a request body must make progress"
    )
    min_body_rate: int = Field(
        1024, ge=0, description="bytes/s a body must average over each body_timeout_s window"
    )
    upload_timeout_s: float = Field(
        60.0, gt=0, description="a request body must have arrived within this, from its start"
    )
    keepalive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections")
    max_connections: int = Field(
        1024,
        ge=8,
        description="open connections per process; past it the longest-idle one is closed, "
        "or the new one is answered 503 when none is idle",
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line and headers")
    max_form_parts: int = Field(8, ge=1, description="parts in a multipart upload")
    max_form_field_bytes: int = Field(
        64 * 1024, ge=1, description="a multipart part other than the file, and part headers"
    )
    # live video (WS /v1/stream, service/live): every session bounded when it opens
    stream_max_sessions: int = Field(8, ge=1, description="live sessions open at once")
    stream_queue_frames: int = Field(
        2, ge=1, description="frames a session holds waiting; past it the oldest is skipped"
    )
    stream_max_unsent: int = Field(
        4, ge=1, description="masks a session holds for a client that does not read"
    )
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="a session that receives nothing for this long is closed"
    )
    stream_max_frames: int = Field(36_000, ge=1, description="frames per session")
    stream_max_duration_s: float = Field(3600.0, gt=0, description="seconds per session")
    stream_max_frame_bytes: int = Field(4 * MiB, ge=1, description="one encoded frame")
    stream_max_bad_frames: int = Field(
        5, ge=1, description="undecodable frames in a row before a session is closed"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (CORS); none by default",
    )

    @field_validator("models", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("cache_dir", "model_dir", "trt_plugin", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # CCNET_API_KEY= (set but empty, as compose files often leave it) means "no key"
        return value if value is not None and value.get_secret_value() else None

    def exposure_problem(self) -> str | None:
        """Why serving on ``host`` as set would be unsafe, or None: a non-loopback address
        without ``api_key`` lets anyone who reaches the port use the service, so it needs
        ``allow_anonymous`` to say that is intended."""
        if self.api_key is not None or self.allow_anonymous or _loopback(self.host):
            return None
        return (
            f"refusing to serve on {self.host} without an API key: anyone who can reach the "
            "port could use the service. Set CCNET_API_KEY (clients then send it as "
            "Authorization: Bearer KEY), bind to 127.0.0.1, or set CCNET_ALLOW_ANONYMOUS=true "
            "if the network in front is trusted"
        )

    def upload_cap(self) -> int:
        """Bytes of the budget one upload may hold while it arrives."""
        return int(self.memory_budget_mb * MiB * self.max_upload_share)

    def client_upload_cap(self) -> int:
        """Bytes of the budget one client's uploads may hold together."""
        return int(self.memory_budget_mb * MiB * self.max_client_upload_share)

    def load_options(self) -> LoadOptions:
        """What the inference library needs of these settings to load a model (the library
        never sees this class). ``backend`` only when it was set: else the file's own."""
        return LoadOptions(
            backend=self.backend if "backend" in self.model_fields_set else None,
            device=self.device,
            precision=self.precision,
            fp16=self.fp16,
            threads=self.threads,
            inference_workers=self.inference_workers,
            processes=self.workers,
            cache_dir=self.cache_dir,
            trt_plugin=self.trt_plugin,
            max_side=self.max_side,
            max_video_side=self.max_video_side,
            max_batch_size=self.max_batch_size,
        )

    def parallelism(self) -> tuple[int, int]:
        """(inference workers per image model, intra-op threads per forward pass): see
        ``LoadOptions.parallelism``."""
        return self.load_options().parallelism(self.backend)

    def model_sources(self) -> list[tuple[str | None, Path]]:
        """(name or None, path) for every model to load.

        A models folder is the model set, as Triton's model repository is: each model file in
        it is served under its file's stem (``models/mine.pt`` → ``mine``), so a file can never
        collide with a model nobody asked for, and an empty folder serves nothing (until a
        file is copied in). The bundled demo models are served only when neither ``models``
        nor ``model_dir`` is set. ``models`` entries keep the model's own name unless given
        ``NAME=PATH``.

        Raises:
            FileNotFoundError: ``model_dir`` is set but is not a folder (a typo must not
                start a server that silently serves nothing).
        """
        sources: list[tuple[str | None, Path]] = []
        for item in self.models:
            name, sep, path = item.partition("=")
            sources.append(
                (name.strip(), Path(path.strip()).expanduser())
                if sep
                else (None, Path(item).expanduser())
            )
        if self.model_dir is not None:
            sources.extend((path.stem, path) for path in folder_models(self.model_dir))
        elif not sources:
            sources = [(None, path) for path in BUNDLED_MODELS]
        return sources


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _utf8(path: Path) -> bool:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def folder_models(directory: Path) -> list[Path]:
    """The model files of a models folder, in name order: the model suffixes, not hidden
    (``.mine.pt.tmp`` while a copy is renamed in, editors' swap files).

    Raises:
        FileNotFoundError: ``directory`` is not a folder.
    """
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such models folder (create it first: mkdir -p {directory})"
        )
    return [
        path
        for path in sorted(directory.iterdir())
        if path.suffix in MODEL_SUFFIXES
        and not path.name.startswith(".")
        # a name that is not UTF-8 (or not printable) cannot be shown: the watcher logs it
        and path.name.isprintable()
        and _utf8(path)
    ]


def get_settings() -> Settings:
    """Settings from the environment (a fresh read: tests and workers change it)."""
    return Settings()
