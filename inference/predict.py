"""Segment a collection of files into mirrored result files: the work of ``ccnet predict``.

One module holds every step that both engines run, so ``ccnet predict`` in one process and
``ccnet predict --engine ray`` on a cluster write the same bytes for the same input:

* ``collect`` turns the command's inputs (files, folders, samples, lists of paths or URIs)
  into ``Item``s, each with a result path no other input shares;
* ``Models`` loads the image and clip ``Segmenter`` once, on first use, from a picklable
  ``PredictConfig`` (Ray ships it to every worker);
* ``render_item`` segments one input and renders every output kind to bytes, and
  ``write_outputs`` writes them atomically under the output directory.

The engines only differ in where ``render_item`` runs and who calls ``write_outputs``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import unquote, urlparse

from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.options import LoadOptions

__all__ = [
    "OUTPUT_KINDS",
    "Item",
    "ModelLoadError",
    "Models",
    "PredictConfig",
    "Rendered",
    "collect",
    "output_path",
    "read_input_list",
    "render_item",
    "write_outputs",
]

OUTPUT_KINDS = {  # --output → what is written for an image and for a clip
    "png": (("png",), ("zip",)),
    "overlay": (("overlay",), ("overlay",)),
    "json": (("json",), ("json",)),
    "both": (("png", "overlay"), ("zip", "overlay")),
    "all": (("png", "overlay", "json"), ("zip", "overlay", "json")),
}
BATCH_EXTRA = "pip install 'ccnet-stack[batch]'"


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Item:
    """One thing to segment: its key in the summary, where its results go, how to read it."""

    key: str  # the input as given (path, URI or sample name)
    target: PurePath  # results are written as ``target`` + each output's suffix
    path: Path | None = None
    sample: str | None = None
    uri: str | None = None  # a remote URI (s3://, gs://, ...), read through pyarrow

    @property
    def source(self) -> str:
        """Where the input is read from, as the manifest records it."""
        return self.uri or (str(self.path) if self.path is not None else f"sample:{self.sample}")

    def to_json(self) -> str:
        """The item as one JSON string (the unit of work a Ray worker receives)."""
        return json.dumps(
            {
                "key": self.key,
                "target": self.target.as_posix(),
                "path": None if self.path is None else str(self.path),
                "sample": self.sample,
                "uri": self.uri,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Item:
        data = json.loads(text)
        path = data["path"]
        return cls(
            data["key"],
            PurePath(data["target"]),
            None if path is None else Path(path),
            data["sample"],
            data["uri"],
        )


def _mirrored(path: Path) -> PurePath:
    """Where a path's results go under the output directory: the path itself if it is
    relative and stays below the working directory, else its name alone."""
    if not path.is_absolute() and ".." not in path.parts:
        return PurePath(*path.parts)
    return PurePath(path.resolve().name)


def read_input_list(path: str | Path) -> list[str]:
    """The entries of a text file of inputs: one path or URI per line; blank lines and lines
    starting with ``#`` are skipped. Relative paths are taken from the working directory, as
    paths on the command line are, so a list and the same paths as arguments mirror alike."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the input list ({error})") from None
    entries = [line.strip() for line in text.splitlines()]
    entries = [entry for entry in entries if entry and not entry.startswith("#")]
    if not entries:
        raise ValueError(f"{path}: the input list names no inputs")
    return entries


def _remote_scheme(text: str) -> str | None:
    """The scheme of a URI that is not a local path (``s3``, ``gs``...), else None."""
    if "://" not in text:
        return None
    scheme = urlparse(text).scheme.lower()
    return None if scheme in ("", "file") else scheme


def _local_path(text: str) -> Path:
    """A path, or the path of a ``file://`` URI."""
    if text.lower().startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: file:// URIs name a path on this machine (no host)")
        return Path(unquote(parsed.path))
    return Path(text)


