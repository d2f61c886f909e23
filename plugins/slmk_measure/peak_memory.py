"""A process's peak resident memory from the kernel's own high-water mark.

A sampling thread misses short peaks (a 10 ms sampler under-reports a model's load
and prefill spikes); Linux keeps the exact high-water mark in ``VmHWM`` of
``/proc/self/status``, and lets a process reset it by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), so one process can measure several phases.
Elsewhere ``ru_maxrss`` gives the peak since the process started (no reset).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """This process's peak RSS in bytes since it started or since the last successful reset."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def current_rss_bytes() -> int:
    """This process's RSS now (VmRSS); 0 where /proc is absent."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Set the high-water mark back to the current RSS; False where the system cannot.

    After a True return, ``peak_rss_bytes()`` measures from now on; after False it still
    counts from the start of the process (ru_maxrss cannot be reset).
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True
