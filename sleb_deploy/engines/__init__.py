"""Engines: TensorRT optimization profiles and builder (runners and the Triton writer live beside them).

Importing this package imports no TensorRT: ``build_engine`` loads ``tensorrt`` or ``tensorrt_rtx`` when
called (DESIGN.md section 5).
"""

from __future__ import annotations

from sleb_deploy.engines.build import EngineResult, build_engine, select_backend
from sleb_deploy.engines.profiles import BuildConfig, optimization_profiles
from sleb_deploy.engines.triton import write_triton_repository

__all__ = [
    "BuildConfig",
    "EngineResult",
    "build_engine",
    "optimization_profiles",
    "select_backend",
    "write_triton_repository",
]
