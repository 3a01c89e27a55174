"""One path for accepting an upload, in a fixed order, and running its work under one deadline.

Every segmentation request goes through the same steps, each refusing as early and as cheaply
as it can:

1. **auth** and 2. **model** are the route's dependencies (``ApiKey``, ``ImageModelDep`` /
   ``VideoModelDep``); the client's share of the queue (``service.tenancy``) is taken before
   the upload is read (503 ``overloaded``);
3. **size**: bytes (``Content-Length`` before reading, then while streaming, within the upload
   deadline and the client's share of the budget), then pixels and frames from the file's
   header (413);
4. **admission**: the request's memory cost (``service.costs``) is reserved from the shared
   budget, and a clip claims its queue slot, before any decoding (503 ``overloaded``; 413 when
   it could never fit);
5. **media type** (415);
6. **decode**, in the decoding pool (``decode_workers`` at a time), off the event loop (400).

/v2 (``api/v2_infer.py``) takes the same steps with the same functions: its tensors' shapes
and its encoded images' headers are the headers here.

The deadline (``request_timeout_s``) starts once the upload has arrived and covers decoding,
queueing, inference and encoding; work still queued when it passes is dropped, not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request

from ccnet.inference.codecs import ImageDecodeError, ImageTooLargeError, decode_image
from ccnet.inference.options import DEFAULT_CLIP_WINDOW
from ccnet.inference.video import (
    MEDIA_TYPES,
    DecodedVideo,
    VideoDecodeError,
    VideoTooLargeError,
    decode_video,
)
from ccnet.service.admission import OverBudgetError, Reservation
from ccnet.service.api.errors import ApiError
from ccnet.service.api.media import (
    IMAGE_MEDIA_TYPES,
    check_media_type,
    refuse_clip,
    refuse_still_image,
)
from ccnet.service.api.state import AppState, app_state
from ccnet.service.api.upload import Tenant, Upload, UploadLimits, read_upload
from ccnet.service.batching import OverloadedError
from ccnet.service.core.config import Settings
from ccnet.service.core.deadline import Deadline, DeadlineExceededError
from ccnet.service.costs import (
    ClipHeader,
    ImageHeader,
    clip_cost,
    clip_frames_bound,
    image_cost,
    probe_clip,
    probe_image,
)
from ccnet.service.served import ServedImageModel, ServedVideoModel
from ccnet.service.tenancy import ClientShareError, ClientShares, client_id

__all__ = [
    "AcceptedClip",
    "AcceptedImage",
    "Work",
    "accept_clip",
    "accept_image",
    "check_image_size",
    "client_share",
    "decode_one",
    "image_admission",
    "overloaded",
    "receive",
]

T = TypeVar("T")
_VIDEO_MEDIA_TYPES = frozenset(MEDIA_TYPES)


def overloaded(settings: Settings, reason: str) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"the server is at capacity ({reason}); retry shortly",
        {"Retry-After": str(settings.retry_after_s)},
    )


def _timed_out(settings: Settings) -> ApiError:
    return ApiError(
        503,
        "timeout",
        f"the request did not finish within {settings.request_timeout_s:g} s",
        {"Retry-After": str(settings.retry_after_s)},
    )


@dataclass
class Work:
    """A request's running context: its deadline and its memory reservation."""

    state: AppState
    deadline: Deadline
    reservation: Reservation

    @property
    def settings(self) -> Settings:
        return self.state.settings

    async def _wait(self, future: Future[T]) -> T:
        self.reservation.hold_until_done(future)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.deadline.remaining())
        except (TimeoutError, DeadlineExceededError):
            future.cancel()
            raise _timed_out(self.settings) from None

    async def run(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None) -> T:
        """``fn(*args)`` in a worker thread (the decoding pool unless ``pool``, e.g.
        ``state.encoders``), within the deadline; skipped if the deadline has passed by the
        time a thread is free."""

        def guarded() -> T:
            self.deadline.check()
            return fn(*args)

        executor = pool or self.state.decoders
        return await self._wait(executor.submit(guarded))

    async def queue(self, submit: Callable[[Deadline], Future[T]]) -> T:
        """Put work on a model's queue (``submit`` gets the deadline) and wait for it."""
        try:
            future = submit(self.deadline)
        except OverloadedError as error:
            raise overloaded(self.settings, str(error)) from None
        return await self._wait(future)

    def admit(self, nbytes: int, what: str) -> None:
        """Reserve ``nbytes`` more of the memory budget, or refuse the request."""
        try:
            self.reservation.grow(nbytes, what)
        except OverBudgetError as error:
            if error.fits_ever:
                raise overloaded(self.settings, str(error)) from None
            raise ApiError(413, "too_much_memory", str(error)) from None