def collect(
    inputs: Sequence[str],
    out_dir: Path,
    samples: Sequence[str] = (),
    lists: Sequence[str] = (),
) -> list[Item]:
    """Samples, files and every image or clip below each folder (sorted, hidden skipped, the
    output directory excluded), then the entries of each input list, each with a result path
    no other input shares.

    Raises:
        ValueError: a folder without images or clips, an unreadable or empty list.
    """
    from ccnet.inference.codecs import IMAGE_SUFFIXES
    from ccnet.inference.video import VIDEO_SUFFIXES

    suffixes = {*IMAGE_SUFFIXES, *VIDEO_SUFFIXES}
    found: list[Item] = [Item(name, PurePath(name), sample=name) for name in samples]
    skip = out_dir.resolve()
    entries = [*inputs, *(entry for listed in lists for entry in read_input_list(listed))]
    for text in entries:
        if _remote_scheme(text) is not None:
            parsed = urlparse(text)
            target = PurePath(parsed.netloc, *PurePath(unquote(parsed.path)).parts[1:])
            found.append(Item(text, target, uri=text))
            continue
        path = _local_path(text)
        if path.is_dir():
            files = [
                f
                for f in sorted(path.rglob("*"))
                if f.is_file()
                and f.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
                and skip not in f.resolve().parents
            ]
            if not files:
                raise ValueError(f"{path}: no image or clip files in this folder")
            base = _mirrored(path)
            found += [Item(str(f), base / f.relative_to(path), f) for f in files]
        else:
            found.append(Item(text, _mirrored(path), path))
    return _unique(found)


def _unique(found: list[Item]) -> list[Item]:
    """Result paths without the inputs' suffixes; where inputs of different types would then
    share one (photo.jpg, photo.png) the suffix is folded in (photo_jpg, photo_png), and a
    result path taken all the same gets _2, _3, ... in input order."""
    stems = [item.target.with_suffix("") if item.target.suffix else item.target for item in found]
    suffixes: dict[PurePath, set[str]] = {}
    for item, stem in zip(found, stems, strict=True):
        suffixes.setdefault(stem, set()).add(item.target.suffix.lower())
    items, taken, seen = [], set(), set()
    for item, stem in zip(found, stems, strict=True):
        if item.key in seen:  # the same file named twice (or by a file and its folder)
            continue
        seen.add(item.key)
        suffix = item.target.suffix
        if len(suffixes[stem]) > 1 and suffix:
            stem = stem.with_name(f"{stem.name}_{suffix[1:].lower()}")
        candidate, index = stem, 2
        while candidate in taken:
            candidate, index = stem.with_name(f"{stem.name}_{index}"), index + 1
        taken.add(candidate)
        items.append(Item(item.key, candidate, item.path, item.sample, item.uri))
    return items


@contextmanager
def _local_copy(item: Item) -> Iterator[Path | None]:
    """The input as a local file: its own path, or a remote URI fetched through pyarrow's
    filesystems into a temporary file with the same suffix (so it decodes as a local file
    would). None for a sample."""
    from ccnet.inference.codecs import ImageDecodeError

    if item.uri is None:
        if item.path is not None and not item.path.is_file():
            raise ImageDecodeError(f"{item.path}: no such file")
        yield item.path
        return
    try:
        from pyarrow import fs
    except ImportError:
        raise ValueError(f"{item.uri}: reading URIs needs pyarrow: {BATCH_EXTRA}") from None
    try:
        filesystem, remote = fs.FileSystem.from_uri(item.uri)
        with filesystem.open_input_stream(remote) as stream:
            data = stream.read()
    except (OSError, ValueError) as error:  # pyarrow raises both, and ArrowInvalid ⊂ ValueError
        raise ImageDecodeError(f"{item.uri}: cannot read ({error})") from None
    suffix = PurePath(urlparse(item.uri).path).suffix
    with tempfile.TemporaryDirectory(prefix="ccnet-predict-") as folder:
        local = Path(folder) / f"input{suffix}"
        local.write_bytes(data)
        yield local


