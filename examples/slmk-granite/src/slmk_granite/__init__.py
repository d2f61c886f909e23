"""Granite: an slmk model family plugin.

It recognises its models and gives their prompt template.

slmk loads this module through the ``slmk`` entry point ``granite`` and registers
the hook implementations it finds here. Keep this import light: ``slmk plugins`` and
``slmk doctor`` import every plugin, so heavy libraries belong inside the functions
that need them.
"""

from __future__ import annotations

from .hooks import slmk_model_families

__version__ = "0.1.0"
__all__ = ["slmk_model_families"]
