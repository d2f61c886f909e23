"""For plugins' tests: a fresh registry of the plugins named, and named points where a test can hold slmk."""

from __future__ import annotations

from ..testing import make_registry
from ..testpoints import pause_point

__all__ = ["make_registry", "pause_point"]
