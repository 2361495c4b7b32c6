"""Process memory figures for the benchmark: resident set now, its high-water mark, and resetting that mark.

Linux keeps the peak resident set (``VmHWM`` in ``/proc/self/status``) and lets a process reset it by
writing ``5`` to ``/proc/self/clear_refs``. Resetting before a variant's first run at a shape and reading
after it gives the peak of that run alone (the other loaded sessions' weights are part of it: they are
resident). Elsewhere (macOS, a kernel that refuses the reset) the peak falls back to ``ru_maxrss``, the
peak of the whole process so far, and the record says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set in MiB (None where /proc is not available)."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def reset_peak() -> bool:
    """Reset the peak resident set mark; False where the kernel does not allow it."""
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


def peak_mb() -> float:
    """Peak resident set in MiB since the last reset (or since the process started)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024**2 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def available_mb() -> float | None:
    """Memory the kernel could give us now (MemAvailable), to skip shapes that cannot fit before trying."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
