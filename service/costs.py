"""What one request may cost in memory, decided from its headers and the settings.

A request's cost is known before any pixel is decoded: an image header gives width, height
and mode, a clip's container header gives frame size and (usually) frame count, and the
settings give the inference size (``max_side``) and the output kind. The estimate is an upper
bound on the request's peak of decoded input, inference input, logits and output buffers
(measured by ``bench/hostile.py``; see BENCHMARKS.md), and is what ``service.admission``
reserves. The per-pixel factors below name the buffers they stand for.

Peak resident memory of a process is then bounded by
``idle RSS + memory_budget_mb + model activations`` (the forward passes in flight: an image
batch per inference worker, a clip window per video model), the figure docker/k8s/ccnet.yaml
and docker-compose.yml size their limits from.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from ccnet.inference.codecs import IMAGE_FORMATS
from ccnet.inference.pipeline import STRIDE, scaled_size

__all__ = [
    "ClipHeader",
    "ImageHeader",
    "clip_cost",
    "image_cost",
    "json_output_bytes",
    "probe_clip",
    "probe_image",
    "tensor_output_cost",
]

# Factors measured with bench/hostile.py and a stage-by-stage VmHWM probe on the demo models
# (malloc's mmap threshold pinned, as the service does), rounded up; see BENCHMARKS.md.
# ---- images: peak bytes per input pixel (P = width × height), by stage
# decoding: Pillow's buffer (4 B/px for RGB) + its export to the uint8 RGB array (3) + the
# codec's own buffers; modes that convert (palette, 16-bit) hold a second Pillow buffer, and
# alpha a composite too
_DECODE_RGB = 10
_DECODE_CONVERTED = 14
_DECODE_ALPHA = 18
# after decoding, the RGB array (3) stays to the end; scaling for inference reads it through
# a Pillow copy (4); the mask at input size (1) and its Pillow copy (1) are made from the logits
_PREPARE = 8
# rendering, everything included: overlay = blended uint8 (3) + Pillow copy (4) + encoded
# PNG, over the RGB array and mask; png = Pillow mask + file; json = the PNG + base64 + RLE
_RENDER = {"overlay": 13, "png": 8, "json": 9}
# ---- bytes per inference-input pixel (Q = padded scaled width × height)
# float32 RGB input (12), argmax indices (8), and 4 bytes per class of logits
_INPUT = 12 + 8
_PER_CLASS = 4

# ---- clips: peak bytes per frame pixel
# decoding keeps every RGB frame (3) and stacks them into one array at the end (+3)
_CLIP_DECODE = 7
# segmenting: the frames (3) + masks at input size (1) + their per-frame copies before stacking
_CLIP_SEGMENT = 5
# the overlay: blended frames (3), the encoder's padded copy (3), Pillow and codec buffers
_CLIP_OVERLAY = 14
# per frame at inference size: the scaled frames, stacked (6), and masks at that size (1)
_CLIP_SEGMENT_Q = 7
# per window voxel: float32 input (12) and three copies of its probabilities (4 per class each)
_WINDOW_Q = 12
_WINDOW_PER_CLASS = 3 * 4


# ---- /v2 outputs: bytes per output value (mask: one per pixel; logits: one per class and pixel)
# binary: the value at input size, np.stack's copy, tobytes' copy, the joined body (1 B mask,
# 4 B logits each) and for logits the per-class resize buffers (+4 B)
_TENSOR_BINARY = {"mask": 4, "logits": 20}
# JSON adds tolist (an 8 B pointer per value, plus a 24 B float object per logit; mask values
# are cached small ints) and orjson's text
_TENSOR_JSON_EXTRA = {"mask": 8 + 4, "logits": 8 + 24 + 24}
# the longest JSON text of one value: "255," and "-1.2345678e-05,"
_JSON_TEXT = {"mask": 4, "logits": 24}


@dataclass(frozen=True)
class ImageHeader:
    """What an image says about itself before it is decoded."""

    width: int
    height: int
    mode: str
    format: str | None


@dataclass(frozen=True)
class ClipHeader:
    """What a clip's container says before its frames are decoded (0 = not said)."""

    width: int
    height: int
    frames: int


