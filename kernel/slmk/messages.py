"""Shared checks and lookups for plugins: chat messages, installed versions, package data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from importlib_metadata import PackageNotFoundError, version

from .errors import UsageError

ROLES = ("system", "user", "assistant", "tool")  # tool: a tool's result, answering a tool call


def check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    """Refuse a conversation a runtime cannot render, before any work starts."""
    if not messages:
        raise UsageError("no messages to answer", hint="pass at least one user message")
    for message in messages:
        if (
            not isinstance(message, Mapping)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise UsageError(f"a message needs a role ({', '.join(ROLES)}) and string content, not {message!r}")


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (metadata only, no import)."""
    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def package_data_dir(package: str) -> Path | None:
    """The folder of a data-only package (one without ``__init__.py``, mapped in by
    pyproject.toml), located without importing anything; None where it is not installed.

    An editable install maps only packages with code, so a plugin falls back to the
    folder's place in the repository.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return None
