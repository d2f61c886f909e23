"""What commands contributed by plugins call: convert, install, open a session, the registry.

These are the kernel's operations (``slmk.app``); importing this module loads them.
"""

from __future__ import annotations

from ..app import (
    build_info,
    convert,
    convert_request,
    install,
    make_plan,
    materialize,
    open_session,
    open_source_session,
    resolve_ep,
    resolve_target,
    run_doctor,
    source_unavailable,
)
from ..builds import check_precision, verification_summary
from ..config import check_values, read_toml
from ..errors import call_plugin
from ..plugins import Registry, get_registry
from ..progress import QUIET

__all__ = [
    "QUIET",
    "Registry",
    "build_info",
    "call_plugin",
    "check_precision",
    "check_values",
    "convert",
    "convert_request",
    "get_registry",
    "install",
    "make_plan",
    "materialize",
    "open_session",
    "open_source_session",
    "read_toml",
    "resolve_ep",
    "resolve_target",
    "run_doctor",
    "source_unavailable",
    "verification_summary",
]