def _is_clip(path: Path) -> bool:
    from ccnet.inference.video import VIDEO_SUFFIXES

    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.suffix.lower() != ".gif":
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except OSError:
        return False


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class PredictConfig:
    """Everything that decides a result besides the input, resolved by the entry point (flags
    and ``CCNET_*`` already read) and picklable, so every Ray worker gets the same.

    Args:
        load: how model files are loaded (backend, device, precision, cache, threads).
        checkpoint: the image model file (None: the bundled ccnet-tiny).
        model: a zoo name built with untrained weights instead of a file (a pipeline check).
        video_checkpoint: the clip model file (None: the bundled ccnet3d-tiny).
        output: which results to write (a key of ``OUTPUT_KINDS``).
        alpha, legend: how overlays are drawn.
        max_side, max_video_side: inputs with a longer side are scaled down for inference.
    """

    load: LoadOptions = field(default_factory=LoadOptions)
    checkpoint: str | None = None
    model: str | None = None
    video_checkpoint: str | None = None
    output: str = "both"
    alpha: float = 0.5
    legend: bool = False
    max_side: int = 1024
    max_video_side: int = 512

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            choices = ", ".join(OUTPUT_KINDS)
            raise ValueError(f"output must be one of {choices}, got {self.output!r}")

    def image_model_file(self) -> Path:
        return Path(self.checkpoint or BUNDLED_MODELS[0])

    def video_model_file(self) -> Path:
        return Path(self.video_checkpoint or BUNDLED_MODELS[1])

    def options_key(self) -> str:
        """A short hash of every option that changes the bytes written (not of the model,
        which is keyed by its content hash): a re-run with other options redoes its inputs."""
        load = self.load
        chosen = {
            "output": self.output,
            "alpha": self.alpha,
            "legend": self.legend,
            "max_side": self.max_side,
            "max_video_side": self.max_video_side,
            "backend": load.backend,
            "device": load.device,
            "precision": load.precision,
        }
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


class ModelLoadError(ValueError):
    """A model (not an input) failed to load: every input would fail the same way, so a batch
    job stops rather than writing an error row per input."""


def _loading(load: Callable[[], Any]) -> Any:
    """Run a model loader, any failure raised as ``ModelLoadError`` (message kept)."""
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(str(error) or type(error).__name__) from error


class Models:
    """The image and clip segmenters, loaded on first use (a run with only images never loads
    the clip model), with each model file's content hash."""

    def __init__(self, config: PredictConfig) -> None:
        self.config = config
        self._image: Any = None
        self._clip: Any = None
        self._hashes: dict[str, str | None] = {}

    def image(self) -> Any:
        if self._image is None:
            self._image = _loading(self._load_image)
        return self._image

    def clip(self) -> Any:
        if self._clip is None:
            self._clip = _loading(self._load_clip)
        return self._clip

    def _load_image(self) -> Any:
        from ccnet.inference.facade import open_backend
        from ccnet.inference.segmenter import Segmenter

        if self.config.model is not None:
            return self._untrained(self.config.model)
        path = self.config.image_model_file()
        backend = open_backend(path, self.config.load)
        if backend.info.kind != "image":
            backend.close()
            raise ValueError(f"{path}: a video (CCNet3D) model; pass it as --video-checkpoint")
        return Segmenter(backend, max_side=self.config.max_side)

    def _untrained(self, name: str) -> Any:
        from ccnet.inference.segmenter import Segmenter
        from ccnet.model import build_model

        model = build_model(name)
        if model.config is not None and model.config.video:
            raise ValueError(f"--model {name}: a video configuration; image models only")
        print(
            f"note: --model {name} runs with freshly initialised weights: the masks show the "
            "pipeline, not a trained model",
            file=sys.stderr,
        )
        return Segmenter.from_model(model, max_side=self.config.max_side)

    def _load_clip(self) -> Any:
        from ccnet.inference.facade import open_backend
        from ccnet.inference.segmenter import ClipSegmenter

        path = self.config.video_model_file()
        backend = open_backend(path, self.config.load)
        if backend.info.kind != "video":
            backend.close()
            raise ValueError(f"{path}: an image model; --video-checkpoint needs CCNet3D")
        return ClipSegmenter(backend, max_side=self.config.max_video_side)

    def model_hash(self, kind: str) -> str | None:
        """SHA-256 of the file the ``kind`` ("image" or "clip") model was loaded from (None for
        untrained ``--model`` weights), computed once."""
        if kind not in self._hashes:
            from ccnet.inference.demo import resolve_model_file
            from ccnet.model.files import file_sha256

            if kind == "image" and self.config.model is not None:
                self._hashes[kind] = None
            else:
                source = (
                    self.config.image_model_file()
                    if kind == "image"
                    else self.config.video_model_file()
                )
                self._hashes[kind] = file_sha256(resolve_model_file(source))
        return self._hashes[kind]


