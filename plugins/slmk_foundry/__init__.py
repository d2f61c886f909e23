"""Foundry Local: install builds so both Foundry generations run them, and chat through the v2 SDK.

- installer ``foundry``: puts a build into the Foundry cache in the layout the legacy
  ``foundry`` CLI (Windows/macOS <= 0.8) scans, with its ``inference_model.json``,
  and registers it in the Foundry Local v2 SDK's local catalog; lists and removes
  installs; every change is staged and committed atomically under a cache lock.
- runtime ``foundry``: loads a model with the SDK in-process (``foundry_local_sdk``)
  and streams answers.

Module level stays light: the SDK is imported inside the functions that use it.
"""

from __future__ import annotations

from slmk.api import Installer, Runtime, hookimpl

from . import installer, runtime
from .layout import locate

__all__ = ["locate"]


@hookimpl
def slmk_installers():
    yield Installer(
        name="foundry",
        description="Foundry Local cache: legacy CLI layout (inference_model.json) + v2 SDK registration",
        install=installer.install,
        list=installer.list_installed,
        remove=installer.remove,
        locate=locate,
        priority=10,
    )


@hookimpl
def slmk_runtimes():
    yield Runtime(
        name="foundry",
        description="Foundry Local SDK in-process: the model's chat template, streamed answers",
        load=runtime.load,
        can_load=runtime.can_load,
    )
