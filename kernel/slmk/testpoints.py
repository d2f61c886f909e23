"""Named points where a test can stop slmk deterministically (never used in normal runs).

With ``SLMK_TEST_PAUSE_AT=<point>[,<point>...]`` a process that reaches one of the named
points prints ``SLMK_TEST_PAUSED <point>`` on stderr and sleeps ``SLMK_TEST_PAUSE_S``
seconds (default 60) there, so a test that waits for that line knows exactly where the
process is when it sends a signal: no race against work that already finished.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

PAUSE_ENV = "SLMK_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "SLMK_TEST_PAUSE_S"


def pause_point(name: str, until: Callable[[], bool] | None = None) -> None:
    """Announce and wait at ``name`` when SLMK_TEST_PAUSE_AT asks for it; else return at once.

    ``until`` ends the wait early when it turns true (e.g. a signal the test sent arrived).
    """
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in wanted.split(","):
        return
    print(f"SLMK_TEST_PAUSED {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get(PAUSE_SECONDS_ENV, "60"))
    while time.monotonic() < deadline and not (until is not None and until()):
        time.sleep(0.02)  # a test hook only: polls for what the test does
