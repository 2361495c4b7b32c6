"""Engines: TensorRT optimization profiles, the builder and the Triton repository writer.

Importing this package imports no TensorRT: ``build_engine`` loads ``tensorrt`` or ``tensorrt_rtx`` when
called (DESIGN.md section 5).
"""

from __future__ import annotations

from sleb_deploy.engines.build import EngineManifest, build_engine, load_backend, resolve_backend
from sleb_deploy.engines.profiles import BuildConfig, optimization_profiles
from sleb_deploy.engines.triton import write_triton_repository

__all__ = [
    "BuildConfig",
    "EngineManifest",
    "build_engine",
    "load_backend",
    "optimization_profiles",
    "resolve_backend",
    "write_triton_repository",
]
