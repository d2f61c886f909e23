"""For plugins' tests: a fresh registry of the plugins named, the process-wide one reloaded, and named
points where a test can hold slmk (``SLMK_TEST_PAUSE_AT``)."""

from __future__ import annotations

from ..testing import isolated_default_registry, make_registry
from ..testpoints import pause_point

__all__ = ["isolated_default_registry", "make_registry", "pause_point"]