# ---------------------------------------------------------------------------- one input


@dataclass(frozen=True)
class Rendered:
    """One input's results before they are written: the summary ``ccnet predict`` prints
    (without the file list), the kind of input and each output's suffix and bytes."""

    kind: str  # "image" or "clip"
    summary: dict[str, Any]
    files: list[tuple[str, bytes]]  # (suffix after the target path, body)
    model_sha256: str | None
    seconds: float  # read + segment + render


def _render_options(config: PredictConfig, clip_format: str = "mp4") -> Any:
    from ccnet.inference.render import RenderOptions

    return RenderOptions(
        alpha=config.alpha, clip_format=clip_format, legend=config.legend, rle=True, pretty=True
    )


def render_item(item: Item, models: Models) -> Rendered:
    """Segment one input and render every output kind the config asks for.

    Raises:
        ValueError: an unreadable, undecodable or too large input (the message names it).
    """
    start = time.perf_counter()
    with _local_copy(item) as path:
        if path is not None and _is_clip(path):
            kind, summary, files = "clip", *_render_clip(path, item, models)
        else:
            kind, summary, files = "image", *_render_image(path, item, models)
    return Rendered(kind, summary, files, models.model_hash(kind), time.perf_counter() - start)


def _render_image(path: Path | None, item: Item, models: Models) -> tuple[dict, list]:
    from ccnet.inference.render import render_image
    from ccnet.inference.segmenter import as_rgb
    from ccnet.model.samples import sample_photograph

    rgb = sample_photograph(item.sample) if item.sample else as_rgb(path)  # type: ignore[arg-type]
    segmenter = models.image()
    result = segmenter(rgb)
    info = segmenter.info
    options = _render_options(models.config)
    files = []
    for kind in OUTPUT_KINDS[models.config.output][0]:
        rendered = render_image(kind, rgb, result.mask, info, result.inference_ms, options)
        files.append((rendered.suffix, rendered.body))
    summary = {
        "model": info.name,
        "size": list(rgb.shape[1::-1]),
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {k: round(v, 4) for k, v in result.class_fractions().items()},
    }
    return summary, files


def _render_clip(path: Path, item: Item, models: Models) -> tuple[dict, list]:
    from ccnet.inference.render import render_clip
    from ccnet.inference.segmenter import read_clip

    clip = read_clip(path)
    segmenter = models.clip()
    result = segmenter.segment(clip.frames)
    info = segmenter.info
    # a clip named *.gif gets a gif overlay, whatever the local copy is called
    source_suffix = PurePath(item.uri or str(path)).suffix.lower()
    options = _render_options(models.config, "gif" if source_suffix == ".gif" else "mp4")
    files = []
    for kind in OUTPUT_KINDS[models.config.output][1]:
        rendered = render_clip(kind, clip.frames, clip.fps, result, info, options)
        files.append((rendered.suffix, rendered.body))
    summary = {
        "model": info.name,
        "frames": int(result.masks.shape[0]),
        "size": [int(result.masks.shape[2]), int(result.masks.shape[1])],
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {
            k: round(v, 4) for k, v in result.class_fractions(info.classes).items()
        },
    }
    return summary, files


def output_path(out_dir: Path, item: Item, suffix: str) -> Path:
    """Where one of an item's results goes."""
    return out_dir / item.target.parent / f"{item.target.name}{suffix}"


def write_outputs(out_dir: Path, item: Item, rendered: Rendered) -> list[str]:
    """Write an item's results atomically (a reader never sees half a file); their paths."""
    from ccnet.model.files import write_bytes_atomic

    written = []
    for suffix, body in rendered.files:
        target = output_path(out_dir, item, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, body)
        written.append(str(target))
    return written
