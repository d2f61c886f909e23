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

from slmk.api.testing import pause_point as pause

PAUSE_ENV = "SLMK_TEST_PAUSE_AT"
PAUSE_POINTS = ("copied", "checked", "renamed", "committed", "removed", "closing")

__all__ = ["PAUSE_ENV", "PAUSE_POINTS", "pause"]
