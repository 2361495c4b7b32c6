"""Optional dependencies go through one door: with them blocked, every module still imports, and a command
that needs one ends with exit 4 and the `pip install 'sleb-deploy[...]'` line (no traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("onnx", "onnxruntime", "onnxscript", "tensorrt", "tensorrt_rtx", "matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def _run(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter where importing any of BLOCKED raises ImportError."""
    prelude = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip


def test_every_module_imports_without_the_extras() -> None:
    proc = _run(
        """
        import importlib, pkgutil, sleb_deploy
        names = [m.name for m in pkgutil.walk_packages(sleb_deploy.__path__, "sleb_deploy.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 30  # every module of the package was imported


def test_onnx_command_without_the_extra_exits_4(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    proc = _run("from sleb_deploy.cli import main\nsys.argv[0] = 'sleb-deploy'\nmain()\n", "onnx", "--model",
                str(llama_dir), "--out", str(out))  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    expected = "error: 'onnx' is needed for this step: pip install 'sleb-deploy[onnx]'"
    assert proc.stderr.strip().splitlines() == [expected]
    assert not out.exists()


def test_build_command_without_tensorrt_exits_4(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    proc = _run("from sleb_deploy.cli import main\nmain()\n", "build", "--onnx", str(tmp_path), "--out",
                str(tmp_path / "e"))  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "pip install 'sleb-deploy[trt]'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "e").exists()
