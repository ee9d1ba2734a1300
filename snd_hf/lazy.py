"""Package attributes imported on first use (PEP 562), so that importing a package stays light."""

from __future__ import annotations

import importlib
import sys
from typing import Any


def lazy_attribute(package: str, submodules: dict[str, str], name: str) -> Any:
    """The attribute ``name`` of ``package``, imported from its submodule ``submodules[name]`` and
    kept on the package, so the next access is a plain lookup. For a package's ``__getattr__``.

    Raises:
        AttributeError: ``name`` is none of ``submodules``' names.
    """
    module = submodules.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", package), name)
    setattr(sys.modules[package], name, value)
    return value
