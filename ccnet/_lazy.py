"""Package attributes imported on first use (PEP 562), so that importing a package, or a
light module inside it, does not import torch or the runtimes behind its public names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``exports`` ({name: defining module}).

    Args:
        package: the package's name, for the error message.
        exports: each public name and the module that defines it.
        namespace: the package's ``globals()``: a loaded name is stored there, so later
            lookups skip ``__getattr__``.
    """

    def get_attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def list_attributes() -> list[str]:
        return sorted({*namespace, *exports})

    return get_attribute, list_attributes
