"""The criss-cross attention plugin library: where it is, and one loader for the whole process.

TensorRT's ``IPluginRegistry::loadLibrary`` refuses a library whose creators are already
registered (it returns null), so a second load of the same library, in the same process, by an
engine build, a second model or a check, would fail. Every caller therefore goes through
``load_plugin``, which loads a library once per resolved path and runtime, and does not load
at all when the creators are already in the registry (the library was preloaded with
``LD_PRELOAD`` or ``ctypes``: it registers them itself when the dynamic loader opens it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ccnet.export.runtime.availability import plugin_runtime
from ccnet.model.files import file_sha256

__all__ = [
    "DEFAULT_PLUGIN",
    "NAMESPACE_ENV",
    "PLUGIN_CREATORS",
    "PLUGIN_ENV",
    "LoadedPlugin",
    "PluginLoadError",
    "load_plugin",
    "loaded_plugins",
    "plugin_sha256",
    "registered_creators",
    "resolve_plugin",
]

PLUGIN_ENV = "CCNET_TRT_PLUGIN"
#: Read by the library itself when it is loaded (see export/tensorrt/ccnetPluginLibrary.cpp).
NAMESPACE_ENV = "CCNET_TRT_PLUGIN_NAMESPACE"
# Where `cmake -S export/tensorrt -B build/trt && cmake --build build/trt` puts the library.
DEFAULT_PLUGIN = Path(__file__).resolve().parents[2] / "build" / "trt" / "libccnet_trt_plugin.so"
#: (name, version) of every creator the library registers.
PLUGIN_CREATORS = (("CrissCrossAttention", "1"), ("CrissCrossAttention3d", "1"))
_BUILD_HINT = "build it: cmake -S export/tensorrt -B build/trt && cmake --build build/trt"


class PluginLoadError(ValueError):
    """The plugin library cannot be loaded, or does not register an op the model needs."""


@dataclass(frozen=True)
class LoadedPlugin:
    """A plugin library present in a registry of this process.

    ``handle`` is what ``load_library`` returned, or None when the creators were found already
    registered (the library was loaded by the dynamic loader before TensorRT asked).
    """

    path: Path
    sha256: str
    runtime: str
    handle: Any


_LOCK = threading.Lock()
_LOADED: dict[tuple[Path, str], LoadedPlugin] = {}


def resolve_plugin(path: str | os.PathLike[str] | None) -> Path | None:
    """The plugin library to load: ``path``, else ``$CCNET_TRT_PLUGIN``, else the CMake build
    output if it exists, else None (attention then runs as standard layers).

    Raises:
        FileNotFoundError: an explicitly named library does not exist.
    """
    named = path or os.environ.get(PLUGIN_ENV)
    if named:
        library = Path(named)
        if not library.is_file():
            raise FileNotFoundError(
                f"plugin library not found: {library} ({_BUILD_HINT}; see export/tensorrt)"
            )
        return library
    return DEFAULT_PLUGIN if DEFAULT_PLUGIN.is_file() else None


def plugin_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the library file: names the plugin build in engine cache keys."""
    return file_sha256(path)


def _find(registry: Any, name: str, version: str, namespace: str) -> Any:
    find = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    return find(name, version, namespace)


def registered_creators(runtime: ModuleType | None = None) -> list[tuple[str, str, str]]:
    """(name, version, namespace) of every creator in the runtime's registry, sorted."""
    registry = (runtime or plugin_runtime()).get_plugin_registry()
    creators = getattr(registry, "all_creators", None)
    if creators is None:  # TensorRT 8/9 name
        creators = registry.plugin_creator_list
    return sorted((c.name, c.plugin_version, c.plugin_namespace) for c in creators)


def load_plugin(
    library: str | os.PathLike[str],
    *,
    runtime: ModuleType | None = None,
    required: Iterable[Mapping[str, Any]] = (),
) -> LoadedPlugin:
    """Make the library's creators available in ``runtime``'s plugin registry, once.

    Args:
        library: the plugin library (``libccnet_trt_plugin.so``).
        runtime: the TensorRT module whose registry to use (default: ``plugin_runtime()``).
        required: ops the caller needs, as the sidecars' ``custom_ops`` entries
            (``op_type``, ``plugin_version``, ``plugin_namespace``); each must be registered.

    Raises:
        FileNotFoundError: no such library.
        PluginLoadError: TensorRT cannot load it, or a required op is not registered.
    """
    given = Path(library)
    if not given.is_file():
        raise FileNotFoundError(f"plugin library not found: {given} ({_BUILD_HINT})")
    resolved = given.resolve()
    trt = runtime or plugin_runtime()
    registry = trt.get_plugin_registry()
    with _LOCK:
        key = (resolved, trt.__name__)
        loaded = _LOADED.get(key)
        if loaded is None:
            namespace = os.environ.get(NAMESPACE_ENV, "")
            present = all(
                _find(registry, name, version, namespace) is not None
                for name, version in PLUGIN_CREATORS
            )
            handle = None if present else registry.load_library(str(resolved))
            if not present and handle is None:
                raise PluginLoadError(
                    f"{resolved}: TensorRT ({trt.__name__} {trt.__version__}) could not load "
                    "this plugin library (see its log above); another library registering "
                    "the same creators may be loaded already"
                )
            loaded = LoadedPlugin(resolved, plugin_sha256(resolved), trt.__name__, handle)
            _LOADED[key] = loaded
    for op in required:
        name, version = str(op["op_type"]), str(op.get("plugin_version", "1"))
        namespace = str(op.get("plugin_namespace", ""))
        if _find(registry, name, version, namespace) is None:
            raise PluginLoadError(
                f"{resolved} does not register plugin {name!r} version {version!r} namespace "
                f"{namespace!r} (set ${NAMESPACE_ENV} to the model's namespace before loading)"
            )
    return loaded


def loaded_plugins() -> list[LoadedPlugin]:
    """The libraries ``load_plugin`` has made available in this process."""
    with _LOCK:
        return list(_LOADED.values())