@asynccontextmanager
async def client_share(request: Request, shares: ClientShares) -> AsyncIterator[str]:
    """Hold one of the client's slots in ``shares`` for the block (503 when it has none)."""
    state = app_state(request)
    client = client_id(request, state.proxies)
    try:
        shares.take(client)
    except ClientShareError as error:
        raise overloaded(state.settings, str(error)) from None
    try:
        yield client
    finally:
        shares.give(client)


@asynccontextmanager
async def receive(
    request: Request, field: str, max_bytes: int, client: str | None = None
) -> AsyncIterator[tuple[Work, Upload]]:
    """Read the upload (bounded in bytes, time and budget share) and start the request's
    deadline; the reservation is returned when the block ends."""
    state = app_state(request)
    settings = state.settings
    reservation = Reservation(state.budget)
    limits = UploadLimits(
        max_bytes,
        settings.max_form_parts,
        settings.max_form_field_bytes,
        timeout_s=settings.upload_timeout_s,
        max_held=settings.upload_cap(),
    )
    tenant = Tenant(client or client_id(request, state.proxies), state.upload_shares)
    try:
        try:
            upload = await read_upload(request, field, limits, reservation, tenant)
        except (OverBudgetError, ClientShareError) as error:
            raise overloaded(settings, str(error)) from None
        yield Work(state, Deadline.after(settings.request_timeout_s), reservation), upload
    finally:
        reservation.release()


# ---------------------------------------------------------------------------- images


@dataclass
class AcceptedImage:
    """A decoded image, ready for its model's queue."""

    work: Work
    rgb: np.ndarray  # (h, w, 3) uint8; smaller than ``size`` after a JPEG draft decode
    size: tuple[int, int]  # the image's (H, W): the mask's size


def decode_one(data: bytes, max_pixels: int, downscale_to: int | None = None) -> np.ndarray:
    """Decode one image, its errors as answers (413 too many pixels, 400 undecodable)."""
    try:
        return decode_image(data, max_pixels, downscale_to=downscale_to)
    except ImageTooLargeError as error:
        raise ApiError(413, "image_too_large", str(error)) from None
    except ImageDecodeError as error:
        raise ApiError(400, "invalid_image", str(error)) from None


def check_image_size(header: ImageHeader, settings: Settings, what: str = "image") -> None:
    """413 when the header declares more pixels than ``max_pixels``."""
    pixels = header.width * header.height
    if pixels > settings.max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"{what} is {header.width}×{header.height} = {pixels} pixels, "
            f"more pixels than the limit of {settings.max_pixels}",
        )


def image_admission(
    work: Work,
    header: ImageHeader,
    served: ServedImageModel,
    output: str,
    *,
    count: int = 1,
    extra: int = 0,
) -> None:
    """Reserve ``count`` images of this header's size for ``output`` with the model's
    activations, plus ``extra`` bytes (what a protocol adds: parsed tensors, its encoded
    answer), and check the model's queue has room; 503/413 otherwise."""
    settings = work.settings
    cost = image_cost(
        header,
        max_side=settings.max_side,
        classes=len(served.info.classes),
        output=output,
        activation_per_pixel=served.activation_per_pixel,
    )
    images = f"{count} image(s)" if count > 1 else "an image"
    work.admit(cost * count + extra, f"{images} of {header.width}×{header.height}")
    if not served.batcher.has_room():
        raise overloaded(settings, "the image queue is full")


@asynccontextmanager
async def accept_image(
    request: Request, served: ServedImageModel, output: str
) -> AsyncIterator[AcceptedImage]:
    """Upload → size → admission → media type → decode for one image (see the module doc).
    The memory reservation is held until the ``async with`` block ends."""
    state = app_state(request)
    settings = state.settings
    async with (
        client_share(request, state.image_shares) as client,
        receive(request, "image", settings.max_image_bytes, client) as (work, upload),
    ):
        refuse_clip(upload.data, upload.media_type)
        header = await work.run(probe_image, upload.data, pool=work.state.probes)
        if header is not None:  # else undecodable: decoding answers 400 at once
            check_image_size(header, settings)
            image_admission(work, header, served, output)
        elif not served.batcher.has_room():
            raise overloaded(settings, "the image queue is full")
        check_media_type(upload.media_type, IMAGE_MEDIA_TYPES, "an image")
        # Only an overlay shows the input's own pixels at full size; every other output needs
        # them at the inference size, so a large JPEG is decoded at a coarser DCT scale.
        draft = settings.jpeg_draft and output != "overlay"
        downscale_to = settings.max_side if draft else None
        rgb = await work.run(decode_one, upload.data, settings.max_pixels, downscale_to)
        del upload
        yield AcceptedImage(work, rgb, _full_size(rgb, header))


