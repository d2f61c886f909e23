"""ONNX Runtime session options of a build, kept in genai_config.json ``model.decoder.session_options``.

onnxruntime-genai 0.18 runs the CPU provider on ONE intra-op thread unless the build's
genai_config.json names a count (measured on 2 vCPUs: int4 decode 36.8 -> 53.9 tok/s,
prefill 107 -> 196 tok/s with 2 threads), so every build gets a count at build time:
the user's, else this machine's logical cores. ``slmk tune`` replaces it with the
fastest count measured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slmk.api import UsageError
from slmk.api.files import write_json_atomic
from slmk.api.models import GENAI_CONFIG, MAX_SESSION_THREADS, read_genai_config

#: Session options slmk writes (slmk option name = genai_config.json key), with their help.
SESSION_OPTIONS: dict[str, str] = {
    "intra_op_num_threads": "ONNX Runtime intra-op threads written into genai_config.json "
    "(default: this machine's logical cores; `slmk tune` measures the fastest)",
}


def is_config_entry(key: str) -> bool:
    """An ONNX Runtime session config entry (``session.…``, ``mlas.…``): onnxruntime-genai passes it on as a string."""
    return "." in key


def logical_cores() -> int:
    """Logical cores this process may run on (the affinity mask honours containers and taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_session_options() -> dict[str, Any]:
    """What a build gets unless the user chose: every logical core for the intra-op pool."""
    return {"intra_op_num_threads": logical_cores()}


def parse_session_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The session options among a converter's options, validated (UsageError on a bad value)."""
    out: dict[str, Any] = {}
    value = options.get("intra_op_num_threads")
    if value is not None:
        try:
            threads = int(str(value).strip())
        except ValueError:
            threads = 0
        if not 1 <= threads <= MAX_SESSION_THREADS:
            raise UsageError(
                f"intra_op_num_threads={value!r} is not a positive whole number up to {MAX_SESSION_THREADS}",
                hint=f"use 1 to {logical_cores()} (this machine's logical cores), or leave it out for all of them",
            )
        out["intra_op_num_threads"] = threads
    return out


def read_session_options(build_dir: Path) -> dict[str, Any]:
    model = read_genai_config(build_dir).get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    session = decoder.get("session_options") if isinstance(decoder, dict) else None
    return dict(session) if isinstance(session, dict) else {}


def write_session_options(build_dir: Path, updates: Mapping[str, Any], *, remove: tuple[str, ...] = ()) -> dict:
    """Merge ``updates`` into the decoder's session_options (and drop ``remove``), atomically.

    ONNX Runtime session config entries (dotted keys such as ``session.intra_op.allow_spinning``)
    are written as strings beside the other options: onnxruntime-genai 0.18 hands every
    session_options key it does not know to ``AddConfigEntry`` and wants a string value (a
    ``config_entries`` block is refused: "Unknown value"). Returns the session_options as written.
    """
    path = Path(build_dir) / GENAI_CONFIG
    config = read_genai_config(build_dir)
    model = config.get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("session_options", {}), dict):
        raise UsageError(f"{path} has no model.decoder section", hint="pass the output folder of `slmk convert`")
    session = decoder.setdefault("session_options", {})
    for key in remove:
        session.pop(key, None)
    for key, value in updates.items():
        session[key] = str(value) if is_config_entry(key) else value
    write_json_atomic(path, config)
    return dict(session)
