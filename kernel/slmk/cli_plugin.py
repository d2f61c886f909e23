"""`slmk plugin new` (being written)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add the plugin-authoring commands to the slmk group."""
