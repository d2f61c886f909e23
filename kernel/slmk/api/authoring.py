"""The hookspecs and the record type each hook returns, for tools that document or check plugins."""

from __future__ import annotations

from .. import PROJECT, hookspecs
from ..records import RECORD_TYPES

__all__ = ["PROJECT", "RECORD_TYPES", "hookspecs"]
