"""Start, query and stop a local ``tritonserver`` (the one in ``nvidia-pytriton``'s wheel) by its PID.

Used by the serving tests and ``bench/triton_generate.py``; stdlib only (HTTP through urllib), so it runs
in the main environment while the server and its python backend run from their own (``.venv-triton``,
built by ``scripts/triton_env.sh``). What the server needs from that environment, measured while planning:

- the python backend's stub process finds its Python through the first ``python3`` on ``PATH`` and ignores
  ``PYTHONPATH``: the venv's ``bin`` goes first on ``PATH`` and ``PYTHONPATH`` is dropped;
- the stub links ``libpython3.X.so``: the venv interpreter's ``sysconfig`` LIBDIR and the wheel's
  ``nvidia_pytriton.libs`` go on ``LD_LIBRARY_PATH``;
- the binary's RPATH is relative: it runs from where the wheel put it.

The server binds 127.0.0.1 only, on free ports, with explicit model control and no metrics endpoint. Every
wait is bounded; a server that exits or never becomes ready raises ``TritonServerError`` with its log tail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sleb_deploy.errors import SlebDeployError

_LAYOUT_PROBE = """import json, os, sys, sysconfig, pytriton
site = os.path.dirname(os.path.dirname(pytriton.__file__))
print(json.dumps({"server": os.path.join(os.path.dirname(pytriton.__file__), "tritonserver"),
                  "libs": os.path.join(site, "nvidia_pytriton.libs"),
                  "libdir": sysconfig.get_config_var("LIBDIR"), "bin": os.path.dirname(sys.executable)}))"""


class TritonServerError(SlebDeployError):
    """The server did not start, did not become ready, or refused a model; the message carries its log tail."""


@dataclass(frozen=True)
class ServerLayout:
    """Where a Triton environment keeps the server binary, its backends and the libraries it needs."""

    server: Path  # .../pytriton/tritonserver (bin/, backends/)
    libs: Path  # .../nvidia_pytriton.libs
    libdir: Path  # the venv interpreter's LIBDIR (libpython3.X.so)
    bin: Path  # the venv's bin (its python3 first on PATH)

    @classmethod
    def of_venv(cls, venv: Path) -> ServerLayout:
        python = Path(venv) / "bin" / "python"
        if not python.is_file():
            raise TritonServerError(f"no Triton environment at {venv}: run `bash scripts/triton_env.sh {venv}`")
        proc = subprocess.run([str(python), "-c", _LAYOUT_PROBE], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
            raise TritonServerError(f"{venv} has no usable nvidia-pytriton ({last}): run `bash scripts/triton_env.sh`")
        d = json.loads(proc.stdout.strip().splitlines()[-1])
        layout = cls(Path(d["server"]), Path(d["libs"]), Path(d["libdir"]), Path(d["bin"]))
        if not (layout.server / "backends" / "python" / "triton_python_backend_stub").is_file():
            raise TritonServerError(f"{venv}: no python backend stub in place; run `bash scripts/triton_env.sh {venv}`")
        return layout

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        ld = [str(self.libdir), str(self.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in ld if p)
        return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TritonServer:
    """One ``tritonserver`` process over ``repository`` (explicit model control; load models with ``load``).
    Ports 0 (the default) are free ones picked at start-up."""

    def __init__(
        self, layout: ServerLayout, repository: Path, log: Path | None = None, http_port: int = 0, grpc_port: int = 0
    ) -> None:
        self.layout = layout
        self.repository = Path(repository).absolute()
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        s = self.layout.server
        return [
            str(s / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            f"--backend-directory={s / 'backends'}",
            "--exit-timeout-secs=5",
        ]

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> TritonServerError:
        return TritonServerError(f"{what}; tritonserver log ({self.log}), last lines:\n{self.log_tail()}")

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until it is ready; returns the seconds it took."""
        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.layout.environment(),
                start_new_session=True,
            )  # fmt: skip
        deadline = started + timeout
        while time.perf_counter() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise self._fail(f"tritonserver exited with code {code} before it was ready")
            if self._status("/v2/health/ready") == 200:
                return time.perf_counter() - started
            time.sleep(0.1)
        self.stop()
        raise self._fail(f"tritonserver was not ready after {timeout:.0f} s (stopped)")

    def _request(self, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://{self.http_url}{path}", method=method, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return 0, b""

    def _status(self, path: str) -> int:
        return self._request(path, timeout=1.0)[0]

    def metadata(self) -> dict[str, Any]:
        """The server's metadata (``/v2``): name, version, extensions."""
        code, body = self._request("/v2")
        if code != 200:
            raise self._fail(f"server metadata answered {code}")
        meta: dict[str, Any] = json.loads(body)
        return meta

    def load(self, model: str, timeout: float = 120.0) -> float:
        """Load ``model`` (explicit model control) and wait until it is ready; returns the seconds it took."""
        started = time.perf_counter()
        code, body = self._request(f"/v2/repository/models/{model}/load", method="POST", timeout=timeout)
        if code != 200:
            message = body.decode(errors="replace").strip() or "no answer"
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail(f"tritonserver exited while loading {model} ({message})")
            raise self._fail(f"tritonserver could not load model {model}: {message}")
        if self._status(f"/v2/models/{model}/ready") != 200:
            raise self._fail(f"model {model} loaded but is not ready")
        return time.perf_counter() - started

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the server, SIGKILL to its process group after ``timeout``; returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server stops its python stubs itself
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc.pid)
                proc.wait(timeout=timeout)
        self._kill_group(proc.pid)  # a stub left behind by a crashed server (its own session: ours only)
        return proc.returncode

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