def _full_size(rgb: np.ndarray, header: ImageHeader | None) -> tuple[int, int]:
    """The decoded image's (H, W) at the file's full resolution: the header's size, its axes
    swapped when EXIF orientation turned the image (a draft decode keeps the aspect ratio,
    so the decoded image's orientation tells)."""
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if header is None or (header.width, header.height) in ((width, height), (height, width)):
        return height, width
    if (height > width) != (header.height > header.width):
        return header.width, header.height
    return header.height, header.width


# ---------------------------------------------------------------------------- clips


@dataclass
class AcceptedClip:
    """A decoded clip holding the slot it claimed on its model's queue."""

    work: Work
    clip: DecodedVideo
    served: ServedVideoModel
    submitted: bool = False

    async def submit(self, submit: Callable[[Deadline], Future[T]]) -> T:
        """Queue the clip's work in the slot it claimed (``submit`` gets the deadline and
        must pass ``claimed=True``) and wait for it; the slot is the job's from here on."""
        self.submitted = True
        return await self.work.queue(submit)


def _decode_clip(data: bytes, max_pixels: int, max_frames: int, max_total: int) -> DecodedVideo:
    try:
        return decode_video(
            data, max_frames=max_frames, max_pixels=max_pixels, max_total_pixels=max_total
        )
    except VideoTooLargeError as error:
        raise ApiError(413, "video_too_large", str(error)) from None
    except VideoDecodeError as error:
        raise ApiError(400, "invalid_video", str(error)) from None


def _check_clip_header(header: ClipHeader, settings: Settings) -> None:
    pixels = header.width * header.height
    if pixels > settings.max_video_pixels:
        raise ApiError(
            413,
            "video_too_large",
            f"the stream header declares {header.width}×{header.height} = {pixels} pixels, "
            f"more pixels than the limit of {settings.max_video_pixels}",
        )
    if header.frames > settings.max_frames:
        raise ApiError(
            413,
            "video_too_large",
            f"the clip declares {header.frames} frames, more than the limit of "
            f"{settings.max_frames}",
        )


@asynccontextmanager
async def accept_clip(
    request: Request, served: ServedVideoModel, output: str
) -> AsyncIterator[AcceptedClip]:
    """Upload → size → admission (memory and a queue slot) → media type → decode for one
    clip. Inside the block the clip owns a claimed slot: submit it with ``claimed=True``."""
    state = app_state(request)
    settings = state.settings
    async with (
        client_share(request, state.clip_shares) as client,
        receive(request, "video", settings.max_video_bytes, client) as (work, upload),
    ):
        refuse_still_image(upload.data, upload.media_type)
        # the queue slot first: it costs nothing to check, and a full queue refuses the clip
        # before even its header is read
        try:
            served.clips.claim()
        except OverloadedError as error:
            raise overloaded(settings, str(error)) from None
        accepted: AcceptedClip | None = None
        try:
            max_total = await _admit_clip(work, upload, served, output)
            check_media_type(upload.media_type, _VIDEO_MEDIA_TYPES, "a video clip")
            clip = await work.run(
                _decode_clip, upload.data, settings.max_video_pixels, settings.max_frames, max_total
            )
            del upload
            accepted = AcceptedClip(work, clip, served)
            yield accepted
        finally:
            if accepted is None or not accepted.submitted:
                served.clips.unclaim()  # a submitted job returns its slot when it ends


async def _admit_clip(work: Work, upload: Upload, served: ServedVideoModel, output: str) -> int:
    """Size (pixels, frames) and memory admission from the container's header; returns the
    total pixel count decoding may reach."""
    settings = work.settings
    header = await work.run(
        probe_clip, upload.data, settings.max_video_pixels, pool=work.state.probes
    )
    max_total = settings.max_clip_pixels
    if header is not None and header.width * header.height > 0:
        _check_clip_header(header, settings)
        frames = clip_frames_bound(
            header, max_frames=settings.max_frames, max_clip_pixels=settings.max_clip_pixels
        )
        cost = clip_cost(
            header,
            frames,
            max_side=settings.max_video_side,
            classes=len(served.info.classes),
            window=served.info.window or DEFAULT_CLIP_WINDOW,
            output=output,
            activation_per_pixel=served.activation_per_pixel,
        )
        work.admit(cost, f"a clip of {frames} frames of {header.width}×{header.height}")
        # decoding may not outgrow what was reserved, whatever the header claimed: its total
        # pixel count stops at the reserved frames of the declared size
        return min(max_total, frames * header.width * header.height)
    if header is not None:
        # the container gives no frame size: budget the largest clip the limits let through,
        # or the whole budget (it then runs alone)
        worst = min(_CLIP_DECODE_WORST * max_total, work.state.budget.capacity)
        work.admit(worst - work.reservation.nbytes, "a clip of undeclared size")
    # (no header at all: FFmpeg cannot open it, and decoding answers 400 at once)
    return max_total


_CLIP_DECODE_WORST = 8  # bytes per pixel of a clip whose header gives no size (decode + masks)
