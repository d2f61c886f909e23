"""What builds are measured against: the source model (transformers on the Hugging Face folder,
what the user trained) by default, or slmk's own fp32 ONNX build (``--reference fp32``)."""

from __future__ import annotations

from pathlib import Path

from slmk.api import PRECISIONS, UsageError
from slmk.api.operations import source_unavailable

SOURCE = "source"
REFERENCES = (SOURCE, "fp32")
REFERENCE_HELP = (
    "What quality is measured against: source (the Hugging Face model run by transformers, what you trained) "
    "or fp32 (slmk's fp32 ONNX build) [default: source where it runs here]."
)


def choose_reference(requested: str | None, model: Path) -> tuple[str, str | None]:
    """(``source`` or ``fp32``, a one-line note when the default had to fall back).

    ``--reference source`` that cannot run here is refused in one line; without
    ``--reference`` the fp32 build is used instead and the note says why.
    """
    if requested is not None and requested not in REFERENCES:
        raise UsageError(f"unknown reference {requested!r}", hint=f"use one of {', '.join(REFERENCES)}")
    if requested == "fp32":
        return "fp32", None
    reason = source_unavailable(model)
    if reason is None:
        return SOURCE, None
    if requested == SOURCE:
        raise UsageError(
            f"--reference source: the source model cannot run here: {reason}",
            hint="install slmk[convert] (torch, transformers), or pass --reference fp32",
        )
    return "fp32", f"reference: the fp32 build, since the source model cannot run here ({reason})"


def rank(name: str) -> int:
    """Sort key of a row: the precisions smallest first, the source model last (the most precise)."""
    return len(PRECISIONS) if name == SOURCE else PRECISIONS.index(name)
