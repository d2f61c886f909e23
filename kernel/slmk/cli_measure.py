"""bench, validate, compare and deploy (being written)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add the measurement commands to the slmk group."""
