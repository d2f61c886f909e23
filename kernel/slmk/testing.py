"""Helpers for testing slmk plugins against the real kernel.

    from slmk.api.testing import make_registry

    def test_my_family_is_found():
        import slmk_my_family
        registry = make_registry(slmk_my_family)
        assert "my-family" in registry.model_families

``make_registry`` gives a fresh registry holding only the plugins you name (modules,
objects, or entry-point names to load from the installed distributions); it never
touches the process-wide registry the CLI uses.

The pytest fixture ``slmk_registry_factory`` is available to any test session that
has slmk installed (``slmk.pytest_plugin``, registered through the ``pytest11`` entry point;
kept apart so that plugin code importing these helpers never loads pytest).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .plugins import Registry, get_registry, make_registry, reset_registry

__all__ = ["isolated_default_registry", "make_registry"]


@contextmanager
def isolated_default_registry() -> Iterator[Registry]:
    """Reload the process-wide registry for the duration (after env vars changed)."""
    reset_registry()
    try:
        yield get_registry()
    finally:
        reset_registry()
