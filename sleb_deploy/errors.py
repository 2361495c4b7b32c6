"""The few error types of sleb-deploy; the CLI maps each to an exit code and prints one line.

A `SlebDeployError` is something the user can fix (a path, a flag, a missing extra); its message says
what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SlebDeployError(Exception):
    """Base class: a user-facing failure with a one-line message."""

    exit_code = 1


class UserInputError(SlebDeployError):
    """A flag, a path or a value the user gave is wrong."""

    exit_code = 2


class UnsupportedModelError(UserInputError):
    """The checkpoint's `model_type` has no adapter."""


class ArtifactError(SlebDeployError):
    """An output exists already, or an input artifact (manifest, checkpoint) is missing or incompatible."""

    exit_code = 3


class MissingDependencyError(SlebDeployError):
    """An optional dependency (an extra) is not installed."""

    exit_code = 4


class ValidationError(SlebDeployError):
    """An exported artifact disagrees with PyTorch beyond the tolerance."""

    exit_code = 5
