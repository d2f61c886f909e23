"""What commands contributed by plugins call: convert, install, open a session, plan, the registry.

These run the kernel's pipeline and planner; importing this module loads them.
"""

from __future__ import annotations

from ..app import (
    build_info,
    convert,
    convert_request,
    install,
    materialize,
    open_session,
    open_source_session,
    resolve_ep,
    resolve_target,
    run_doctor,
    source_unavailable,
)
from ..config import check_values, read_toml
from ..pipeline import verification_summary
from ..planner import check_precision, make_plan
from ..plugins import Registry, get_registry
from ..progress import QUIET

__all__ = [
    "QUIET",
    "Registry",
    "build_info",
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