def probe_image(data: bytes) -> ImageHeader | None:
    """Width, height and mode from the header, or None when Pillow does not recognise it
    (decoding then answers 400). Reads the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                return ImageHeader(image.width, image.height, image.mode, image.format)
    except Exception:  # any failure (Pillow's bomb guard too) is the decoder's to report
        return None


def probe_clip(data: bytes, max_pixels: int) -> ClipHeader | None:
    """Frame size and declared frame count from the container, or None when FFmpeg cannot
    open it (decoding then answers 400). FFmpeg's probe decodes at most a few frames."""
    import av

    from ccnet.inference.video import OPEN_OPTIONS

    try:
        with av.open(
            io.BytesIO(data),
            options={**OPEN_OPTIONS, "max_pixels": str(max_pixels)},
            metadata_errors="replace",
        ) as container:
            streams = [
                s
                for s in container.streams.video
                if not s.disposition & av.stream.Disposition.attached_pic
            ]
            if not streams or streams[0].codec_context is None:
                return None
            context = streams[0].codec_context
            return ClipHeader(int(context.width), int(context.height), int(streams[0].frames))
    except Exception:  # any failure here is the decoder's to report
        return None


def _padded_pixels(height: int, width: int, max_side: int) -> int:
    h, w = scaled_size(height, width, max_side)
    return (h + -h % STRIDE) * (w + -w % STRIDE)


def image_cost(
    header: ImageHeader,
    *,
    max_side: int,
    classes: int,
    output: str,
    activation_per_pixel: float = 0.0,
) -> int:
    """Peak bytes of segmenting this image (besides its upload) into ``output``, with the
    model's forward-pass activations (bytes per inference-input pixel, measured at warm-up)."""
    pixels = header.width * header.height
    if header.mode in ("RGBA", "LA", "PA") or header.mode.startswith("I"):
        decode = _DECODE_ALPHA
    elif header.mode in ("RGB", "L", "YCbCr", "CMYK"):
        decode = _DECODE_RGB
    else:
        decode = _DECODE_CONVERTED
    per_pixel = max(decode, _PREPARE, _RENDER.get(output, _RENDER["overlay"]))
    inputs = _padded_pixels(header.height, header.width, max_side)
    per_input = _INPUT + _PER_CLASS * classes + activation_per_pixel
    return int(pixels * per_pixel + inputs * per_input)


def clip_frames_bound(header: ClipHeader, *, max_frames: int, max_clip_pixels: int) -> int:
    """Frames to budget for: the declared count, else as many as the limits let through."""
    per_frame = max(1, header.width * header.height)
    allowed = min(max_frames, max(1, max_clip_pixels // per_frame))
    return min(header.frames, allowed) if header.frames > 0 else allowed


def clip_cost(
    header: ClipHeader,
    frames: int,
    *,
    max_side: int,
    classes: int,
    window: int,
    output: str,
    activation_per_pixel: float = 0.0,
) -> int:
    """Peak bytes of segmenting ``frames`` frames of this clip into ``output``, with the
    model's activations for one window (bytes per input voxel, measured at warm-up)."""
    pixels = header.width * header.height
    inputs = _padded_pixels(header.height, header.width, max_side)
    after = _CLIP_OVERLAY if output == "overlay" else _CLIP_SEGMENT
    per_frame = max(pixels * _CLIP_DECODE, pixels * after + inputs * _CLIP_SEGMENT_Q)
    per_voxel = _WINDOW_Q + _WINDOW_PER_CLASS * classes + activation_per_pixel
    return int(frames * per_frame + window * inputs * per_voxel)


def _output_values(name: str, pixels: int, classes: int) -> int:
    return pixels * (classes if name == "logits" else 1)


def tensor_output_cost(height: int, width: int, *, classes: int, outputs: dict[str, bool]) -> int:
    """Peak bytes of one image's /v2 outputs (name -> sent as binary) at its input size,
    beyond ``image_cost``: the tensors, their copies and the encoded answer."""
    pixels = height * width
    total = 0
    for name, binary in outputs.items():
        per_value = _TENSOR_BINARY[name] + (0 if binary else _TENSOR_JSON_EXTRA[name])
        total += _output_values(name, pixels, classes) * per_value
    return total


def json_output_bytes(name: str, height: int, width: int, classes: int, count: int) -> int:
    """The longest JSON text output ``name`` of ``count`` images may take."""
    return count * _output_values(name, height * width, classes) * _JSON_TEXT[name]
