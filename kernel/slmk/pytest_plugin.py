"""The ``slmk_registry_factory`` fixture, for any test session that has slmk installed (pytest11)."""

from __future__ import annotations

import pytest

from .testing import make_registry


@pytest.fixture
def slmk_registry_factory():
    """Call with plugins (modules or entry-point names) to get a fresh Registry."""
    return make_registry
