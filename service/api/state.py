"""The application's state, typed and in one object (``app.state.ccnet``).

Routes and dependencies reach it through ``deps.StateDep``; nothing else is kept on
``app.state``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.requests import HTTPConnection

from ccnet.service.admission import MemoryBudget
from ccnet.service.core.config import Settings
from ccnet.service.core.readiness import Readiness
from ccnet.service.live.hub import SessionHub
from ccnet.service.live.limits import StreamLimits
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.registry import ModelRegistry, Preparer
from ccnet.service.reload import ModelWatcher
from ccnet.service.tenancy import ClientShares, TrustedProxies

__all__ = ["AppState", "app_state"]

MiB = 1 << 20


@dataclass
class AppState:
    """Everything a running app holds: settings, models, readiness, budget, pools."""

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry
    readiness: Readiness = field(default_factory=Readiness)
    budget: MemoryBudget = field(init=False)
    # decoding (and clip probing) runs here: at most ``decode_workers`` at a time, off the loop
    decoders: ThreadPoolExecutor = field(init=False)
    # reading headers (image and clip probes) before admission: short, and never queued behind
    # a decode, so a refusal under load stays fast
    probes: ThreadPoolExecutor = field(init=False)
    # rendering (mask PNGs, overlays, clip encoding): admitted work only, so bounded by the budget
    encoders: ThreadPoolExecutor = field(init=False)
    # live sessions (WS /v1/stream): their cap, threads, metrics and SIGTERM goodbye
    streams: SessionHub = field(init=False)
    # per-client shares (``service.tenancy``): upload bytes held, image requests and clips
    proxies: TrustedProxies = field(init=False)
    upload_shares: ClientShares = field(init=False)
    image_shares: ClientShares = field(init=False)
    clip_shares: ClientShares = field(init=False)
    lifespans: int = 0  # test clients may enter the lifespan of a running app
    loader: threading.Thread | None = None
    watcher: ModelWatcher | None = None  # hot reload of ``model_dir``, once the models loaded

    def __post_init__(self) -> None:
        self.budget = MemoryBudget(self.settings.memory_budget_mb * MiB)
        self.decoders = ThreadPoolExecutor(
            self.settings.decode_workers, thread_name_prefix="decode"
        )
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        self.upload_shares = ClientShares(
            self.settings.client_upload_cap(), lambda n: f"{n / MiB:.1f} MiB of uploads"
        )
        self.image_shares = ClientShares(
            self.settings.client_queue_size,
            lambda n: f"{n} image requests",
            # what the image path holds at once: the queue and a batch per inference worker
            fair_total=self.settings.queue_size
            + self.settings.max_batch_size * self.settings.parallelism()[0],
        )
        self.clip_shares = ClientShares(
            self.settings.client_video_queue_size,
            lambda n: f"{n} clips",
            fair_total=self.settings.video_queue_size,  # waiting or running, as shares count
        )
        self.probes = ThreadPoolExecutor(2, thread_name_prefix="probe")
        self.encoders = ThreadPoolExecutor(
            max(4, 2 * self.settings.decode_workers), thread_name_prefix="encode"
        )
        self.streams = SessionHub(
            StreamLimits.from_settings(self.settings),
            self.metrics.registry,
            workers=self.settings.stream_max_sessions,
        )

    @classmethod
    def create(cls, settings: Settings, preparer: Preparer | None = None) -> AppState:
        metrics = ServiceMetrics()
        return cls(settings, metrics, ModelRegistry(settings, metrics, preparer))

    def close(self) -> None:
        """Stop watching the models folder and release the models (the decoding threads
        stay: idle, they cost nothing, and a test client may start the app again)."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.registry.close()


def app_state(where: FastAPI | HTTPConnection) -> AppState:
    """The ``AppState`` of an app, or of the app serving a request."""
    app = where if isinstance(where, FastAPI) else where.app
    return app.state.ccnet
