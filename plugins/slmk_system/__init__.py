"""Environment probes for ``slmk doctor`` and the built-in execution providers.

Everything here is cheap and imports nothing heavy: package versions come from
distribution metadata, hardware from the operating system.
"""

from __future__ import annotations

from slmk.api import hookimpl

from .probes import PROBES
from .providers import EXECUTION_PROVIDERS


@hookimpl
def slmk_probes():
    yield from PROBES


@hookimpl
def slmk_execution_providers():
    yield from EXECUTION_PROVIDERS
