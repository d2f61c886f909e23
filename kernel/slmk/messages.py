"""Shared checks for what plugins receive: chat messages and installed versions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from importlib_metadata import PackageNotFoundError, version

from .errors import UsageError

ROLES = ("system", "user", "assistant")


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
