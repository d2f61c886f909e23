"""Writing plugins: `slmk plugin new` renders a working plugin package from the
plugin template (package data), and `slmk plugin hooks` prints the hook reference.

A built-in feature plugin; it uses only ``slmk.api``.
"""

from __future__ import annotations

from slmk.api import Command, hookimpl


def _plugin_group():
    from .cli import plugin_group

    return plugin_group


@hookimpl
def slmk_commands():
    yield Command(
        "plugin", "Write slmk plugins: `slmk plugin new NAME --kind KIND`, `slmk plugin hooks`.", _plugin_group
    )
