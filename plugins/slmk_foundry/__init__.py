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

from slmk.api import Command, Installer, Probe, ProbeResult, Runtime, SlmkError, hookimpl

from . import installer, runtime
from .layout import locate

__all__ = ["locate"]


def _repair_command():
    from .cli import repair

    return repair


def check_installs():
    """Each slmk install in the default Foundry cache that is damaged or unregistered."""
    try:
        cache = locate(None)
        models = installer.list_installed(cache)
    except SlmkError as exc:
        yield ProbeResult("foundry-installs", "warn", exc.one_line(), fix="check SLMK_FOUNDRY_CACHE or --cache-dir")
        return
    bad = [m for m in models if m.extra.get("state") != installer.STATE_OK]
    if not bad:
        yield ProbeResult("foundry-installs", "ok", f"{len(models)} install(s) in {cache}, all whole and registered")
        return
    for model in bad:
        state = str(model.extra.get("state"))
        fix = (
            f"slmk install {model.extra.get('source_build') or 'BUILD'} --name {model.name} --force"
            if state.startswith("damaged")
            else "slmk repair"
        )
        yield ProbeResult("foundry-installs", "warn", f"{model.ref} in {cache}: {state}", fix=fix)


@hookimpl
def slmk_probes():
    yield Probe("foundry-installs", "slmk's installs in the Foundry cache are whole and registered", check_installs)


@hookimpl
def slmk_commands():
    yield Command(
        "repair", "Finish interrupted installs/removes in the Foundry cache; register what v2 misses.", _repair_command
    )


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
