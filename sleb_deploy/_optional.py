"""The one door for heavy optional dependencies: import them lazily, fail with the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from sleb_deploy.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import `module` or raise a `MissingDependencyError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"'{module}' is needed for this step: pip install 'sleb-deploy[{extra}]'") from err
