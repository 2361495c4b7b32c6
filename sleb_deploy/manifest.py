"""Typed manifests: one dataclass per artifact file (``sleb.json``, ``export.json``, ``engine.json``, ...).

Every stage's result *is* its manifest: the object the stage returns is what it wrote, field for field, so
the keys of the file and the attributes of the result cannot drift apart. A reader checks the ``schema``
and every field's type and names the file and the field on a mismatch, so a manifest written by another
version (or edited by hand) fails with one line that says what to re-run instead of a ``KeyError`` later.

Nested records are dataclasses too where consumers read them (e.g. the graph's ``GraphSpec``); free-form
reports (validation figures, the environment) stay ``dict``.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from sleb_deploy.artifacts import write_json
from sleb_deploy.errors import ArtifactError

M = TypeVar("M", bound="Manifest")
D = TypeVar("D")


def to_plain(value: Any) -> Any:
    """JSON-ready form: dataclasses to dicts (transient fields dropped), paths to strings, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("transient")
        }
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _fail(where: str, message: str) -> ArtifactError:
    return ArtifactError(f"{where}: {message}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (dataclasses rebuilt from dicts); raises naming ``where``."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ArtifactError:
                continue
        raise _fail(where, f"expected {hint}, got {type(value).__name__}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {type(value).__name__}")
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, f"expected a list, got {type(value).__name__}")
        (item,) = get_args(hint) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {type(value).__name__}")
        _, item = get_args(hint) or (str, Any)
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is Path:
        if not isinstance(value, str):
            raise _fail(where, f"expected a path string, got {type(value).__name__}")
        return Path(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f"expected a number, got {type(value).__name__}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise _fail(where, f"expected {hint.__name__}, got {type(value).__name__}")
        return value
    return value  # anything else (a Literal, a plain object): taken as written


def from_dict(cls: type[D], data: dict[str, Any], where: str) -> D:
    """Build the dataclass ``cls`` from ``data``, checking every field (unknown keys are ignored)."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("transient") or not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(where, f"field '{f.name}' is missing")
            continue
        kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}: field '{f.name}'")
    return cls(**kwargs)


@dataclasses.dataclass(kw_only=True)
class Manifest:
    """Base of every manifest. Subclasses set ``SCHEMA`` (``sleb-deploy/<kind>@<version>``) and ``FILE``.

    ``directory`` is where the manifest was read from or written to; it is not part of the file (an
    artifact directory can be moved).
    """

    SCHEMA: ClassVar[str]
    FILE: ClassVar[str]

    directory: Path | None = dataclasses.field(default=None, compare=False, repr=False, metadata={"transient": True})

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = to_plain(self)
        return {"schema": self.SCHEMA, **body}

    @classmethod
    def from_json(cls: type[M], data: Any, source: str = "manifest") -> M:
        """Check ``schema`` and every field; ``source`` (the file) is named in the error."""
        if not isinstance(data, dict):
            raise _fail(source, "is not a JSON object")
        schema = data.get("schema")
        if schema != cls.SCHEMA:
            raise _fail(
                source,
                f"schema is {schema!r}, this version of sleb-deploy reads {cls.SCHEMA!r}: "
                "re-run the stage that wrote it",
            )
        return from_dict(cls, data, source)

    @classmethod
    def read(cls: type[M], directory: Path) -> M:
        """Read ``directory/FILE``; a missing or malformed file is an ``ArtifactError`` naming it."""
        return cls.read_file(Path(directory) / cls.FILE)

    @classmethod
    def read_file(cls: type[M], path: Path) -> M:
        """Read a manifest file of this kind wherever it is (its directory becomes ``directory``)."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path} not found: {path.parent} is not a complete sleb-deploy artifact")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path} is not valid JSON ({err}); re-run the stage that wrote it") from err
        manifest = cls.from_json(data, str(path))
        manifest.directory = path.parent.absolute()
        return manifest

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (Path(directory) / cls.FILE).is_file()

    def write(self, directory: Path) -> Path:
        """Write ``directory/FILE`` atomically (write it last: its presence means the artifact is complete)."""
        path = Path(directory) / self.FILE
        write_json(path, self.to_json())
        return path


__all__ = ["Manifest", "from_dict", "to_plain"]
