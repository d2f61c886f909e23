"""Test hooks: named points where an install, a remove or the SDK's shutdown can be held.

With ``SLMK_TEST_PAUSE_AT=<point>[,<point>...]`` slmk announces ``SLMK_TEST_PAUSED <point>``
on stderr when it reaches the point and waits there ``SLMK_TEST_PAUSE_S`` seconds (60 by
default), so a test can kill or interrupt it at a known step instead of sleeping and
hoping (tests/test_foundry_kill.py, tests/test_hardening_install.py).

Points: copied (files staged), checked (staged install verified), renamed (in place,
not committed), committed (visible, not yet registered with the v2 SDK), removed
(remove: folder set aside, registration not yet dropped), closing (the process is
exiting and about to shut the Foundry Local SDK down).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

PAUSE_ENV = "SLMK_TEST_PAUSE_AT"
PAUSE_POINTS = ("copied", "checked", "renamed", "committed", "removed", "closing")


def pause(point: str, until: Callable[[], bool] | None = None) -> None:
    """Hold here when the test hook names ``point``; ``until`` ends the wait early when it turns true."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or point not in wanted.split(","):
        return
    print(f"SLMK_TEST_PAUSED {point}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get("SLMK_TEST_PAUSE_S", "60"))
    if until is None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        return
    while time.monotonic() < deadline and not until():
        time.sleep(0.02)  # a test hook only: polls for the signal the test sends
